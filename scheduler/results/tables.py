"""The plain-text comparison table ``netkv simulate`` (and ``emulate``) prints."""
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
