"""The figure of a serve-bench result folder: each router's client TTFT CDF, and where its mean
TTFT goes (the workers' own TTFT, the router's overhead, per request means)."""
from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from scheduler.results.plotting import FigureText, draw_line, finish_figure, legend_label, new_figure, policy_styles

FIGURE_NAME = "serve_bench"
NETKV_LABEL = "netkv-router:netkv"
"""The router highlighted (the NetKV router with the network-aware rule)."""


def result_files(rows_by_router: Mapping[str, Sequence[Mapping]], time_scale: float, caption: str,
                 fmt: str = "png") -> dict[str, bytes]:
    """The figure in ``fmt`` for a serve-bench result folder; none without a served request."""
    if not any(r.get("client_ttft_s") is not None for rows in rows_by_router.values() for r in rows):
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        fig = Path(tmp) / f"{FIGURE_NAME}.{fmt}"
        plot(rows_by_router, time_scale, fig, caption)
        return {fig.name: fig.read_bytes()}


def plot(rows_by_router: Mapping[str, Sequence[Mapping]], time_scale: float, path: Path, caption: str) -> None:
    """Left: client TTFT CDF per router (log x). Right: mean workers' TTFT + router overhead."""
    names = list(rows_by_router)
    target = NETKV_LABEL if NETKV_LABEL in names else names[-1]
    styles = policy_styles(names, target)
    fig = new_figure(10.0, 3.8)
    cdf, bars = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    workers, overhead = [], []
    for name in names:
        ok = [r for r in rows_by_router[name] if r.get("client_ttft_s") is not None and not r.get("error")]
        x = np.sort([r["client_ttft_s"] / time_scale for r in ok])
        if x.size:
            draw_line(cdf, x, np.arange(1, x.size + 1) / x.size, name, styles, target, step=True,
                      label=legend_label(name, target, int(x.size)))
        paired = [r for r in ok if r.get("worker_ttft_s") is not None]
        workers.append(float(np.mean([r["worker_ttft_s"] for r in paired])) / time_scale if paired else 0.0)
        overhead.append(float(np.mean([r["overhead_s"] for r in paired])) / time_scale if paired else 0.0)
    cdf.set_xscale("log")
    cdf.set_xlabel("client TTFT, s (log)")
    cdf.set_ylabel("fraction of requests")
    cdf.grid(alpha=0.3)
    cdf.legend(fontsize="x-small", loc="lower right")
    y = np.arange(len(names))
    bars.barh(y, workers, color=[styles[n]["color"] for n in names], label="workers' TTFT")
    bars.barh(y, overhead, left=workers, color="0.75", label="router overhead")
    bars.set_yticks(y, [n.replace("netkv-router:", "netkv router: ") for n in names], fontsize="x-small")
    bars.invert_yaxis()
    bars.set_xlabel("mean TTFT, s")
    bars.legend(fontsize="x-small", loc="lower right")
    bars.grid(axis="x", alpha=0.3)
    finish_figure(fig, path, FigureText("Client TTFT per router, and where the mean goes", caption))
