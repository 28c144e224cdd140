"""The figure of ``oracle_error.csv`` (:mod:`scheduler.decision.oracle_error`): the signed relative
error of the oracle's prices per policy and tier, and the pair of files a result folder holds."""
from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from scheduler.decision.oracle_error import CSV_NAME, PriceCheck, csv_bytes
from scheduler.results.plotting import FigureText, draw_line, finish_figure, legend_label, new_figure, policy_styles

FIGURE_NAME = "oracle_error"


def result_files(rows_by_policy: Mapping[str, Sequence[PriceCheck]], caption: str, target: str,
                 fmt: str = "png") -> dict[str, bytes]:
    """``oracle_error.csv`` and its figure in ``fmt``, for a result folder; none without rows."""
    if not rows_by_policy:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        fig = Path(tmp) / f"{FIGURE_NAME}.{fmt}"
        plot(rows_by_policy, fig, caption, target)
        return {CSV_NAME: csv_bytes(rows_by_policy), fig.name: fig.read_bytes()}


def plot(rows_by_policy: Mapping[str, Sequence[PriceCheck]], path: Path, caption: str, target: str) -> None:
    """The signed relative error's CDF per policy, one panel per tier, on a symmetric log axis."""
    tiers = sorted({r.tier for rows in rows_by_policy.values() for r in rows}) or [0]
    fig = new_figure(3.2 * len(tiers) + 1.0, 3.6)
    axes = fig.subplots(1, len(tiers), sharey=True, squeeze=False)[0]
    styles = policy_styles(list(rows_by_policy), target)
    for ax, tier in zip(axes, tiers):
        for name, rows in rows_by_policy.items():
            x = np.sort([(r.predicted_s - r.measured_s) / r.measured_s
                         for r in rows if r.tier == tier and r.measured_s > 0])
            if x.size:
                draw_line(ax, x, np.arange(1, x.size + 1) / x.size, name, styles, target, step=True,
                          label=legend_label(name, target, int(x.size)))
        ax.set_xscale("symlog", linthresh=0.1)
        ax.axvline(0.0, color="0.5", linewidth=0.8)
        ax.set_title(f"tier {tier}", fontsize="medium")
        ax.set_xlabel("(predicted - measured) / measured")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of transfers")
    axes[-1].legend(fontsize="x-small", loc="lower right")
    finish_figure(fig, path, FigureText("Oracle price at decision vs the transfer's time, per tier", caption))
