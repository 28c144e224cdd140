"""How right was the oracle: its price of each KV transfer at decision time against the time the
transfer then took (issue "uses on the live fabric", part 4).

At every decision of an oracle-consuming policy the dispatcher keeps the oracle's cost of the
chosen transfer (:meth:`scheduler.model.cluster.DecisionContext.raw_transfer_cost_s`, with the
telemetry's staleness in force); the backend reports when the bytes arrived. ``measured`` is from
the moment the transfer could start (the prefill's end, or its first layer when streaming layer by
layer) to its last byte: the fluid network's time in ``simulate``, the agents' stamps in
``emulate``, so both backends write the same ``oracle_error.csv`` and summary block. The error
includes what the oracle cannot know at decision time: traffic that starts or stops before the
transfer does (the prefill runs in between), and queueing behind its own earlier transfers.
"""
from __future__ import annotations

import csv
import io
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass, fields, replace
from pathlib import Path

import numpy as np

CSV_NAME = "oracle_error.csv"
FIGURE_NAME = "oracle_error"


@dataclass(frozen=True)
class OracleError:
    """One transfer: the oracle's price at decision time and the time it took (seconds)."""

    policy: str
    req_id: int
    tier: int
    kv_bytes: int
    predicted_s: float
    measured_s: float

    @property
    def relative(self) -> float:
        """|predicted - measured| / measured (NaN for an instantaneous transfer)."""
        return abs(self.predicted_s - self.measured_s) / self.measured_s if self.measured_s > 0 else math.nan


def _stats(rows: Sequence[OracleError]) -> dict:
    rel = np.array([r.relative for r in rows], dtype=float)
    rel = rel[np.isfinite(rel)]
    signed = np.array([(r.predicted_s - r.measured_s) / r.measured_s for r in rows if r.measured_s > 0])
    if rel.size == 0:
        return {"transfers": len(rows), "median_rel_error": None, "p90_rel_error": None, "median_bias": None}
    return {"transfers": len(rows), "median_rel_error": float(np.median(rel)),
            "p90_rel_error": float(np.percentile(rel, 90)), "median_bias": float(np.median(signed))}


def calibrated(rows: Sequence[OracleError], fits: Mapping[str, dict | None]) -> list[OracleError]:
    """The rows of the tiers with a fit, their prices mapped through it (``intercept_s + slope x
    predicted``: :func:`scheduler.emulate.calibration.affine_fit`)."""
    out = []
    for r in rows:
        fit = fits.get(str(r.tier))
        if fit:
            out.append(replace(r, predicted_s=fit["intercept_s"] + fit["slope"] * r.predicted_s))
    return out


def summarize(rows: Sequence[OracleError], fits: Mapping[str, dict | None] | None = None) -> dict:
    """``summary.json``'s ``oracle_error`` of one policy: transfers, median and p90 of the relative
    error, the median signed error (``median_bias`` > 0: the oracle over-priced), overall and per
    tier (``by_tier``: one entry per tier that saw a transfer). With ``fits`` (the emulator's
    calibration, tier -> fit), ``calibrated`` holds the same for the prices mapped through the fit
    of their tier: how far the oracle is from the packets once the emulator's fixed per-transfer
    cost and goodput, measured before the replay, are accounted for."""
    out = _by_tier(rows)
    if fits:
        fitted = calibrated(rows, fits)
        if fitted:
            out["calibrated"] = {**_by_tier(fitted), "fits": {t: f for t, f in fits.items() if f},
                                 "source": "calibration.json (tiers' fit)"}
    out["file"] = CSV_NAME
    return out


def console_line(rows: Sequence[OracleError], fits: Mapping[str, dict | None] | None = None) -> str:
    """One line for the terminal: median relative error per tier over ``rows`` (every policy's),
    as priced and, where the tier has a calibration fit, through it."""
    raw, fitted = _by_tier(rows)["by_tier"], _by_tier(calibrated(rows, fits or {}))["by_tier"]

    def cell(t: str) -> str:
        s = raw[t]
        text = f"tier {t}: {100 * s['median_rel_error']:.0f}%" if s["median_rel_error"] is not None else f"tier {t}: -"
        c = fitted.get(t)
        if c and c["median_rel_error"] is not None:
            text += f" ({100 * c['median_rel_error']:.0f}% calibrated)"
        return text + f" of {s['transfers']}"
    return ("oracle error, median |predicted - measured| / measured per KV transfer (all policies): "
            + "; ".join(cell(t) for t in raw))


def _by_tier(rows: Sequence[OracleError]) -> dict:
    out = _stats(rows)
    out["by_tier"] = {str(t): _stats([r for r in rows if r.tier == t]) for t in sorted({r.tier for r in rows})}
    return out


def csv_bytes(rows_by_policy: Mapping[str, Sequence[OracleError]]) -> bytes:
    """``oracle_error.csv``: one row per transfer, policies in order."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([f.name for f in fields(OracleError)] + ["relative_error"])
    for rows in rows_by_policy.values():
        for r in rows:
            w.writerow([*astuple(r), f"{r.relative:.6g}"])
    return buf.getvalue().encode()


def result_files(rows_by_policy: Mapping[str, Sequence[OracleError]], caption: str, target: str,
                 fmt: str = "png") -> dict[str, bytes]:
    """``oracle_error.csv`` and its figure in ``fmt``, for a result folder; none without rows."""
    if not rows_by_policy:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        fig = Path(tmp) / f"{FIGURE_NAME}.{fmt}"
        plot(rows_by_policy, fig, caption, target)
        return {CSV_NAME: csv_bytes(rows_by_policy), fig.name: fig.read_bytes()}


def plot(rows_by_policy: Mapping[str, Sequence[OracleError]], path: Path, caption: str, target: str) -> None:
    """The signed relative error's CDF per policy, one panel per tier, on a symmetric log axis."""
    from scheduler.results.plotting import FigureText, draw_line, finish_figure, legend_label, new_figure, policy_styles

    tiers = sorted({r.tier for rows in rows_by_policy.values() for r in rows}) or [0]
    fig = new_figure(3.2 * len(tiers) + 1.0, 3.6)
    axes = fig.subplots(1, len(tiers), sharey=True, squeeze=False)[0]
    styles = policy_styles(list(rows_by_policy), target)
    for ax, tier in zip(axes, tiers):
        for name, rows in rows_by_policy.items():
            x = np.sort([(r.predicted_s - r.measured_s) / r.measured_s for r in rows if r.tier == tier and r.measured_s > 0])
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
