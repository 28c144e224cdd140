"""``sweep.png``: a sweep's mean TTFT, SLO attainment and the target's change against each
baseline over the parameter, with 95% intervals over seeds; :func:`errorbar_series` draws such an
interval series (the staleness figure's too)."""
from __future__ import annotations

import io
import textwrap

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, NullLocator

from scheduler.policies import TARGET
from scheduler.results.plotting import policy_colours
from scheduler.study.sweep import Sweep


def errorbar_series(ax, x, series, scale: float = 1.0, **kw) -> None:
    """``series`` (mean, half-width) per x, times ``scale``, as points with error bars (none where
    the half-width is NaN: a single seed); ``kw`` go to ``ax.errorbar``."""
    m = np.array([p[0] for p in series], dtype=float) * scale
    e = np.array([p[1] for p in series], dtype=float) * scale
    ax.errorbar(x, m, yerr=np.where(np.isfinite(e), e, 0.0), **kw)


TITLE_WRAP = textwrap.TextWrapper(width=150, break_on_hyphens=False)
"""Long titles (a sweep's whole command line) wrap onto lines that fit the figure's width."""


def plot(sweep: Sweep, agg: dict, title: str, target: str = TARGET) -> bytes:
    """PNG: mean TTFT, SLO attainment and the target's change against each baseline over the
    parameter, with 95% intervals over seeds."""
    fig = Figure(figsize=(15.0, 4.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    values = sweep.values
    x = np.asarray(values, dtype=float) if sweep.numeric else np.arange(len(values), dtype=float)
    colours = policy_colours(list(agg["policies"]), target)
    positive = sweep.numeric and all(v > 0 for v in values)
    log = positive and max(values) / min(values) > 10

    def draw(ax, series, colour, label, scale=1.0, style="-"):
        errorbar_series(ax, x, series, scale, color=colour, label=label, marker="o", markersize=3.5, capsize=3,
                        linestyle=style, linewidth=2.4 if label == target else 1.3)

    for name, m in agg["policies"].items():
        draw(axes[0], m["ttft_mean_s"], colours[name], name)
        draw(axes[1], m["slo_attainment"], colours[name], name, 100.0)
    for base, d in agg["vs"].items():
        draw(axes[2], d["ttft_mean_pct"], colours[base], f"vs {base}", style="--")
    axes[2].axhline(0.0, color="black", linewidth=0.8)
    seeds = len(sweep.seeds)
    for ax, ylabel in zip(axes, ("mean TTFT (s)", "SLO attainment (%)", f"{target} mean TTFT change (%)")):
        ax.set_ylabel(ylabel)
        ax.set_xlabel(sweep.param)
        ax.grid(True, alpha=0.3)
        if log:  # ticks at the swept values only: log scales' minor labels overlap into one row
            ax.set_xscale("log")
            ax.set_xticks(x, [f"{v:g}" for v in values])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_minor_formatter(NullFormatter())
        if not sweep.numeric:
            ax.set_xticks(x, [str(v) for v in values])
    axes[0].legend(fontsize="x-small")
    axes[2].legend(fontsize="x-small")
    caption = f"{title}  (mean of {seeds} seed{'s' if seeds > 1 else ''}, 95% intervals)"
    fig.suptitle(TITLE_WRAP.fill(caption), fontsize="medium")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
