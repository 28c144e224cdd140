"""The per-policy figures of a result folder, drawn from the records alone.

:func:`render_figures` draws every figure of a result folder (``ttft_cdf``, ``ttft_bars``,
``slo_attainment``, ``transfer_by_tier``, ``ttft_over_time`` from :mod:`scheduler.results.timeline` and
the link heat map from :mod:`scheduler.results.heatmap`), recomputing the statistics from the records, so
``netkv plot`` redraws them from ``requests.csv``; :func:`plot_compare_cdf` is ``netkv compare``'s.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.ticker import FixedLocator, FuncFormatter

from scheduler.model.records import RequestRecord
from scheduler.results.heatmap import LinkSeries, plot_link_heatmap
from scheduler.results.metrics import N_TIERS, SloConfig, slo_attainment_curve, summarize_policy
from scheduler.results.plotting import (
    LINK_FIGURE,
    TARGET_POLICY,
    FigureText,
    check_format,
    draw_line,
    experiment_caption,
    finish_figure,
    legend_label,
    log_axis,
    new_figure,
    policy_colours,
    policy_styles,
)
from scheduler.results.timeline import plot_ttft_over_time

TIER_LABELS = ("0 same server", "1 same rack", "2 same pod", "3 cross-pod")
#: SLO scales of ``slo_attainment.png`` (0.25x .. 4x in quarter-octave steps).
SLO_SCALES = tuple(float(x) for x in np.geomspace(0.25, 4.0, 17))
#: Two-sided 95 % normal quantile, for the intervals of the bar charts.
Z95 = 1.959964


def _ttft(recs: Sequence[RequestRecord]) -> np.ndarray:
    """Sorted finite, positive TTFTs of ``recs``."""
    return np.sort(np.array([r.ttft_s for r in recs if math.isfinite(r.ttft_s) and r.ttft_s > 0], dtype=float))


def quantile_levels(n: int) -> np.ndarray:
    """Quantile levels of the ratio panel: 1 %..99 % and the 99.5/99.9 % tail, only those the
    sample size ``n`` resolves (level <= 1 - 1/n), so no tail point is an extrapolation."""
    levels = np.concatenate((np.arange(1, 100) / 100.0, [0.995, 0.999]))
    return levels[levels <= 1.0 - 1.0 / max(n, 1) + 1e-12]


def _plot_ttft_cdf(path: Path, records: dict[str, list[RequestRecord]], slo: SloConfig,
                   styles: dict[str, dict], caption: str = "", target: str = TARGET_POLICY) -> FigureText:
    """CDF of TTFT per policy (log axis), and beside it each policy's TTFT quantiles as a ratio
    to the target's (a zoom on the body of the distributions when there is no target)."""
    fig = new_figure(13.0, 5.0)
    ax, side = fig.subplots(1, 2, width_ratios=(1.15, 1.0))
    sorted_ttft = {name: _ttft(recs) for name, recs in records.items()}
    for name, recs in records.items():
        ttft = sorted_ttft[name]
        if ttft.size == 0:
            continue
        y = np.arange(1, ttft.size + 1) / len(recs)  # unfinished requests keep the CDF below 1
        draw_line(ax, ttft, y, name, styles, target, step=True, label=legend_label(name, target, len(recs)))
    ax.axvline(slo.ttft_s, color="black", linestyle="--", linewidth=1.0, label=f"TTFT SLO {slo.ttft_s:g} s")
    if any(t.size for t in sorted_ttft.values()):
        ax.set_xscale("log")
        log_axis(ax.xaxis)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("time to first token (s, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("CDF")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")

    base = sorted_ttft.get(target)
    if base is not None and base.size:
        _ratio_panel(side, sorted_ttft, styles, target)
        what = f"quantiles relative to {target}"
    else:
        _body_panel(side, records, sorted_ttft, styles, target)
        what = "body of the distribution"
    return finish_figure(fig, path, FigureText(f"TTFT distribution per policy, and {what}", caption))


