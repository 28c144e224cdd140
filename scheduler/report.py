"""Result folders (summary.json, requests.csv, PNG plots) and the plain-text comparison table.

``write_results`` is atomic: everything is written into a hidden sibling folder which is renamed
onto ``out_dir`` only after the last file is complete, so an exception or Ctrl-C never leaves a
partial result folder behind. Plots use matplotlib's Agg canvas directly (no pyplot, no global
backend switch), so importing this module has no side effect on other matplotlib users.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from scheduler.metrics import N_TIERS, SloConfig, ablation, compare, slo_attainment_curve, summarize_policy
from scheduler.records import RequestRecord

#: Policy drawn in the highlight colour in every plot and compared against in the table.
TARGET_POLICY = "netkv"
TARGET_COLOUR = "#d62728"  # red, reserved for the target policy
#: Colours of the other policies, assigned in order of appearance (never the target's red).
BASELINE_COLOURS = ("#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f",
                    "#bcbd22", "#e377c2")
TIER_LABELS = ("0 same server", "1 same rack", "2 same pod", "3 cross-pod")
#: SLO scales of ``slo_attainment.png`` (0.25x .. 4x in quarter-octave steps).
SLO_SCALES = tuple(float(x) for x in np.geomspace(0.25, 4.0, 17))
#: Files ``write_results`` always produces.
RESULT_FILES = ("summary.json", "requests.csv", "ttft_cdf.png", "ttft_bars.png", "slo_attainment.png",
                "transfer_by_tier.png")
#: Heat map: above this many links, only links whose peak utilisation exceeds 1 % are shown,
#: and at most this many of them (the busiest).
HEATMAP_MAX_LINKS = 48
HEATMAP_MIN_PEAK = 0.01

# Decimal places per requests.csv column (floats only); other float columns use 6 (microseconds).
_CSV_DECIMALS = {"tbt_mean_ms": 4, "decision_us": 2}
_DPI = 120
#: Terminal width ``format_table`` aims for.
TABLE_WIDTH = 100


class ResultsExistError(FileExistsError):
    """The result folder already exists and is not empty; results are never overwritten."""


# -- colours -------------------------------------------------------------------------------------
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


def _style(name: str, target: str = TARGET_POLICY) -> dict:
    """Line/bar emphasis: the target policy drawn thicker and on top."""
    return {"linewidth": 2.6, "zorder": 3} if name == target else {"linewidth": 1.4, "zorder": 2}


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


# -- plots ---------------------------------------------------------------------------------------
def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, format="png", dpi=_DPI)


def _log_tick_label(value: float, _pos: int) -> str:
    return f"{value:g}"


def _log_minor_tick_label(value: float, _pos: int) -> str:
    """Label only the 2x and 5x minor ticks of a log axis, as plain numbers."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value))
    return f"{value:g}" if round(mantissa) in (2, 5) and abs(mantissa - round(mantissa)) < 1e-6 else ""


def _plot_ttft_cdf(path: Path, records: dict[str, list[RequestRecord]], slo: SloConfig,
                   colours: dict[str, str], target: str = TARGET_POLICY) -> None:
    fig = _new_figure(7.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    drawn = False
    for name, recs in records.items():
        ttft = np.sort([r.ttft_s for r in recs if math.isfinite(r.ttft_s) and r.ttft_s > 0])
        if ttft.size == 0:
            continue
        y = np.arange(1, ttft.size + 1) / len(recs)  # unfinished requests keep the CDF below 1
        ax.step(ttft, y, where="post", color=colours[name], label=f"{name} (n={len(recs)})", **_style(name, target))
        drawn = True
    ax.axvline(slo.ttft_s, color="black", linestyle="--", linewidth=1.0, label=f"TTFT SLO {slo.ttft_s:g} s")
    if drawn:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_log_tick_label))
        ax.xaxis.set_minor_formatter(FuncFormatter(_log_minor_tick_label))
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("time to first token (s, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("TTFT distribution per policy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    _save(fig, path)


def _plot_ttft_bars(path: Path, summaries: dict[str, dict], colours: dict[str, str],
                    target: str = TARGET_POLICY) -> None:
    fig = _new_figure(max(6.0, 2.0 + 1.1 * len(summaries)), 4.5)
    ax = fig.add_subplot(1, 1, 1)
    metrics = (("ttft_mean_s", "mean"), ("ttft_p99_s", "p99"))
    n = max(len(summaries), 1)
    width = 0.8 / n
    x = np.arange(len(metrics))
    for i, (name, s) in enumerate(summaries.items()):
        values = [s[key] for key, _ in metrics]
        heights = [v if math.isfinite(v) else 0.0 for v in values]
        bars = ax.bar(x - 0.4 + width * (i + 0.5), heights, width, color=colours[name], label=name,
                      edgecolor="black" if name == target else None)
        ax.bar_label(bars, labels=[f"{v:.3g}" if math.isfinite(v) else "n/a" for v in values],
                     fontsize="x-small", padding=2)
    ax.set_xticks(x, [label for _, label in metrics])
    ax.set_xlabel("statistic over requests")
    ax.set_ylabel("time to first token (s)")
    ax.set_title("Mean and p99 TTFT per policy")
    ax.margins(y=0.12)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, path)


