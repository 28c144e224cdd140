"""Result folders (summary.json, requests.csv, figures) and the plain-text comparison table.

``write_results`` is atomic: everything is written into a hidden sibling folder which is renamed
onto ``out_dir`` only after the last file is complete, so an exception or Ctrl-C never leaves a
partial result folder behind. Plots use matplotlib's Agg canvas directly (no pyplot, no global
backend switch), so importing this module has no side effect on other matplotlib users.

Every figure names the experiment it shows (scenario, trace, model, NIC, placement, oracle, seed:
:func:`experiment_caption`) under its title and in the file's metadata, and is drawn from the
records alone (:func:`render_figures`), so ``netkv plot`` redraws it from ``requests.csv``.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter

from scheduler.metrics import N_TIERS, SloConfig, ablation, compare, slo_attainment_curve, summarize_policy
from scheduler.records import RequestRecord

#: Policy drawn in the highlight colour in every plot and compared against in the table.
TARGET_POLICY = "netkv"
TARGET_COLOUR = "#d62728"  # red, reserved for the target policy
#: Colours of the other policies, assigned in order of appearance (never the target's red).
BASELINE_COLOURS = ("#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f",
                    "#bcbd22", "#e377c2")
#: Dash patterns of the baselines, in order of appearance (the target is solid): two policies
#: are told apart by their pattern where their colours alone would not do (print, colour vision).
LINE_STYLES = ("--", "-.", ":", (0, (6, 2)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (8, 2, 2, 2)),
               (0, (4, 2, 1, 2, 1, 2)), (0, (2, 2)))
#: The target's translucent band under its line (points, alpha): visible, yet a baseline on it shows.
TARGET_BAND_WIDTH = 5.0
TARGET_BAND_ALPHA = 0.3
TIER_LABELS = ("0 same server", "1 same rack", "2 same pod", "3 cross-pod")
#: SLO scales of ``slo_attainment.png`` (0.25x .. 4x in quarter-octave steps).
SLO_SCALES = tuple(float(x) for x in np.geomspace(0.25, 4.0, 17))
#: Figure file formats (``--format``).
FIGURE_FORMATS = ("png", "pdf", "svg")
#: Figures every result folder has (file name without the format suffix).
FIGURES = ("ttft_cdf", "ttft_bars", "slo_attainment", "transfer_by_tier", "ttft_over_time")
#: The per-link utilisation heat map and its data, written when a run recorded link samples.
LINK_FIGURE = "link_utilisation"
LINK_CSV = "link_utilisation.csv"
#: Files ``write_results`` always produces (figures in the default format, png).
RESULT_FILES = ("summary.json", "requests.csv", *(f"{name}.png" for name in FIGURES))
#: Heat map: above this many links, only links whose peak utilisation exceeds 1 % are shown,
#: and at most this many of them (the busiest).
HEATMAP_MAX_LINKS = 48
HEATMAP_MIN_PEAK = 0.01
#: Heat map and ``link_utilisation.csv``: at most this many time columns (polls averaged in groups;
#: a full 12k-request trace has ~7,000 polls of 0.5 s).
MAX_HEATMAP_COLUMNS = 600
#: Two-sided 95 % normal quantile, for the intervals of the bar charts.
Z95 = 1.959964
#: ``ttft_over_time``: windows average at least this many requests on average, and are at most this many.
MIN_REQUESTS_PER_WINDOW = 12
MAX_WINDOWS = 400
#: ``ttft_over_time``: window means are marked with dots up to this many windows (beyond, lines only).
MAX_MARKED_WINDOWS = 80
#: ``ttft_over_time``: rows of the event strip; spans of one event beyond which they are drawn as one.
MAX_SPAN_ROWS = 10
MAX_SPANS_PER_EVENT = 400
SPAN_ALPHA = 0.1
#: ``ttft_over_time`` uses a log y-axis when the window means span more than this factor.
LOG_AXIS_RANGE = 8.0
#: Characters of the caption line per inch of figure width (small font) before it wraps.
CAPTION_CHARS_PER_INCH = 13

# Decimal places per requests.csv column (floats only); other float columns use 6 (microseconds).
_CSV_DECIMALS = {"tbt_mean_ms": 4, "decision_us": 2}
_DPI = 120
#: Terminal width ``format_table`` aims for.
TABLE_WIDTH = 100


class ResultsExistError(FileExistsError):
    """The result folder already exists and is not empty; results are never overwritten."""


# -- JSON / CSV ----------------------------------------------------------------------------------
def _jsonable(obj: object) -> object:
    """``obj`` with NaN/inf floats replaced by ``None`` and numpy/tuple values made plain."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj  # str, None; anything else makes json.dumps raise TypeError


def dumps_json(obj: object) -> str:
    """Strict JSON (indent 2) of ``obj``; NaN and infinities become ``null``."""
    return json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"


def _csv_value(name: str, value: object) -> object:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{_CSV_DECIMALS.get(name, 6)}f}"
    return value


def _write_csv(path: Path, records: dict[str, list[RequestRecord]]) -> None:
    columns = RequestRecord.columns()
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for recs in records.values():
            for r in recs:
                writer.writerow([_csv_value(c, getattr(r, c)) for c in columns])


# -- figure identity -----------------------------------------------------------------------------
def check_format(fmt: str) -> str:
    """``fmt`` if it is one of :data:`FIGURE_FORMATS`, else ``ValueError`` naming the choices."""
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"figure format {fmt!r}: expected one of {', '.join(FIGURE_FORMATS)}")
    return fmt