RATIO_TICKS = (0.25, 0.5, 0.67, 0.8, 0.9, 0.95, 0.98, 1.0, 1.02, 1.05, 1.1, 1.25, 1.5, 2.0, 4.0)
"""Labelled ratios on the quantile-ratio panel: those inside the data's range are shown (powers of
two alone label nothing but x1 when policies differ by a few percent)."""


def _ratio_panel(ax, sorted_ttft: dict[str, np.ndarray], styles: dict[str, dict], target: str) -> None:
    """Each policy's TTFT quantile over the target's at the same level (log2 y, logit x)."""
    base = sorted_ttft[target]
    n_min = min(t.size for t in sorted_ttft.values() if t.size)
    levels = quantile_levels(n_min)
    drawn = False
    for name, ttft in sorted_ttft.items():
        if ttft.size == 0 or levels.size == 0:
            continue
        ratio = np.quantile(ttft, levels) / np.quantile(base, levels)
        draw_line(ax, levels, ratio, name, styles, target, label=legend_label(name, target))
        drawn = True
    ax.axhline(1.0, color="black", linewidth=0.8)
    if drawn:
        ax.set_xscale("logit")
        ticks = [q for q in (0.01, 0.1, 0.5, 0.9, 0.99, 0.999) if q <= levels[-1] + 1e-12]
        ax.set_xticks(ticks, [f"p{100 * q:g}" for q in ticks])
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _p: ""))
        ax.set_yscale("log", base=2)
        lo, hi = ax.get_ylim()
        ticks = [r for r in RATIO_TICKS if lo <= r <= hi] or [1.0]  # ratios a reader can read off
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"x{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _p: ""))
        ax.set_ylim(lo, hi)
    ax.set_xlabel(f"quantile level (logit scale, up to what n={n_min} resolves)")
    ax.set_ylabel(f"TTFT quantile / {target}'s (log scale)")
    ax.set_title(f"quantiles relative to {target} (above x1: slower than {target})")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize="x-small")


