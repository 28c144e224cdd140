"""Telemetry staleness study: how old may the oracle's snapshot be before NetKV stops gaining?

One use of the sweep engine (:mod:`scheduler.study.sweep`) over ``oracle.staleness_s``: at every value
the studied policy (netkv on live telemetry, or netkv:inflight) replays the same window with its
oracle answering from the snapshot of ``now - staleness``, while a shadow oracle on fresh
telemetry records whether each stale decision picked the same tier (Claim 3: tier rankings
survive staleness) and the same instance (rankings within a tier may not), and Kendall's tau of
the two cost orderings (across and within tiers). Two references run at
every point: ``netkv:perfect`` (the regret: extra mean TTFT against perfect information) and
``cache-load`` (network-blind: what is left of the gain).
"""
from __future__ import annotations

import io
import math
from pathlib import Path

from scheduler.policies import resolve
from scheduler.study import sweep as sw

REFERENCES = ("netkv:perfect", "cache-load")
PARAM = "oracle.staleness_s"


class StalenessError(ValueError):
    """The staleness study was asked for something it cannot study; the message names the option."""


def studied_policy(policies: str) -> str:
    """The one policy of ``--policies`` the study varies: it must read live telemetry."""
    specs = resolve(policies)
    if len(specs) != 1 or not specs[0].cls.needs_oracle or specs[0].oracle not in (None, "telemetry", "inflight"):
        raise StalenessError(f"--policies {policies!r}: the staleness study varies one policy that reads telemetry "
                             f"(netkv or netkv:inflight); {', '.join(REFERENCES)} run beside it as references")
    return specs[0].name


def run_staleness(base: sw.Base, values: list[float], seeds: list[int], out: Path, jobs: int | None = None,
                  progress: bool = True, log=print, command: str = "netkv staleness",
                  provenance: dict | None = None, executor: str = "local") -> tuple[Path, str]:
    from scheduler.results.files import dumps_json, write_files
    from scheduler.study.sweep_plot import plot

    if not values or any(not isinstance(v, float) or v < 0 for v in values):
        raise StalenessError(f"--values {values!r}: expected non-negative seconds, e.g. 0,1,5")
    target = studied_policy(base.policies)
    sweep = sw.Sweep(PARAM, values, seeds, sw.Base(**{**base.__dict__, "policies": ",".join((target, *REFERENCES))}),
                     shadow=True)
    sw.validate(sweep)
    results = sw.run(sweep, jobs, progress=progress, log=log, executor=executor)
    table = sw.rows(sweep, results)
    agg = sw.aggregate(sweep, table, target)
    text = _table(agg, target, base.scenario)
    summary = {"kind": "staleness", "backend": "simulate", "provenance": provenance, "command": command,
               "param": PARAM, "policy": target,
               "values": values, "seeds": seeds, "base": base.__dict__, "aggregate": agg,
               "points": [{"value": v, "seed": s, "policies": results[(v, s)]} for v in values for s in seeds]}
    files = {"summary.json": dumps_json(summary).encode(), "sweep.csv": sw.csv_bytes(table),
             "staleness.txt": (text + "\n").encode(), "staleness.png": _plot(values, agg, target, command),
             "sweep.png": plot(sweep, agg, command, target)}
    return write_files(out, files), text


def _fmt(pair: tuple[float, float], fmt: str, scale: float = 1.0) -> str:
    mean, hw = pair
    if not math.isfinite(mean):
        return "-"
    return format(mean * scale, fmt) + (f" +-{hw * scale:{fmt.lstrip('+')}}" if math.isfinite(hw) else "")


def _table(agg: dict, target: str, scenario: str) -> str:
    pol = agg["policies"]
    buf = io.StringIO()
    print(f"scenario '{scenario}': {target} with its telemetry {PARAM} old; references {', '.join(REFERENCES)}",
          file=buf)
    print(f"{'staleness s':>12} {'mean TTFT s':>16} {'vs cache-load':>16} {'regret ms':>14} {'same tier':>14} "
          f"{'same inst.':>14} {'tau':>12} {'tau in tier':>12}", file=buf)
    for i, v in enumerate(agg["values"]):
        vs = agg["vs"].get("cache-load", {}).get("ttft_mean_pct", [(math.nan, math.nan)] * len(agg["values"]))[i]
        print(f"{v:>12g} {_fmt(pol[target]['ttft_mean_s'][i], '.3f'):>16} {_fmt(vs, '+.1f') + '%':>16} "
              f"{_fmt(pol[target]['regret_ms'][i], '.1f'):>14} "
              f"{_fmt(pol[target]['same_tier_fraction'][i], '.1f', 100) + '%':>14} "
              f"{_fmt(pol[target]['same_instance_fraction'][i], '.1f', 100) + '%':>14} "
              f"{_fmt(pol[target]['kendall_tau'][i], '.2f'):>12} "
              f"{_fmt(pol[target]['kendall_tau_within_tier'][i], '.2f'):>12}", file=buf)
    return buf.getvalue().rstrip()


def _plot(values: list[float], agg: dict, target: str, command: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from scheduler.study.sweep_plot import errorbar_series

    fig = Figure(figsize=(13, 3.8), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    xs = [max(v, 0.05) for v in values]
    pol = agg["policies"]

    def line(ax, series, label, scale=1.0, **kw):
        errorbar_series(ax, xs, series, scale, label=label, marker="o", capsize=3, **kw)

    line(ax1, pol[target]["ttft_mean_s"], target, color="#d62728")
    line(ax1, pol["netkv:perfect"]["ttft_mean_s"], "netkv:perfect", color="#17becf", linestyle=":")
    line(ax1, pol["cache-load"]["ttft_mean_s"], "cache-load (network-blind)", color="#555555", linestyle="--")
    ax1.set_ylabel("mean TTFT (s)")
    ax1.set_title("TTFT vs staleness")
    line(ax2, pol[target]["same_tier_fraction"], "same tier as fresh", 100.0)
    line(ax2, pol[target]["same_instance_fraction"], "same instance as fresh", 100.0, linestyle="--")
    line(ax2, pol[target]["kendall_tau"], "Kendall tau of costs (x100)", 100.0, linestyle=":")
    line(ax2, pol[target]["kendall_tau_within_tier"], "tau within tiers (x100)", 100.0, linestyle="-.")
    ax2.set_ylim(-5, 105)
    ax2.set_ylabel("% of decisions; tau x 100")
    ax2.set_title("agreement with fresh telemetry")
    line(ax3, pol[target]["regret_ms"], f"{target} - netkv:perfect", color="#d62728")
    ax3.axhline(0.0, color="black", linewidth=0.8)
    ax3.set_ylabel("regret: extra mean TTFT (ms)")
    ax3.set_title("regret against perfect information")
    for ax in (ax1, ax2, ax3):
        ax.set_xscale("log")
        ax.set_xlabel("telemetry staleness (s; 0 drawn at 0.05)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.suptitle(command, fontsize="small")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    return png.getvalue()
