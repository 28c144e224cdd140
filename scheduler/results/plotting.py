"""Shared figure machinery: what a figure is called and says, how policies are told apart, how
it is saved.

Every figure names the experiment it shows (scenario, trace, model, NIC, placement, oracle, seed:
:func:`experiment_caption`) under its title and in the file's metadata. Plots use matplotlib's Agg
canvas directly (no pyplot, no global backend switch), so importing this module has no side
effect on other matplotlib users. The figures themselves are in :mod:`scheduler.results.figures`,
:mod:`scheduler.results.timeline` and :mod:`scheduler.results.heatmap`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from scheduler.policies import TARGET

#: Policy drawn in the highlight colour in every plot and compared against in the table.
TARGET_POLICY = TARGET
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
#: Figure file formats (``--format``).
FIGURE_FORMATS = ("png", "pdf", "svg")
#: Figures every result folder has (file name without the format suffix).
FIGURES = ("ttft_cdf", "ttft_bars", "slo_attainment", "transfer_by_tier", "ttft_over_time")
#: The per-link utilisation heat map and its data, written when a run recorded link samples.
LINK_FIGURE = "link_utilisation"
#: Characters of the caption line per inch of figure width (small font) before it wraps.
CAPTION_CHARS_PER_INCH = 13
#: Resolution of every saved figure (dots per inch): a 13-inch figure is a 1560-pixel PNG.
_DPI = 120


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
        params = _config(summary, "scenario", "params")
        extra = (f" ({', '.join(f'{k}={_num_text(v)}' for k, v in params.items())})"
                 if isinstance(params, Mapping) and params else "")
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
    fields: tuple[tuple[tuple[str, ...], str], ...] = (
        (("cluster", "placement"), "placement"), (("oracle", "kind"), "oracle"), (("seed",), "seed"))
    for keys, label in fields:
        value = _config(summary, *keys)
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


def draw_line(ax, x, y, name: str, styles: dict[str, dict], target: str, step: bool = False, **kw) -> None:
    """One policy's line in its style; the target also gets its translucent band underneath."""
    draw = (lambda *a, **k: ax.step(*a, where="post", **k)) if step else ax.plot
    style = {**styles[name], **kw}
    if name == target:
        band = {k: v for k, v in style.items() if k not in ("label", "marker", "markersize")}
        band.update(linewidth=TARGET_BAND_WIDTH, alpha=TARGET_BAND_ALPHA, zorder=2, solid_capstyle="butt")
        draw(x, y, **band)
    draw(x, y, **style)


def legend_label(name: str, target: str, n: int | None = None) -> str:
    """A policy's legend entry: its name, ``(target)`` for the target, ``(n=...)`` if ``n`` is given."""
    return name + (" (target)" if name == target else "") + (f" (n={n})" if n is not None else "")


# -- figures -------------------------------------------------------------------------------------
def new_figure(width: float, height: float) -> Figure:
    """A ``width`` x ``height``-inch figure with its own Agg canvas (no pyplot state)."""
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def finish_figure(fig: Figure, path: Path, text: FigureText) -> FigureText:
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


def log_axis(axis) -> None:
    """Plain-number labels on a log axis: every major tick, and the 2x and 5x minor ticks."""
    axis.set_major_formatter(FuncFormatter(_log_tick_label))
    axis.set_minor_formatter(FuncFormatter(_log_minor_tick_label))
