"""The plain-text comparison tables ``netkv simulate`` (and ``emulate``) prints: the policies on the
run's scenario and, when the run has one, on its control scenario beside it."""
from __future__ import annotations

import math
from typing import SupportsFloat

from scheduler.results.metrics import ablation, compare
from scheduler.results.plotting import TARGET_POLICY

#: Terminal width ``format_table`` aims for.
TABLE_WIDTH = 100


def fmt_number(value: SupportsFloat | str | None, fmt: str, scale: float = 1.0) -> str:
    """``value`` x ``scale`` in ``fmt``; ``-`` for None, NaN and infinities (a table cell)."""
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
            fmt_number(s.get("ttft_mean_s"), ".3f"),
            fmt_number(s.get("ttft_p50_s"), ".3f"),
            fmt_number(s.get("ttft_p90_s"), ".3f"),
            fmt_number(s.get("ttft_p99_s"), ".3f"),
            fmt_number(s.get("slo_attainment"), ".1f", 100.0),
            fmt_number(s.get("tbt_mean_ms"), ".2f"),
            fmt_number(s.get("transfer_mean_s"), ".1f", 1000.0),
            "/".join(str(int(c)) for c in hist) if hist else "-",
            fmt_number(s.get("decision_us_p99"), ".1f"),
        ])
    widths = [max(len(r[i]) for r in [group, header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    out = []
    title = f"backend: {summary.get('backend', '?')}"
    scenario = (summary.get("config") or {}).get("scenario") or {}
    if scenario.get("name"):
        title += f"   scenario: {scenario['name']}"
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
            out.append(f"  live telemetry realises {100 * cap:.0f}% of perfect information's gain "
                       "over the static oracle")
        elif "netkv:static" in abl["vs"] and "netkv:perfect" in abl["vs"]:
            out.append("  perfect information gains nothing over the static oracle here: "
                       "the network term has nothing to buy")
    fails = {n: s["failure"] for n, s in policies.items() if (s.get("failure") or {}).get("transfers")}
    if fails:
        out.append("")
        out.append("transfers that met a failed link (count, share, mean / max time stood still): " + "; ".join(
            f"{n} {f['transfers']} ({100 * f['fraction']:.1f}%) {fmt_number(f['stalled_mean_s'], '.2f')} / "
            f"{fmt_number(f['stalled_max_s'], '.2f')} s" for n, f in fails.items()))
    return "\n".join(out) + "\n"


def format_control(summary: dict, target: str = TARGET_POLICY) -> str:
    """The ``control`` section of ``summary`` as text: its table (:func:`format_table`, on the control
    scenario), then ``target``'s change against every baseline on the run's scenario beside the same
    on the control, mean and p99 TTFT; "" without a control section.

    The side-by-side lines are what the main job shows a newcomer: where the scenario's network
    state gives network awareness something to buy, and the quiet fabric where it buys nothing.
    """
    control = summary.get("control")
    if not control:
        return ""
    name = (summary.get("config") or {}).get("scenario", {}).get("name", "scenario")
    cname = control["scenario"]["name"]
    out = [f"control: the same requests and policies on scenario '{cname}' "
           f"({control['scenario'].get('description', '')})", ""]
    out.append(format_table({"backend": summary.get("backend", "?"), "config": {"scenario": {"name": cname}},
                             "policies": control["policies"], "ablation": control.get("ablation")}, target))
    main, ctrl = summary.get("comparison") or compare(summary.get("policies", {}), target), control["comparison"]
    bases = [b for b in main if b in ctrl]
    if not bases:
        return "\n".join(out)

    def cell(c: dict) -> str:
        return f"{_signed(c['ttft_mean_pct'], '.1f', '%')} / {_signed(c['ttft_p99_pct'], '.1f', '%')}"

    head = [f"{target} vs", name, f"{cname} (control)"]
    rows = [[b, cell(main[b]), cell(ctrl[b])] for b in bases]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    out.append(f"{target}'s change in mean / p99 TTFT, on '{name}' and on the control '{cname}':")
    for r in [head, *rows]:
        out.append("  ".join([r[0].ljust(widths[0]), r[1].rjust(widths[1]), r[2].rjust(widths[2])]).rstrip())
    return "\n".join(out) + "\n"
