"""``ttft_over_time``: mean TTFT per arrival-time window and policy, under the scenario's events.

:func:`scenario_spans` turns a scenario's expanded actions into the spans (start, end, label)
during which each event is active: drawn as a strip above the curves and shaded behind them, and
stored in ``summary.json`` (``scenario_spans``) so ``netkv plot`` redraws the figure.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps

from scheduler.model.records import RequestRecord
from scheduler.results.metrics import SloConfig
from scheduler.results.plotting import (
    TARGET_POLICY,
    FigureText,
    draw_line,
    finish_figure,
    legend_label,
    log_axis,
    new_figure,
)

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
    n = max(1, math.ceil(end_s / width_s)) if end_s > 0 else 1
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


def plot_ttft_over_time(path: Path, records: dict[str, list[RequestRecord]], slo: SloConfig,
                         styles: dict[str, dict], spans: Sequence[tuple[float, float, str]] = (),
                         caption: str = "", target: str = TARGET_POLICY) -> FigureText:
    """Mean TTFT per arrival-time window and policy, with the scenario's event spans as a strip
    above (one row per event) and shaded behind the curves: how each policy rides the events."""
    arrivals = [r.arrival_s for recs in records.values() for r in recs if math.isfinite(r.arrival_s)]
    end = max(arrivals, default=0.0)
    n_req = max((len(recs) for recs in records.values()), default=0)
    width = time_windows(end, n_req, spans)
    rows = _span_rows(spans)
    fig = new_figure(12.0, 6.0 if rows else 5.0)
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
            dots: dict[str, Any] = {"marker": ".", "markersize": 4} if x.size <= MAX_MARKED_WINDOWS else {}
            draw_line(ax, x, y, name, styles, target, label=legend_label(name, target), **dots)
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
        log_axis(ax.yaxis)
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
    return finish_figure(fig, path, FigureText(title, caption))


def scenario_spans(actions: Sequence, end_s: float, events: Sequence[Mapping] | None = None,
                   link_name: Callable[[int], str] | None = None) -> list[tuple[float, float, str]]:
    """Time spans ``(start_s, end_s, label)`` during which each scenario event is active, from the
    expanded actions (``scheduler.model.scenario.Action``): a flow or burst event's flows from start to
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
    for key, link_intervals in links.items():
        by_factor: dict[float, list[tuple[float, float]]] = {}
        for start, stop, factor in link_intervals:
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


def _hosts(value: str | Iterable[object]) -> str:
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
