"""Telemetry staleness sweep: how old may the oracle's snapshot be before NetKV stops gaining?

For each staleness value netkv replays the same window with the oracle answering from the
snapshot of ``now - staleness``, while a shadow oracle with fresh telemetry records whether the
stale decision picked the same tier (Claim 3: tier rankings survive staleness) and the same
instance (rankings within a tier may not). cache-load, which ignores the network, is the reference.
"""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

from scheduler.experiment import Experiment, make_policy, run_simulation, tune_policy
from scheduler.metrics import summarize_policy
from scheduler.policies import REGISTRY, PolicySpec
from scheduler.report import write_results
from scheduler.simulator import Simulator


def run_staleness(exp: Experiment, info: dict, values: list[float], out: Path, progress: bool = True,
                  log=print) -> tuple[Path, str]:
    slo = exp.slo()
    actions = exp.actions()
    ref_exp = dataclasses.replace(exp, policies=[PolicySpec(REGISTRY["cache-load"])])
    ref, ref_records = run_simulation(ref_exp, progress=progress, log=log)
    netkv = PolicySpec(REGISTRY["netkv"], "telemetry")
    weight, _ = tune_policy(exp, netkv)
    rows = []
    records = dict(ref_records)
    policies = dict(ref)
    for v in values:
        cfg = dataclasses.replace(exp.cfg, oracle=dataclasses.replace(exp.cfg.oracle, staleness_s=v))
        sim = Simulator(cfg, exp.requests, make_policy(netkv, weight, exp.seed, cfg), actions,
                        progress=progress, shadow_fresh=v > 0)
        recs = sim.run()
        name = f"netkv@{v:g}s"
        for r in recs:
            r.policy = name
        s = summarize_policy(recs, slo)
        a = sim.agreement
        n = max(a["decisions"], 1)
        s["staleness_s"] = v
        s["same_tier_fraction"] = a["same_tier"] / n if a["decisions"] else 1.0
        s["same_instance_fraction"] = a["same_instance"] / n if a["decisions"] else 1.0
        policies[name] = s
        records[name] = recs
        rows.append(s)
        log(f"staleness {v:g} s: mean TTFT {s['ttft_mean_s']:.3f} s")
    base = ref["cache-load"]["ttft_mean_s"]
    buf = io.StringIO()
    print(f"scenario '{exp.scenario.name}', {len(exp.requests)} requests, poll interval "
          f"{exp.cfg.oracle.poll_interval_s} s; cache-load mean TTFT {base:.3f} s", file=buf)
    print(f"{'staleness s':>12} {'mean TTFT s':>12} {'vs cache-load':>14} {'same tier':>10} {'same inst.':>11}", file=buf)
    for s in rows:
        print(f"{s['staleness_s']:>12g} {s['ttft_mean_s']:>12.3f} {100 * (s['ttft_mean_s'] / base - 1):>+13.1f}% "
              f"{100 * s['same_tier_fraction']:>9.1f}% {100 * s['same_instance_fraction']:>10.1f}%", file=buf)
    summary = {"backend": "simulate", "kind": "staleness-sweep", "config": exp.cfg.to_dict() | {
        "scenario": exp.scenario.describe(), "trace": info, "netkv_load_weight_s": weight},
        "policies": policies, "sweep": [{k: s[k] for k in ("staleness_s", "ttft_mean_s", "slo_attainment",
                                                             "same_tier_fraction", "same_instance_fraction")}
                                         for s in rows]}
    extra = {"staleness.txt": buf.getvalue().encode(), "staleness.png": _plot(rows, base)}
    path = write_results(out, summary, records, slo, extra_files=extra)
    return path, buf.getvalue()


def _plot(rows: list[dict], base: float) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    xs = [max(r["staleness_s"], 0.05) for r in rows]
    ax1.plot(xs, [r["ttft_mean_s"] for r in rows], "o-", color="#d62728", label="netkv")
    ax1.axhline(base, color="#555", ls="--", label="cache-load (network-blind)")
    ax1.set_xscale("log"); ax1.set_xlabel("telemetry staleness (s; 0 drawn at 0.05)"); ax1.set_ylabel("mean TTFT (s)")
    ax1.legend(); ax1.set_title("TTFT vs staleness")
    ax2.plot(xs, [100 * r["same_tier_fraction"] for r in rows], "o-", label="same tier as fresh")
    ax2.plot(xs, [100 * r["same_instance_fraction"] for r in rows], "s--", label="same instance as fresh")
    ax2.set_xscale("log"); ax2.set_ylim(0, 105); ax2.set_xlabel("telemetry staleness (s)"); ax2.set_ylabel("% of decisions")
    ax2.legend(); ax2.set_title("decision agreement with fresh telemetry")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    return png.getvalue()