def figure_names(fmt: str = "png", links: bool = False) -> list[str]:
    """File names of a result folder's figures in ``fmt``, the link heat map included if ``links``."""
    check_format(fmt)
    return [f"{name}.{fmt}" for name in (*FIGURES, *((LINK_FIGURE,) if links else ()))]


def _config(summary: Mapping, *keys: str) -> object:
    """``summary["config"][k1][k2]...`` or None where any level is missing."""
    node: object = summary.get("config") if isinstance(summary, Mapping) else None
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _num_text(value: object) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def experiment_caption(summary: Mapping) -> str:
    """The experiment a figure shows, one ``" | "``-separated line from summary.json: backend,
    scenario (with its parameters), trace, model, NIC, placement, oracle and seed; a field the
    summary lacks is left out, so every figure names what it can."""
    parts = []
    if isinstance(summary, Mapping) and summary.get("backend"):
        parts.append(str(summary["backend"]))
    name = _config(summary, "scenario", "name")
    if name is not None:
        params = _config(summary, "scenario", "params") or {}
        extra = f" ({', '.join(f'{k}={_num_text(v)}' for k, v in params.items())})" if params else ""
        parts.append(f"scenario {name}{extra}")
    source = _config(summary, "trace", "source")
    if source is not None:
        source = str(source)
        text = f"trace {Path(source).name if '/' in source else source}"
        count = _config(summary, "trace", "evaluated", "count")
        if count is not None:
            text += f" ({count} requests"
            for key, label in (("rate_scale", "rate"), ("context_scale", "context")):
                scale = _config(summary, "trace", key)
                if isinstance(scale, (int, float)) and scale != 1:
                    text += f", {label} x{scale:g}"
            text += ")"
        parts.append(text)
    model, gpu = _config(summary, "model", "name"), _config(summary, "gpu", "name")
    if model is not None:
        parts.append(f"model {model}" + (f" on {gpu}" if gpu is not None else ""))
    nic = _config(summary, "topology", "nic_gbit_s")
    if nic is not None:
        parts.append(f"NIC {_num_text(nic)} Gbit/s")
    for key, label in ((("cluster", "placement"), "placement"), (("oracle", "kind"), "oracle"), (("seed",), "seed")):
        value = _config(summary, *key)
        if value is not None:
            parts.append(f"{label} {_num_text(value)}")
    return " | ".join(parts)


def _wrap(caption: str, width_in: float) -> str:
    """``caption`` broken at its `` | `` separators (and its newlines) into lines that fit a
    ``width_in``-inch figure."""
    limit = max(40, int(width_in * CAPTION_CHARS_PER_INCH))
    lines: list[str] = []
    for paragraph in caption.split("\n"):
        start = len(lines)
        for part in paragraph.split(" | "):
            if len(lines) > start and len(lines[-1]) + 3 + len(part) <= limit:
                lines[-1] += " | " + part
            else:
                lines.append(part)
    return "\n".join(lines)


@dataclass
class FigureText:
    """What a figure says it shows: its title and the experiment caption line under it."""

    title: str
    caption: str = ""


# -- styles --------------------------------------------------------------------------------------
def policy_colours(names: Sequence[str], target: str = TARGET_POLICY) -> dict[str, str]:
    """One colour per policy: ``target`` always red, the others from ``BASELINE_COLOURS`` in order."""
    out: dict[str, str] = {}
    i = 0
    for name in names:
        if name in out:
            continue
        if name == target:
            out[name] = TARGET_COLOUR
        else:
            out[name] = BASELINE_COLOURS[i % len(BASELINE_COLOURS)]
            i += 1
    return out


def policy_styles(names: Sequence[str], target: str = TARGET_POLICY) -> dict[str, dict]:
    """Line keyword arguments per policy, told apart by dash pattern as well as colour.

    The target is a wide translucent band under a thin solid line, both *below* the baselines, so
    a baseline that coincides with it stays visible on top (a thick opaque target line would hide
    it); baselines are thin, on top, each with its own dash pattern from :data:`LINE_STYLES`.
    """
    colours = policy_colours(names, target)
    out: dict[str, dict] = {}
    i = 0
    for name in colours:
        if name == target:
            out[name] = {"color": colours[name], "linestyle": "-", "linewidth": 1.3, "zorder": 3}
        else:
            out[name] = {"color": colours[name], "linestyle": LINE_STYLES[i % len(LINE_STYLES)],
                         "linewidth": 1.5, "zorder": 4}
            i += 1
    return out


def _draw_line(ax, x, y, name: str, styles: dict[str, dict], target: str, step: bool = False, **kw) -> None:
    """One policy's line in its style; the target also gets its translucent band underneath."""
    draw = (lambda *a, **k: ax.step(*a, where="post", **k)) if step else ax.plot
    style = {**styles[name], **kw}
    if name == target:
        band = {k: v for k, v in style.items() if k not in ("label", "marker", "markersize")}
        band.update(linewidth=TARGET_BAND_WIDTH, alpha=TARGET_BAND_ALPHA, zorder=2, solid_capstyle="butt")
        draw(x, y, **band)
    draw(x, y, **style)


def _legend_label(name: str, target: str, n: int | None = None) -> str:
    return name + (" (target)" if name == target else "") + (f" (n={n})" if n is not None else "")