def _body_panel(ax, records: dict[str, list[RequestRecord]], sorted_ttft: dict[str, np.ndarray],
                styles: dict[str, dict], target: str) -> None:
    """The CDF again on a linear axis between the 5th and 95th percentile of all policies."""
    every = np.concatenate([t for t in sorted_ttft.values() if t.size] or [np.empty(0)])
    for name, ttft in sorted_ttft.items():
        if ttft.size:
            draw_line(ax, ttft, np.arange(1, ttft.size + 1) / len(records[name]), name, styles, target, step=True,
                       label=legend_label(name, target))
    if every.size:
        lo, hi = np.percentile(every, [5, 95])
        if hi > lo:
            ax.set_xlim(lo, hi)
    ax.set_xlabel("time to first token (s, linear: 5th..95th percentile of all policies)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("body of the distribution")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="x-small")


def plot_compare_cdf(path: Path, records_a: Mapping[str, Sequence[RequestRecord]],
                     records_b: Mapping[str, Sequence[RequestRecord]], policies: Sequence[str], slo_a_s: float,
                     slo_b_s: float, caption: str = "", target: str = TARGET_POLICY) -> FigureText:
    """TTFT CDFs of ``policies`` from two result folders on one log axis (``netkv compare``):
    A solid, B dashed, one colour per policy; ``caption`` names both experiments."""
    fig = new_figure(10.0, 6.0)
    ax = fig.add_subplot(1, 1, 1)
    colours = policy_colours(list(policies), target)
    drawn = False
    for name in policies:
        for recs, style, side in ((records_a.get(name, []), "-", "A"), (records_b.get(name, []), "--", "B")):
            ttft = _ttft(recs)
            if ttft.size == 0:
                continue
            ax.step(ttft, np.arange(1, ttft.size + 1) / len(recs), where="post", color=colours[name],
                    linestyle=style, linewidth=1.6 if side == "A" else 1.4, label=f"{name} {side} (n={len(recs)})")
            drawn = True
    ax.axvline(slo_a_s, color="black", linestyle=":", linewidth=1.0, label=f"TTFT SLO {slo_a_s:g} s (A)")
    if slo_b_s != slo_a_s:
        ax.axvline(slo_b_s, color="0.4", linestyle=":", linewidth=1.0, label=f"TTFT SLO {slo_b_s:g} s (B)")
    if drawn:
        ax.set_xscale("log")
        log_axis(ax.xaxis)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("time to first token (s, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="x-small", ncol=2)
    return finish_figure(fig, path, FigureText("TTFT distribution: A (solid) vs B (dashed)", caption))


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """95 % confidence interval of the mean of the finite ``values`` (normal approximation,
    mean +- 1.96 standard errors); NaNs with fewer than two values."""
    x = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if x.size < 2:
        return float("nan"), float("nan")
    half = Z95 * float(np.std(x, ddof=1)) / math.sqrt(x.size)
    mean = float(np.mean(x))
    return mean - half, mean + half


def quantile_interval(values: Sequence[float], q: float) -> tuple[float, float]:
    """Distribution-free 95 % confidence interval of the ``q``-quantile (0..1) of the finite
    ``values``: the order statistics at ranks n q -+ 1.96 sqrt(n q (1 - q)), clipped to the sample
    (so with few values the upper end is the maximum); NaNs without values."""
    x = np.sort(np.asarray([v for v in values if math.isfinite(v)], dtype=float))
    n = x.size
    if n == 0:
        return float("nan"), float("nan")
    half = Z95 * math.sqrt(n * q * (1.0 - q))
    lo = int(min(max(math.floor(n * q - half), 1), n)) - 1
    hi = int(min(max(math.ceil(n * q + half), 1), n)) - 1
    return float(x[lo]), float(x[hi])


def _bar_panel(ax, names: list[str], values: list[float], intervals: list[tuple[float, float]],
               colours: dict[str, str], target: str, ylabel: str, title: str) -> None:
    """One bar per policy with its 95 % interval as an error bar and its value on top."""
    x = np.arange(len(names))
    heights = [v if math.isfinite(v) else 0.0 for v in values]
    lo = [max(h - iv[0], 0.0) if math.isfinite(iv[0]) else 0.0 for h, iv in zip(heights, intervals)]
    hi = [max(iv[1] - h, 0.0) if math.isfinite(iv[1]) else 0.0 for h, iv in zip(heights, intervals)]
    bars = ax.bar(x, heights, 0.7, color=[colours[n] for n in names],
                  edgecolor=["black" if n == target else "none" for n in names], linewidth=1.2,
                  yerr=[lo, hi], capsize=3, error_kw={"elinewidth": 1.0, "ecolor": "0.2"})
    ax.bar_label(bars, labels=[f"{v:.3g}" if math.isfinite(v) else "n/a" for v in values],
                 fontsize="x-small", padding=2, label_type="edge")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize="small")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.margins(y=0.15)
    ax.grid(True, axis="y", alpha=0.3)


def _plot_ttft_bars(path: Path, records: dict[str, list[RequestRecord]], summaries: dict[str, dict],
                    colours: dict[str, str], caption: str = "", target: str = TARGET_POLICY) -> FigureText:
    """Mean and p99 TTFT per policy in two panels with their own axes (a mean near 0.5 s and a
    p99 near 7 s do not share one linear axis), each with a 95 % interval from the records."""
    names = list(summaries)
    fig = new_figure(max(8.0, 3.0 + 1.2 * len(names)), 5.0)
    ax_mean, ax_p99 = fig.subplots(1, 2)
    ttft = {n: [r.ttft_s for r in records.get(n, [])] for n in names}
    _bar_panel(ax_mean, names, [summaries[n]["ttft_mean_s"] for n in names],
               [mean_interval(ttft[n]) for n in names], colours, target, "mean TTFT (s)",
               "mean (95 % CI, normal approximation)")
    _bar_panel(ax_p99, names, [summaries[n]["ttft_p99_s"] for n in names],
               [quantile_interval(ttft[n], 0.99) for n in names], colours, target, "p99 TTFT (s)",
               "p99 (95 % CI, order statistics)")
    return finish_figure(fig, path, FigureText("TTFT per policy: mean and 99th percentile", caption))


SLO_PANELS = (("fixed", "TTFT {ttft:g} s and mean TBT {tbt:g} ms"), ("ttft-only", "TTFT {ttft:g} s alone"),
              ("per-request", "TTFT {fixed:g} s + {per:g} ms/token, TBT {tbt:g} ms"))
"""Panels of ``slo_attainment.png``: one per SLO definition, each with what 1x means."""


def _plot_slo_attainment(path: Path, records: dict[str, list[RequestRecord]], slo: SloConfig,
                         styles: dict[str, dict], caption: str = "", target: str = TARGET_POLICY) -> FigureText:
    """Attainment against SLO strictness, one panel per SLO definition; the y-axis spans the data
    (differences live near the top), the default definition's panel is marked."""
    fig = new_figure(15.0, 5.0)
    axes = fig.subplots(1, len(SLO_PANELS), sharey=False)
    for ax, (definition, what) in zip(axes, SLO_PANELS):
        lo = 100.0
        for name, recs in records.items():
            curve = np.array(slo_attainment_curve(recs, slo, SLO_SCALES, definition), dtype=float) * 100.0
            if np.isfinite(curve).any():
                lo = min(lo, float(np.nanmin(curve)))
            draw_line(ax, SLO_SCALES, curve, name, styles, target, marker="o", markersize=3,
                       label=legend_label(name, target))
        ax.axvline(1.0, color="black", linestyle="--", linewidth=1.0)
        ax.set_xscale("log", base=2)
        ax.set_xticks([0.25, 0.5, 1, 2, 4], ["0.25x", "0.5x", "1x", "2x", "4x"])
        ax.set_ylim(max(lo - 0.05 * (100.0 - lo) - 1.0, -2.0), 101.0)
        label = what.format(ttft=slo.ttft_s, tbt=slo.tbt_ms, fixed=slo.ttft_fixed_s, per=slo.ttft_per_token_ms)
        ax.set_xlabel(f"SLO scale (1x = {label})", fontsize="small")
        ax.set_title(f"{definition}" + (" (default)" if definition == slo.definition else ""))
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("requests meeting the SLO (%)")
    axes[-1].legend(loc="lower right", fontsize="x-small")
    return finish_figure(fig, path, FigureText("SLO attainment vs SLO strictness, per SLO definition", caption))


def _transfers_by_tier(recs: Sequence[RequestRecord]) -> list[list[float]]:
    """Transfer times of the requests that moved KV bytes, per tier (as ``summarize_policy``)."""
    out: list[list[float]] = [[] for _ in range(N_TIERS)]
    for r in recs:
        if r.kv_bytes > 0 and 0 <= r.tier < N_TIERS:
            out[r.tier].append(r.transfer_s)
    return out


def _plot_transfer_by_tier(path: Path, records: dict[str, list[RequestRecord]], summaries: dict[str, dict],
                           colours: dict[str, str], caption: str = "") -> FigureText:
    """Mean KV transfer time per tier with its 95 % interval and count, and the counts alone."""
    fig = new_figure(11.0, 7.0)
    ax_t, ax_n = fig.subplots(2, 1, sharex=True)
    n = max(len(summaries), 1)
    width = 0.8 / n
    x = np.arange(N_TIERS)
    for i, (name, s) in enumerate(summaries.items()):
        offset = x - 0.4 + width * (i + 0.5)
        means_ms = [float("nan") if v is None else 1000.0 * v for v in s["transfer_mean_s_by_tier"]]
        counts = s["tier_histogram"]
        by_tier = _transfers_by_tier(records.get(name, []))
        heights = [v if math.isfinite(v) else 0.0 for v in means_ms]
        ci = [mean_interval(t) for t in by_tier]
        lo = [max(h - 1000.0 * c[0], 0.0) if math.isfinite(c[0]) else 0.0 for h, c in zip(heights, ci)]
        hi = [max(1000.0 * c[1] - h, 0.0) if math.isfinite(c[1]) else 0.0 for h, c in zip(heights, ci)]
        bars = ax_t.bar(offset, heights, width, color=colours[name], label=name, yerr=[lo, hi], capsize=2,
                        error_kw={"elinewidth": 0.8, "ecolor": "0.2"})
        ax_t.bar_label(bars, labels=[f"{v:.3g}" if math.isfinite(v) else "" for v in means_ms],
                       fontsize="xx-small", padding=1)
        bars = ax_n.bar(offset, counts, width, color=colours[name], label=name)
        ax_n.bar_label(bars, labels=[str(c) for c in counts], fontsize="xx-small", padding=1)
    ax_t.set_ylabel("mean KV transfer time (ms)")
    ax_t.set_title("mean transfer time (95 % CI, normal approximation)")
    ax_t.margins(y=0.2)
    ax_t.grid(True, axis="y", alpha=0.3)
    ax_t.legend(fontsize="small")
    ax_n.set_ylabel("number of transfers")
    ax_n.set_xlabel("tier between prefill and decode instance")
    ax_n.set_xticks(x, TIER_LABELS)
    ax_n.set_title("number of transfers (the requests behind each mean)")
    ax_n.margins(y=0.15)
    ax_n.grid(True, axis="y", alpha=0.3)
    return finish_figure(fig, path, FigureText("KV transfers per network tier", caption))


def render_figures(folder: Path, records: dict[str, list[RequestRecord]], slo: SloConfig, summary: Mapping,
                   target: str = TARGET_POLICY, fmt: str = "png",
                   spans: Sequence[tuple[float, float, str]] = (),
                   links: LinkSeries | None = None) -> dict[str, FigureText]:
    """Draw every figure of a result folder into ``folder`` in ``fmt``, each naming the experiment
    of ``summary`` (:func:`experiment_caption`); returns file name -> its title and caption. The
    link heat map is drawn when ``links`` is given. Figures come from ``records`` alone (the
    statistics are recomputed), so a re-plot from ``requests.csv`` draws the same figures."""
    check_format(fmt)
    folder = Path(folder)
    caption = experiment_caption(summary)
    colours = policy_colours(list(records), target)
    styles = policy_styles(list(records), target)
    summaries = {name: summarize_policy(recs, slo) for name, recs in records.items()}
    spans = [(float(a), float(b), str(label)) for a, b, label in spans]
    out = {
        f"ttft_cdf.{fmt}": _plot_ttft_cdf(folder / f"ttft_cdf.{fmt}", records, slo, styles, caption, target),
        f"ttft_bars.{fmt}": _plot_ttft_bars(folder / f"ttft_bars.{fmt}", records, summaries, colours, caption, target),
        f"slo_attainment.{fmt}": _plot_slo_attainment(folder / f"slo_attainment.{fmt}", records, slo, styles,
                                                      caption, target),
        f"transfer_by_tier.{fmt}": _plot_transfer_by_tier(folder / f"transfer_by_tier.{fmt}", records, summaries,
                                                          colours, caption),
        f"ttft_over_time.{fmt}": plot_ttft_over_time(folder / f"ttft_over_time.{fmt}", records, slo, styles, spans,
                                                      caption, target),
    }
    if links is not None:
        name = f"{LINK_FIGURE}.{fmt}"
        out[name] = plot_link_heatmap(folder / name, links.times_s, links.link_names, links.utilisation, caption,
                                      links.source)
    return out