SLO_PANELS = (("fixed", "TTFT {ttft:g} s and mean TBT {tbt:g} ms"), ("ttft-only", "TTFT {ttft:g} s alone"),
              ("per-request", "TTFT {fixed:g} s + {per:g} ms/token, TBT {tbt:g} ms"))
"""Panels of ``slo_attainment.png``: one per SLO definition, each with what 1x means."""


def _plot_slo_attainment(path: Path, records: dict[str, list[RequestRecord]], slo: SloConfig,
                         colours: dict[str, str], target: str = TARGET_POLICY) -> None:
    """Attainment against SLO strictness, one panel per SLO definition; the y-axis spans the data
    (differences live near the top), the default definition's panel is marked."""
    fig = _new_figure(15.0, 4.6)
    axes = fig.subplots(1, len(SLO_PANELS), sharey=False)
    for ax, (definition, what) in zip(axes, SLO_PANELS):
        lo = 100.0
        for name, recs in records.items():
            curve = np.array(slo_attainment_curve(recs, slo, SLO_SCALES, definition), dtype=float) * 100.0
            if np.isfinite(curve).any():
                lo = min(lo, float(np.nanmin(curve)))
            ax.plot(SLO_SCALES, curve, marker="o", markersize=3, color=colours[name], label=name, **_style(name, target))
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
    fig.suptitle("SLO attainment vs SLO strictness, per SLO definition")
    fig.tight_layout()
    _save(fig, path)


def _plot_transfer_by_tier(path: Path, summaries: dict[str, dict], colours: dict[str, str]) -> None:
    fig = _new_figure(8.0, 6.5)
    ax_t, ax_n = fig.subplots(2, 1, sharex=True)
    n = max(len(summaries), 1)
    width = 0.8 / n
    x = np.arange(N_TIERS)
    for i, (name, s) in enumerate(summaries.items()):
        offset = x - 0.4 + width * (i + 0.5)
        means_ms = [float("nan") if v is None else 1000.0 * v for v in s["transfer_mean_s_by_tier"]]
        bars = ax_t.bar(offset, [v if math.isfinite(v) else 0.0 for v in means_ms], width,
                        color=colours[name], label=name)
        ax_t.bar_label(bars, labels=[f"{v:.3g}" if math.isfinite(v) else "" for v in means_ms],
                       fontsize="xx-small", padding=1)
        counts = s["tier_histogram"]
        bars = ax_n.bar(offset, counts, width, color=colours[name], label=name)
        ax_n.bar_label(bars, labels=[str(c) for c in counts], fontsize="xx-small", padding=1)
    ax_t.set_ylabel("mean KV transfer time (ms)")
    ax_t.set_title("KV transfers per network tier")
    ax_t.margins(y=0.15)
    ax_t.grid(True, axis="y", alpha=0.3)
    ax_t.legend(fontsize="small")
    ax_n.set_ylabel("number of transfers")
    ax_n.set_xlabel("tier between prefill and decode instance")
    ax_n.set_xticks(x, TIER_LABELS)
    ax_n.margins(y=0.15)
    ax_n.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


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