# -- plots ---------------------------------------------------------------------------------------
def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _finish(fig: Figure, path: Path, text: FigureText) -> FigureText:
    """Put ``text`` on the figure (title on top, the experiment caption under the axes) and in
    the file's metadata (Title, Description/Subject), then save it in the format of ``path``'s
    suffix; returns ``text``."""
    fig.suptitle(text.title, fontsize="large")
    if text.caption:
        fig.supxlabel(_wrap(text.caption, fig.get_figwidth()), fontsize="small", color="0.25")
    fmt = check_format(Path(path).suffix.lstrip("."))
    meta = {"Title": text.title, ("Subject" if fmt == "pdf" else "Description"): text.caption}
    fig.savefig(path, format=fmt, dpi=_DPI, metadata=meta)
    return text


def _log_tick_label(value: float, _pos: int) -> str:
    return f"{value:g}"


def _log_minor_tick_label(value: float, _pos: int) -> str:
    """Label only the 2x and 5x minor ticks of a log axis, as plain numbers."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value))
    return f"{value:g}" if round(mantissa) in (2, 5) and abs(mantissa - round(mantissa)) < 1e-6 else ""


def _log_axis(axis) -> None:
    axis.set_major_formatter(FuncFormatter(_log_tick_label))
    axis.set_minor_formatter(FuncFormatter(_log_minor_tick_label))


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
    fig = _new_figure(13.0, 5.0)
    ax, side = fig.subplots(1, 2, width_ratios=(1.15, 1.0))
    sorted_ttft = {name: _ttft(recs) for name, recs in records.items()}
    for name, recs in records.items():
        ttft = sorted_ttft[name]
        if ttft.size == 0:
            continue
        y = np.arange(1, ttft.size + 1) / len(recs)  # unfinished requests keep the CDF below 1
        _draw_line(ax, ttft, y, name, styles, target, step=True, label=_legend_label(name, target, len(recs)))
    ax.axvline(slo.ttft_s, color="black", linestyle="--", linewidth=1.0, label=f"TTFT SLO {slo.ttft_s:g} s")
    if any(t.size for t in sorted_ttft.values()):
        ax.set_xscale("log")
        _log_axis(ax.xaxis)
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
    return _finish(fig, path, FigureText(f"TTFT distribution per policy, and {what}", caption))


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
        _draw_line(ax, levels, ratio, name, styles, target, label=_legend_label(name, target))
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
            _draw_line(ax, ttft, np.arange(1, ttft.size + 1) / len(records[name]), name, styles, target, step=True,
                       label=_legend_label(name, target))
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
    fig = _new_figure(10.0, 6.0)
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
        _log_axis(ax.xaxis)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("time to first token (s, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="x-small", ncol=2)
    return _finish(fig, path, FigureText("TTFT distribution: A (solid) vs B (dashed)", caption))


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
    fig = _new_figure(max(8.0, 3.0 + 1.2 * len(names)), 5.0)
    ax_mean, ax_p99 = fig.subplots(1, 2)
    ttft = {n: [r.ttft_s for r in records.get(n, [])] for n in names}
    _bar_panel(ax_mean, names, [summaries[n]["ttft_mean_s"] for n in names],
               [mean_interval(ttft[n]) for n in names], colours, target, "mean TTFT (s)",
               "mean (95 % CI, normal approximation)")
    _bar_panel(ax_p99, names, [summaries[n]["ttft_p99_s"] for n in names],
               [quantile_interval(ttft[n], 0.99) for n in names], colours, target, "p99 TTFT (s)",
               "p99 (95 % CI, order statistics)")
    return _finish(fig, path, FigureText("TTFT per policy: mean and 99th percentile", caption))


SLO_PANELS = (("fixed", "TTFT {ttft:g} s and mean TBT {tbt:g} ms"), ("ttft-only", "TTFT {ttft:g} s alone"),
              ("per-request", "TTFT {fixed:g} s + {per:g} ms/token, TBT {tbt:g} ms"))
"""Panels of ``slo_attainment.png``: one per SLO definition, each with what 1x means."""


def _plot_slo_attainment(path: Path, records: dict[str, list[RequestRecord]], slo: SloConfig,
                         styles: dict[str, dict], caption: str = "", target: str = TARGET_POLICY) -> FigureText:
    """Attainment against SLO strictness, one panel per SLO definition; the y-axis spans the data
    (differences live near the top), the default definition's panel is marked."""
    fig = _new_figure(15.0, 5.0)
    axes = fig.subplots(1, len(SLO_PANELS), sharey=False)
    for ax, (definition, what) in zip(axes, SLO_PANELS):
        lo = 100.0
        for name, recs in records.items():
            curve = np.array(slo_attainment_curve(recs, slo, SLO_SCALES, definition), dtype=float) * 100.0
            if np.isfinite(curve).any():
                lo = min(lo, float(np.nanmin(curve)))
            _draw_line(ax, SLO_SCALES, curve, name, styles, target, marker="o", markersize=3,
                       label=_legend_label(name, target))
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
    return _finish(fig, path, FigureText("SLO attainment vs SLO strictness, per SLO definition", caption))


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
    fig = _new_figure(11.0, 7.0)
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
    return _finish(fig, path, FigureText("KV transfers per network tier", caption))


# -- TTFT over time ------------------------------------------------------------------------------
def time_windows(run_s: float, n_requests: int, spans: Sequence[tuple[float, float, str]] = ()) -> float:
    """Width (s) of the arrival-time windows of ``ttft_over_time``: a 25th of the run, or half
    the shortest scenario span when that is shorter (so a span is resolved), but never so narrow
    that a window holds fewer than ``MIN_REQUESTS_PER_WINDOW`` requests on average nor that there
    are more than ``MAX_WINDOWS``."""
    if not run_s > 0:
        return 1.0
    width = run_s / 25.0
    shortest = min((b - a for a, b, _ in spans if b > a and a < run_s), default=math.inf)
    width = min(width, shortest / 2.0)
    return max(width, MIN_REQUESTS_PER_WINDOW * run_s / max(n_requests, 1), run_s / MAX_WINDOWS)


def windowed_mean(arrival_s: Sequence[float], values: Sequence[float], width_s: float,
                  end_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(window centres, mean of ``values`` per window of ``width_s`` over arrival time 0..``end_s``);
    NaN for a window without a finite value."""
    n = max(1, int(math.ceil(end_s / width_s))) if end_s > 0 else 1
    a = np.asarray(arrival_s, dtype=float)
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(a) & np.isfinite(v)
    idx = np.clip((a[ok] / width_s).astype(int), 0, n - 1)
    sums = np.bincount(idx, weights=v[ok], minlength=n)
    counts = np.bincount(idx, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return (np.arange(n) + 0.5) * width_s, means


def _span_rows(spans: Sequence[tuple[float, float, str]]) -> list[str]:
    """Labels of the event strip, in order of first appearance, at most ``MAX_SPAN_ROWS`` (the
    rest share one row, ``other events``)."""
    labels: list[str] = []
    for _, _, label in sorted(spans, key=lambda s: s[0]):
        if label not in labels:
            labels.append(label)
    if len(labels) > MAX_SPAN_ROWS:
        labels = labels[:MAX_SPAN_ROWS - 1] + ["other events"]
    return labels


def _plot_ttft_over_time(path: Path, records: dict[str, list[RequestRecord]], slo: SloConfig,
                         styles: dict[str, dict], spans: Sequence[tuple[float, float, str]] = (),
                         caption: str = "", target: str = TARGET_POLICY) -> FigureText:
    """Mean TTFT per arrival-time window and policy, with the scenario's event spans as a strip
    above (one row per event) and shaded behind the curves: how each policy rides the events."""
    arrivals = [r.arrival_s for recs in records.values() for r in recs if math.isfinite(r.arrival_s)]
    end = max(arrivals, default=0.0)
    n_req = max((len(recs) for recs in records.values()), default=0)
    width = time_windows(end, n_req, spans)
    rows = _span_rows(spans)
    fig = _new_figure(12.0, 6.0 if rows else 5.0)
    if rows:
        strip, ax = fig.subplots(2, 1, sharex=True, height_ratios=(0.6 + 0.25 * len(rows), 4.0))
    else:
        strip, ax = None, fig.add_subplot(1, 1, 1)
    drawn = False
    for name, recs in records.items():
        if not recs:
            continue
        x, y = windowed_mean([r.arrival_s for r in recs], [r.ttft_s for r in recs], width, end)
        if np.isfinite(y).any():
            dots = {"marker": ".", "markersize": 4} if x.size <= MAX_MARKED_WINDOWS else {}
            _draw_line(ax, x, y, name, styles, target, label=_legend_label(name, target), **dots)
            drawn = True
    ax.axhline(slo.ttft_s, color="black", linestyle="--", linewidth=1.0, label=f"TTFT SLO {slo.ttft_s:g} s")
    palette = colormaps["tab10"]
    row_of = {label: i for i, label in enumerate(rows)}
    for a, b, label in spans:
        if b > 0 and a < max(end, 1e-9):
            colour = palette(row_of.get(label, len(rows) - 1) % 10)
            ax.axvspan(max(a, 0.0), b, color=colour, alpha=SPAN_ALPHA, linewidth=0, zorder=0)
    means = [line.get_ydata() for line in ax.get_lines()]
    finite = np.concatenate([np.asarray(y, dtype=float) for y in means] or [np.empty(0)])
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if drawn and finite.size and finite.max() > LOG_AXIS_RANGE * finite.min():
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
        scale = "log scale"
    else:
        ax.set_ylim(bottom=0.0)
        scale = "linear"
    ax.set_xlim(0.0, end if end > 0 else 1.0)
    ax.set_xlabel(f"arrival time (s); mean TTFT over windows of {width:.3g} s")
    ax.set_ylabel(f"mean time to first token (s, {scale})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize="x-small", ncol=2)
    if strip is not None:
        for a, b, label in spans:
            i = row_of.get(label, len(rows) - 1)
            strip.broken_barh([(a, b - a)], (i + 0.1, 0.8), color=palette(i % 10), alpha=0.7)
        strip.set_ylim(len(rows), 0)
        strip.set_yticks(np.arange(len(rows)) + 0.5, [r.replace(" | ", "\n") for r in rows], fontsize="x-small")
        strip.set_title("scenario events active (shaded below in the same colour)", fontsize="small")
        strip.grid(True, axis="x", alpha=0.3)
        title = "TTFT over time per policy, with the scenario's events"
    else:
        title = "TTFT over time per policy (the scenario has no timed events)"
    return _finish(fig, path, FigureText(title, caption))


def scenario_spans(actions: Sequence, end_s: float, events: Sequence[Mapping] | None = None,
                   link_name: Callable[[int], str] | None = None) -> list[tuple[float, float, str]]:
    """Time spans ``(start_s, end_s, label)`` during which each scenario event is active, from the
    expanded actions (``scheduler.scenario.Action``): a flow or burst event's flows from start to
    stop (the union over its flows; a flow that never stops runs to ``end_s``), a link change
    from the change to the return to nominal capacity (or ``end_s``). ``events`` (the scenario's
    validated events) and ``link_name`` make the labels say what the event is. An event with more
    than ``MAX_SPANS_PER_EVENT`` disjoint spans (a fast burst) is given as one envelope span whose
    label says so. Sorted by start, then label."""
    flows: dict[int, list[tuple[float, float]]] = {}
    n_flows: dict[int, set[str]] = {}
    open_flows: dict[str, tuple[int, float]] = {}
    links: dict[tuple[int, ...], list[tuple[float, float, float]]] = {}
    open_links: dict[tuple[int, ...], tuple[float, float]] = {}
    for a in sorted(actions, key=lambda a: a.time_s):
        if a.kind == "flow_start" and a.flow_id:
            event = _event_index(a.flow_id)
            open_flows[a.flow_id] = (event, a.time_s)
            n_flows.setdefault(event, set()).add(a.flow_id.split("#")[0])
        elif a.kind == "flow_stop" and a.flow_id in open_flows:
            event, start = open_flows.pop(a.flow_id)
            flows.setdefault(event, []).append((start, a.time_s))
        elif a.kind == "link_capacity":
            key = tuple(int(x) for x in a.links)
            if key in open_links:
                start, factor = open_links.pop(key)
                links.setdefault(key, []).append((start, a.time_s, factor))
            if a.factor is not None and a.factor != 1.0:
                open_links[key] = (a.time_s, float(a.factor))
    for event, start in open_flows.values():
        flows.setdefault(event, []).append((start, max(end_s, start)))
    for key, (start, factor) in open_links.items():
        links.setdefault(key, []).append((start, max(end_s, start), factor))

    out: list[tuple[float, float, str]] = []
    for event, intervals in flows.items():
        out.extend(_merged(intervals, _flow_label(event, len(n_flows.get(event, ())), events)))
    for key, intervals in links.items():
        by_factor: dict[float, list[tuple[float, float]]] = {}
        for start, stop, factor in intervals:
            by_factor.setdefault(factor, []).append((start, stop))
        for factor, ivs in by_factor.items():
            out.extend(_merged(ivs, _link_label(key, factor, link_name)))
    return sorted(out, key=lambda s: (s[0], s[2]))


def _event_index(flow_id: str) -> int:
    """Event index of a scenario flow id (``e3.7`` or ``e3.7#12`` -> 3; -1 if not of that form)."""
    head = flow_id.split(".", 1)[0]
    return int(head[1:]) if head.startswith("e") and head[1:].isdigit() else -1


def _merged(intervals: list[tuple[float, float]], label: str) -> list[tuple[float, float, str]]:
    """The union of ``intervals`` as labelled spans; more than ``MAX_SPANS_PER_EVENT`` become
    their envelope."""
    merged: list[list[float]] = []
    for start, stop in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    if len(merged) > MAX_SPANS_PER_EVENT:
        return [(merged[0][0], merged[-1][1], f"{label} [{len(merged)} on/off spans, drawn as one]")]
    return [(start, stop, label) for start, stop in merged]


def _flow_label(event: int, n: int, events: Sequence[Mapping] | None) -> str:
    """``e0 burst, 32 greedy flows | p0t1s1 -> p0t1s0``: the event, its flows and where they run."""
    ev = events[event] if events is not None and 0 <= event < len(events) else {}
    rate = ev.get("rate_gbit_s")
    how = f" at {rate:g} Gbit/s" if isinstance(rate, (int, float)) else (" greedy" if ev else "")
    text = f"e{event} {ev.get('kind', 'flow')}, {n} flow{'s' if n != 1 else ''}{how}"
    srcs, dsts = ev.get("src"), ev.get("dst")
    if srcs is not None and dsts is not None:
        text += f" | {_hosts(srcs)} -> {_hosts(dsts)}"
    return text


def _hosts(value: object) -> str:
    """A set of GPU host names, short: one GPU by name, whole servers by server name (``p0t1s0``),
    many by count."""
    names = sorted(set([value] if isinstance(value, str) else [str(v) for v in value]))
    if len(names) == 1:
        return names[0]
    servers = sorted({name.rsplit("g", 1)[0] for name in names})
    if len(servers) <= 3:
        return "+".join(servers)
    return f"{len(names)} GPUs in {len(servers)} servers"


def _link_label(links: tuple[int, ...], factor: float, link_name: Callable[[int], str] | None) -> str:
    """``link p1a0<->p1t1 down`` (both directions of a link shown once), or ``at 25 %``."""
    names = [link_name(i) for i in links] if link_name else [f"{i}" for i in links]
    shown: list[str] = []
    for name in names:
        a, sep, b = name.partition("->")
        if sep and f"{b}->{a}" in names:
            name = "<->".join(sorted((a, b)))
        if name not in shown:
            shown.append(name)
    text = ", ".join(shown[:2]) + (f" +{len(shown) - 2}" if len(shown) > 2 else "")
    return f"link {text} {'down' if factor == 0 else f'at {100 * factor:g} % capacity'}"


# -- link utilisation ----------------------------------------------------------------------------
@dataclass
class LinkSeries:
    """Per-link utilisation (0..1) over time for the heat map: ``utilisation`` is
    ``[len(times_s), len(link_names)]``; ``source`` says where the samples come from."""

    times_s: np.ndarray
    link_names: list[str]
    utilisation: np.ndarray
    source: str = ""

    def binned(self, max_columns: int = MAX_HEATMAP_COLUMNS) -> "LinkSeries":
        """At most ``max_columns`` time columns: consecutive samples averaged in equal groups
        (times averaged too), so a full-trace run stays a readable figure and a small CSV."""
        n = len(self.times_s)
        if n <= max_columns:
            return self
        k = math.ceil(n / max_columns)
        groups = math.ceil(n / k)
        pad = groups * k - n
        times = np.concatenate((np.asarray(self.times_s, dtype=float), np.full(pad, np.nan)))
        util = np.concatenate((np.asarray(self.utilisation, dtype=float),
                               np.full((pad, len(self.link_names)), np.nan)))
        with np.errstate(invalid="ignore"):
            t = np.nanmean(times.reshape(groups, k), axis=1)
            u = np.nanmean(util.reshape(groups, k, -1), axis=1)
        note = f"{self.source}; " if self.source else ""
        return LinkSeries(t, self.link_names, u, f"{note}mean of {k} samples per column")

    def csv_bytes(self) -> bytes:
        """``link_utilisation.csv``: a ``time_s`` column, then one column per link (4 decimals)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["time_s", *self.link_names])
        for t, row in zip(self.times_s, np.asarray(self.utilisation, dtype=float)):
            writer.writerow([f"{t:.6f}", *(_short(v) for v in row)])
        return buf.getvalue().encode()


def _short(value: float) -> str:
    """A utilisation with 4 decimals and no trailing zeros (``0``, ``1``, ``0.9987``)."""
    if math.isnan(value):
        return "nan"
    return f"{value:.4f}".rstrip("0").rstrip(".") or "0"


def heatmap_links(utilisation: np.ndarray) -> np.ndarray:
    """Sorted column indices of ``utilisation`` [time, link] that ``plot_link_heatmap`` shows.

    All links when there are at most ``HEATMAP_MAX_LINKS``; otherwise the links whose peak
    utilisation exceeds ``HEATMAP_MIN_PEAK`` (1 %), at most ``HEATMAP_MAX_LINKS`` of them, busiest
    first. NaN samples are ignored.
    """
    util = np.asarray(utilisation, dtype=float)
    n_links = util.shape[1]
    if n_links <= HEATMAP_MAX_LINKS:
        return np.arange(n_links)
    if util.shape[0] == 0:
        return np.arange(0)
    peak = np.max(np.where(np.isnan(util), -np.inf, util), axis=0)  # -inf: never sampled
    busy = np.flatnonzero(peak > HEATMAP_MIN_PEAK)
    busy = busy[np.argsort(-peak[busy], kind="stable")][:HEATMAP_MAX_LINKS]
    return np.sort(busy)


def plot_link_heatmap(path: Path, times_s: Sequence[float], link_names: list[str], utilisation: np.ndarray,
                      caption: str = "", source: str = "") -> FigureText:
    """Write a heat map of link utilisation (0..1) over time to ``path`` (format from its suffix:
    png, pdf or svg), atomically (a temporary name renamed at the end); returns its title.

    ``utilisation`` has shape ``[len(times_s), len(link_names)]``; NaN cells (no sample) are drawn
    grey. With more than ``HEATMAP_MAX_LINKS`` links only those whose peak exceeds 1 % are shown
    (at most ``HEATMAP_MAX_LINKS``, the busiest), and the title says how many were hidden.
    ``caption`` names the experiment, ``source`` where the samples come from.
    Raises ``ValueError`` on inconsistent shapes or unsorted times.
    """
    util = np.asarray(utilisation, dtype=float)
    times = np.asarray(times_s, dtype=float)
    if util.ndim != 2 or util.shape != (times.size, len(link_names)):
        raise ValueError(f"utilisation shape {util.shape} does not match "
                         f"{times.size} times x {len(link_names)} links")
    if times.size > 1 and np.any(np.diff(times) <= 0):
        raise ValueError("times_s must be strictly increasing")
    keep = heatmap_links(util)
    note = ""
    if keep.size < len(link_names):
        note = f" ({keep.size} of {len(link_names)} links; hidden: peak <= 1 % or not among the busiest)"
    names = [link_names[i] for i in keep]

    fig = _new_figure(11.0, min(3.0 + 0.18 * max(len(names), 1), 14.0))
    ax = fig.add_subplot(1, 1, 1)
    if times.size == 0 or keep.size == 0:
        if times.size == 0:
            message = "no telemetry samples"
        else:
            message = "no link above 1 % utilisation" if link_names else "no links"
        ax.text(0.5, 0.5, message,
                ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    else:
        if times.size > 1:
            mid = (times[1:] + times[:-1]) / 2
            edges = np.concatenate(([times[0] - (mid[0] - times[0])], mid, [times[-1] + (times[-1] - mid[-1])]))
        else:
            edges = np.array([times[0] - 0.5, times[0] + 0.5])
        data = np.ma.masked_invalid(util[:, keep].T * 100.0)
        cmap = _heat_cmap()
        mesh = ax.pcolormesh(edges, np.arange(keep.size + 1), data, cmap=cmap, vmin=0.0, vmax=100.0,
                             shading="flat")
        ax.set_yticks(np.arange(keep.size) + 0.5, names, fontsize="x-small" if keep.size > 20 else "small")
        ax.invert_yaxis()
        cbar = fig.colorbar(mesh, ax=ax, pad=0.01, fraction=0.04, aspect=40)
        cbar.set_label("utilisation (%)")
    ax.set_xlabel("time (s)" + (f"; {source}" if source else ""))
    ax.set_ylabel("directed link (from->to)")
    ax.set_title("links shown" + note if note else "all links", fontsize="small")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        text = _finish(fig, tmp, FigureText("Link utilisation over time", caption))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return text


def _heat_cmap() -> Colormap:
    return colormaps["viridis"].with_extremes(bad="#bbbbbb")


def render_figures(folder: Path, records: dict[str, list[RequestRecord]], slo: SloConfig, summary: Mapping,
                   target: str = TARGET_POLICY, fmt: str = "png",
                   spans: Sequence[tuple[float, float, str]] = (), links: LinkSeries | None = None) -> dict[str, FigureText]:
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
        f"ttft_over_time.{fmt}": _plot_ttft_over_time(folder / f"ttft_over_time.{fmt}", records, slo, styles, spans,
                                                      caption, target),
    }
    if links is not None:
        name = f"{LINK_FIGURE}.{fmt}"
        out[name] = plot_link_heatmap(folder / name, links.times_s, links.link_names, links.utilisation, caption,
                                      links.source)
    return out


# -- result folder -------------------------------------------------------------------------------
def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _reserved_names() -> set[str]:
    """Every file name ``write_results`` may produce (all figure formats)."""
    names = {"summary.json", "requests.csv", LINK_CSV}
    for fmt in FIGURE_FORMATS:
        names.update(figure_names(fmt, links=True))
    return names


def _check_extra_names(extra_files: dict[str, bytes]) -> None:
    reserved = _reserved_names()
    for name in extra_files:
        if not name or name in (".", "..") or "/" in name or os.sep in name or name.startswith("."):
            raise ValueError(f"extra file name {name!r} must be a plain, non-hidden file name")
        if name in reserved:
            raise ValueError(f"extra file name {name!r} collides with a standard result file")


def write_results(out_dir: Path, summary: dict, records: dict[str, list[RequestRecord]], slo: SloConfig,
                  extra_files: dict[str, bytes] | None = None, target: str = TARGET_POLICY, fmt: str = "png",
                  spans: Sequence[tuple[float, float, str]] = (), links: LinkSeries | None = None) -> Path:
    """Write a complete result folder at ``out_dir`` and return it.

    Contents: ``summary.json`` (``summary`` as strict JSON, NaN -> null), ``requests.csv`` (one
    row per record, policies in ``records`` order, columns ``RequestRecord.columns()``), the
    figures of :func:`render_figures` in ``fmt`` (``ttft_cdf``, ``ttft_bars``, ``slo_attainment``,
    ``transfer_by_tier``, ``ttft_over_time`` with the scenario event ``spans`` (start_s, end_s,
    label), and with ``links`` ``link_utilisation`` plus its data ``link_utilisation.csv``, at most
    ``MAX_HEATMAP_COLUMNS`` time columns) and every ``extra_files`` entry (name -> bytes).

    Atomic: files go to a hidden temporary sibling that is renamed to ``out_dir`` at the end and
    removed on any exception (including ``KeyboardInterrupt``). Raises ``ResultsExistError`` if
    ``out_dir`` exists and is not empty (an empty folder is replaced), ``ValueError`` for a
    record whose ``policy`` differs from its key, a bad extra file name or an unknown ``fmt``.
    """
    out_dir = Path(out_dir)
    check_format(fmt)
    extra_files = dict(extra_files or {})
    _check_extra_names(extra_files)
    for name, recs in records.items():
        for r in recs:
            if r.policy != name:
                raise ValueError(f"record {r.req_id} has policy {r.policy!r} but is listed under {name!r}")
    with _atomic_folder(out_dir) as tmp:
        (tmp / "summary.json").write_text(dumps_json(summary))
        _write_csv(tmp / "requests.csv", records)
        if links is not None:
            links = links.binned()
            (tmp / LINK_CSV).write_bytes(links.csv_bytes())
        render_figures(tmp, records, slo, summary, target, fmt, spans, links)
        for name, data in extra_files.items():
            (tmp / name).write_bytes(data)
    return out_dir


@contextlib.contextmanager
def _atomic_folder(out_dir: Path):
    """Yield a hidden temporary sibling of ``out_dir`` to fill; renamed onto ``out_dir`` when the
    block ends, removed on any exception (Ctrl-C included). Raises ``ResultsExistError`` if
    ``out_dir`` exists and is not an empty folder, before and after the block."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ResultsExistError(f"{out_dir} exists and is not a folder")
    if _is_nonempty_dir(out_dir):
        raise ResultsExistError(f"result folder {out_dir} already exists and is not empty; "
                                "choose another folder or remove it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        if out_dir.is_dir():
            try:
                out_dir.rmdir()  # only succeeds while still empty
            except OSError as e:
                raise ResultsExistError(f"result folder {out_dir} was filled while writing results") from e
        try:
            os.rename(tmp, out_dir)
        except OSError as e:
            raise ResultsExistError(f"could not move results into {out_dir}: {e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_files(out_dir: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` (name -> bytes) as a new result folder ``out_dir``, atomically: into a hidden
    sibling renamed onto ``out_dir`` at the end, removed on any exception or Ctrl-C. Raises
    ``ResultsExistError`` if ``out_dir`` exists and is not empty."""
    out_dir = Path(out_dir)
    for name in files:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"file name {name!r} must be a plain, non-hidden file name")
    with _atomic_folder(out_dir) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    return out_dir


# -- text table ----------------------------------------------------------------------------------
def _f(value: object, fmt: str, scale: float = 1.0) -> str:
    if value is None:
        return "-"
    v = float(value) * scale
    return format(v, fmt) if math.isfinite(v) else "-"


def _signed(value: float, fmt: str, unit: str) -> str:
    return f"{value:+{fmt}}{unit}" if math.isfinite(value) else "n/a"


def format_table(summary: dict, target: str = TARGET_POLICY) -> str:
    """Plain-text comparison of the policies in ``summary`` (96 columns for 11-character policy names).

    ``summary`` is ``{"backend": ..., "config": {...}, "policies": {name: summarize_policy(...)}}``.
    One row per policy, then one line per baseline:
    ``netkv vs <baseline>: mean TTFT -12.3%, p99 TTFT -8.0%, SLO attainment +4.1 pp, mean TBT +0.02 ms``.
    """
    policies: dict[str, dict] = summary.get("policies", {})
    group = ["", "", "TTFT", "TTFT", "TTFT", "TTFT", "SLO", "TBT", "KV xfer", "transfers", "sched"]
    header = ["policy", "reqs", "mean s", "p50 s", "p90 s", "p99 s", "met %", "mean ms", "mean ms",
              "tier 0/1/2/3", "p99 us"]
    rows = []
    for name, s in policies.items():
        hist = s.get("tier_histogram") or []
        rows.append([
            name,
            str(s.get("requests", "-")),
            _f(s.get("ttft_mean_s"), ".3f"),
            _f(s.get("ttft_p50_s"), ".3f"),
            _f(s.get("ttft_p90_s"), ".3f"),
            _f(s.get("ttft_p99_s"), ".3f"),
            _f(s.get("slo_attainment"), ".1f", 100.0),
            _f(s.get("tbt_mean_ms"), ".2f"),
            _f(s.get("transfer_mean_s"), ".1f", 1000.0),
            "/".join(str(int(c)) for c in hist) if hist else "-",
            _f(s.get("decision_us_p99"), ".1f"),
        ])
    widths = [max(len(r[i]) for r in [group, header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    out = []
    title = f"backend: {summary.get('backend', '?')}"
    first = next(iter(policies.values()), {})
    if first.get("slo_ttft_s") is not None and first.get("slo_tbt_ms") is not None:
        title += f"   SLO: TTFT <= {first['slo_ttft_s']:g} s and mean TBT <= {first['slo_tbt_ms']:g} ms"
    out.append(title)
    out.append(line(group))
    out.append(line(header))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in rows)
    if not policies:
        out.append("(no policies)")
    comparison = compare(policies, target)
    if comparison:
        out.append("")
        for base, c in comparison.items():
            head = f"{target} vs {base}: "
            ttft = (f"mean TTFT {_signed(c['ttft_mean_pct'], '.1f', '%')}, "
                    f"p99 TTFT {_signed(c['ttft_p99_pct'], '.1f', '%')}, ")
            rest = (f"SLO attainment {_signed(c['slo_attainment_pp'], '.1f', ' pp')}, "
                    f"mean TBT {_signed(c['tbt_mean_delta_ms'], '.2f', ' ms')}")
            if len(head) + len(ttft) + len(rest) <= TABLE_WIDTH:
                out.append(head + ttft + rest)
            else:  # long policy names: continue on an indented second line
                out.append(head + ttft.rstrip())
                out.append("    " + rest)
    elif len(policies) > 1:
        out.append("")
        out.append(f"(no {target!r} policy: no comparison lines)")
    abl = summary.get("ablation") or ablation(policies)
    if abl and abl.get("vs"):
        out.append("")
        parts = [f"{_signed(v['ttft_mean_pct'], '.1f', '%')} vs {name}" for name, v in abl["vs"].items()]
        out.append(f"ablation, {abl.get('target', 'netkv')} (live telemetry) mean TTFT: " + ", ".join(parts))
        cap = abl.get("captured", float("nan"))
        if cap is not None and math.isfinite(cap):
            out.append(f"  live telemetry realises {100 * cap:.0f}% of perfect information's gain over the static oracle")
        elif "netkv:static" in abl["vs"] and "netkv:perfect" in abl["vs"]:
            out.append("  perfect information gains nothing over the static oracle here: the network term has nothing to buy")
    fails = {n: s["failure"] for n, s in policies.items() if (s.get("failure") or {}).get("transfers")}
    if fails:
        out.append("")
        out.append("transfers that met a failed link (count, share, mean / max time stood still): " + "; ".join(
            f"{n} {f['transfers']} ({100 * f['fraction']:.1f}%) {_f(f['stalled_mean_s'], '.2f')} / "
            f"{_f(f['stalled_max_s'], '.2f')} s" for n, f in fails.items()))
    return "\n".join(out) + "\n"