def plot_link_heatmap(path: Path, times_s: list[float], link_names: list[str], utilisation: np.ndarray) -> None:
    """Write a PNG heat map of link utilisation (0..1) over time to ``path``.

    ``utilisation`` has shape ``[len(times_s), len(link_names)]``; NaN cells (no sample) are drawn
    grey. With more than ``HEATMAP_MAX_LINKS`` links only those whose peak exceeds 1 % are shown
    (at most ``HEATMAP_MAX_LINKS``, the busiest), and the title says how many were hidden.
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

    fig = _new_figure(10.0, min(2.5 + 0.18 * max(len(names), 1), 14.0))
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
        cbar = fig.colorbar(mesh, ax=ax, pad=0.01)
        cbar.set_label("utilisation (%)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("directed link (from->to)")
    ax.set_title("Link utilisation over time" + note, fontsize="medium")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=_DPI)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _heat_cmap() -> Colormap:
    return colormaps["viridis"].with_extremes(bad="#bbbbbb")


# -- result folder -------------------------------------------------------------------------------
def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _check_extra_names(extra_files: dict[str, bytes]) -> None:
    for name in extra_files:
        if not name or name in (".", "..") or "/" in name or os.sep in name or name.startswith("."):
            raise ValueError(f"extra file name {name!r} must be a plain, non-hidden file name")
        if name in RESULT_FILES:
            raise ValueError(f"extra file name {name!r} collides with a standard result file")


def write_results(out_dir: Path, summary: dict, records: dict[str, list[RequestRecord]], slo: SloConfig,
                  extra_files: dict[str, bytes] | None = None, target: str = TARGET_POLICY) -> Path:
    """Write a complete result folder at ``out_dir`` and return it.

    Contents: ``summary.json`` (``summary`` as strict JSON, NaN -> null), ``requests.csv`` (one
    row per record, policies in ``records`` order, columns ``RequestRecord.columns()``),
    ``ttft_cdf.png``, ``ttft_bars.png``, ``slo_attainment.png``, ``transfer_by_tier.png`` and
    every ``extra_files`` entry (name -> bytes). Plots are computed from ``records`` and ``slo``.

    Atomic: files go to a hidden temporary sibling that is renamed to ``out_dir`` at the end and
    removed on any exception (including ``KeyboardInterrupt``). Raises ``ResultsExistError`` if
    ``out_dir`` exists and is not empty (an empty folder is replaced), ``ValueError`` for a
    record whose ``policy`` differs from its key or a bad extra file name.
    """
    out_dir = Path(out_dir)
    extra_files = dict(extra_files or {})
    _check_extra_names(extra_files)
    for name, recs in records.items():
        for r in recs:
            if r.policy != name:
                raise ValueError(f"record {r.req_id} has policy {r.policy!r} but is listed under {name!r}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ResultsExistError(f"{out_dir} exists and is not a folder")
    if _is_nonempty_dir(out_dir):
        raise ResultsExistError(f"result folder {out_dir} already exists and is not empty; "
                                "choose another folder or remove it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        (tmp / "summary.json").write_text(dumps_json(summary))
        _write_csv(tmp / "requests.csv", records)
        colours = policy_colours(list(records), target)
        summaries = {name: summarize_policy(recs, slo) for name, recs in records.items()}
        _plot_ttft_cdf(tmp / "ttft_cdf.png", records, slo, colours, target)
        _plot_ttft_bars(tmp / "ttft_bars.png", summaries, colours, target)
        _plot_slo_attainment(tmp / "slo_attainment.png", records, slo, colours, target)
        _plot_transfer_by_tier(tmp / "transfer_by_tier.png", summaries, colours)
        for name, data in extra_files.items():
            (tmp / name).write_bytes(data)
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
    return out_dir


def write_files(out_dir: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` (name -> bytes) as a new result folder ``out_dir``, atomically: into a hidden
    sibling renamed onto ``out_dir`` at the end, removed on any exception or Ctrl-C. Raises
    ``ResultsExistError`` if ``out_dir`` exists and is not empty."""
    out_dir = Path(out_dir)
    for name in files:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"file name {name!r} must be a plain, non-hidden file name")
    if out_dir.exists() and not out_dir.is_dir():
        raise ResultsExistError(f"{out_dir} exists and is not a folder")
    if _is_nonempty_dir(out_dir):
        raise ResultsExistError(f"result folder {out_dir} already exists and is not empty; "
                                "choose another folder or remove it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        os.chmod(tmp, 0o755)
        if out_dir.is_dir():
            out_dir.rmdir()
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
