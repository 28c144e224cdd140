"""``netkv staleness --backend emulate``: the staleness study on the live fabric, beside the simulator's.

For each scenario one fabric, one calibration, and the same trace window replayed per staleness
value: ``cache-load`` once (network-blind reference), then the studied policy (netkv) with its
oracle answering from the controller's telemetry history at ``now - staleness``, a fresh shadow
oracle on the same history deciding beside it (same tier, same instance, Kendall's tau-b of the
two cost orderings across and within tiers; :mod:`scheduler.decision.ranking`). The simulator runs the same
window at the same values (with ``netkv:perfect``). Regret: on both backends the extra mean TTFT
against the same backend's staleness-0 run (``regret_vs_fresh_ms``: what age costs, free of the
emulator's systematic transfer-time offset), and on the simulator also against ``netkv:perfect``.
The target: the live fabric's agreement curves near the simulator's, and the same sign of the
regret trend (largest value against the smallest). A 60-request mean moves by several percent
between identical replays, so ``repeats`` replays every value that many times (interleaved: all
values, then again, so the machine's drift spreads over them); the emulated row is their mean,
``regret_se_ms`` its standard error, and a trend within two standard errors is ``0`` (within
noise), not a sign. ``--quick``: :data:`QUICK_SCENARIOS` (with :data:`QUICK_SCENARIO_PARAMS`) x
:data:`QUICK_VALUES`, :data:`QUICK_REPEATS` replays each, on :data:`QUICK_REQUESTS` requests
(~5 min a scenario on 2 cores).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scheduler.emulate.orchestrator import Replay, run_emulation
from scheduler.policies import resolve
from scheduler.study.experiment import Experiment, run_simulation

QUICK_SCENARIOS = ("decode-flap", "rolling", "hotspot")
"""Two scenarios whose congestion moves within the window (decode-flap's halves swap every 15 s;
rolling's hotspot, at :data:`QUICK_SCENARIO_PARAMS`, moves every 5 s), so stale telemetry is
wrong, and one whose congestion stands still (hotspot: age costs only the first decisions, which
see the fabric before the hotspot began); all run on the fabric at --time-scale 1
(scheduler/emulate/emulable.py)."""
QUICK_SCENARIO_PARAMS = {"rolling": {"dwell": 5.0}}
"""Scenario parameters of the quick study: rolling's built-in 60 s dwell never moves the hotspot
inside a 60-request (~19 s) window, which would make its staleness study hotspot's again."""
QUICK_VALUES = (0.0, 2.0, 10.0)
"""Fresh, four poll intervals, and old enough to be wrong most of the time in both moving
scenarios (two of rolling's 5 s dwells: the opposite half; two thirds of decode-flap's 15 s
half-period): the regret at the largest value is what resolves the trend's sign."""
QUICK_REPEATS = 2
"""Replays of every value under ``--quick`` (unless ``--repeats`` says otherwise): the regret's
standard error needs two; 3 scenarios x (1 + 3 x 2) replays of ~30 s, ~15 min on 2 cores."""
QUICK_REQUESTS = 60
"""~19 s of replay per policy at the default load."""
QUICK_SCRAPE_INTERVALS = (1.0, 5.0)
"""Scrape intervals of ``--quick --telemetry prometheus``: Prometheus at a fast setting and at a
common one within a 60-request window (15 s, what many clusters run, needs a longer window:
``--scrape-intervals 1,5,15 --max-requests 150``)."""
REFERENCE = "cache-load"
STATIC = "netkv:static"
"""What the scrape-interval study asks live telemetry to beat: the same greedy on topology only."""
PERFECT = "netkv:perfect"


def label(target: str, value: float, repeat: int = 0) -> str:
    """``netkv@1s`` (the first replay of a value), ``netkv@1s#2`` (its second), ..."""
    return f"{target}@{value:g}s" + (f"#{repeat + 1}" if repeat else "")


def with_staleness(exp: Experiment, value: float) -> Any:
    """``exp``'s configuration with ``oracle.staleness_s = value``."""
    cfg = exp.cfg
    return dataclasses.replace(cfg, oracle=dataclasses.replace(cfg.oracle, staleness_s=float(value)))


def emulate_plan(exp: Experiment, target: str, values: list[float], repeats: int = 1) -> list[Replay]:
    """cache-load once, then ``target`` at every staleness value (shadowed where stale), the whole
    round ``repeats`` times."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    ref, tgt = resolve(REFERENCE)[0], resolve(target)[0]
    return [Replay(REFERENCE, ref)] + [Replay(label(target, v, k), tgt, with_staleness(exp, v), shadow=v > 0)
                                       for k in range(repeats) for v in values]


def scrape_plan(exp: Experiment, target: str, intervals: list[float], repeats: int = 1) -> list[Replay]:
    """cache-load and netkv:static once; then per round ``target`` on the controller's REST telemetry (value 0:
    no Prometheus in the path) and through a Prometheus scraping every interval of
    ``intervals`` (each with a fresh shadow on the REST telemetry), the round ``repeats`` times."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    ref, tgt = resolve(REFERENCE)[0], resolve(target)[0]
    fresh = with_staleness(exp, 0.0)
    plan = [Replay(REFERENCE, ref), Replay(STATIC, resolve(STATIC)[0])]
    for k in range(repeats):
        plan.append(Replay(label(target, 0.0, k), tgt, fresh))
        plan += [Replay(label(target, s, k), tgt, fresh, shadow=True, scrape_interval_s=s) for s in intervals]
    return plan


def measured_ages(emu: dict, target: str, values: list[float]) -> dict[float, float]:
    """Per value the median telemetry age at decision on the fabric (s), averaged over its replays."""
    out = {}
    for v in values:
        ages = [r["telemetry_age_at_decision_s"]["p50"] for r in _replays(emu, target, v)
                if r.get("telemetry_age_at_decision_s")]
        out[v] = sum(ages) / len(ages) if ages else math.nan
    return out


def simulate_points(exp: Experiment, target: str, values: list[float], weights: dict[str, float]) -> dict[float, dict]:
    """The simulator's policies section at every value (target, netkv:perfect, cache-load), the
    first two with the emulated replays' weights; netkv:perfect is tuned once (its oracle has no age)."""
    base = dataclasses.replace(exp, policies=resolve(f"{target},{PERFECT},{REFERENCE}"),
                               weights={**exp.weights, **weights}, tuned={})
    out = {}
    for v in values:  # the copies share base.tuned: each policy is tuned at most once
        exp_v = dataclasses.replace(base, cfg=with_staleness(exp, v))
        out[v], _ = run_simulation(exp_v, progress=False, log=lambda m: None, shadow=True)
    return out


def emulated_weights(emu: dict, target: str, values: list[float]) -> dict[str, float]:
    """The weight each emulated policy ran with (the simulator's tuning of the base window)."""
    out = {}
    for name, key in ((target, label(target, min(values))), (REFERENCE, REFERENCE)):
        spec = resolve(name)[0]
        params = emu.get(key, {}).get("params") or {}
        if spec.tuned_param and spec.tuned_param in params:
            out[name] = params[spec.tuned_param]
    return out


def _row(backend: str, value: float, pol: dict, fresh: dict | None, ref: dict | None, perfect: dict | None) -> dict:
    agree = pol.get("agreement") or {}
    stale = value > 0
    ttft = pol["ttft_mean_s"]
    return {"backend": backend, "value": value, "ttft_mean_s": ttft,
            "vs_cache_load_pct": 100.0 * (ttft - ref["ttft_mean_s"]) / ref["ttft_mean_s"] if ref else None,
            "regret_vs_fresh_ms": 1e3 * (ttft - fresh["ttft_mean_s"]) if fresh else None,
            "regret_vs_perfect_ms": 1e3 * (ttft - perfect["ttft_mean_s"]) if perfect else None,
            "same_tier_fraction": agree.get("same_tier_fraction") if stale else 1.0,
            "same_instance_fraction": agree.get("same_instance_fraction") if stale else 1.0,
            "kendall_tau": agree.get("kendall_tau") if stale else 1.0,
            "kendall_tau_within_tier": agree.get("kendall_tau_within_tier") if stale else 1.0,
            "decisions": agree.get("decisions") if stale else pol["requests"]}


def _replays(emu: dict, target: str, value: float) -> list[dict]:
    """Every replay of ``value`` in ``emu`` (``netkv@1s``, ``netkv@1s#2``, ...)."""
    out, k = [], 0
    while label(target, value, k) in emu:
        out.append(emu[label(target, value, k)])
        k += 1
    return out


def _mean_policy(reps: list[dict]) -> dict:
    """One policy row from repeated replays: mean TTFT and mean agreement figures (None-safe)."""
    if len(reps) == 1:
        return reps[0]
    agree: dict[str, Any] = {}
    for key in ("same_tier_fraction", "same_instance_fraction", "kendall_tau", "kendall_tau_within_tier"):
        xs = [r["agreement"][key] for r in reps if (r.get("agreement") or {}).get(key) is not None]
        agree[key] = sum(xs) / len(xs) if xs else None
    agree["decisions"] = sum((r.get("agreement") or {}).get("decisions") or 0 for r in reps)
    return {"ttft_mean_s": sum(r["ttft_mean_s"] for r in reps) / len(reps),
            "requests": sum(r["requests"] for r in reps), "agreement": agree}


def _se_ms(a: list[dict], b: list[dict]) -> float | None:
    """Standard error (ms) of mean(a) - mean(b) from the replays' spread; None with fewer than
    two replays of either."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = (statistics.variance([r["ttft_mean_s"] for r in reps]) for reps in (a, b))
    return 1e3 * math.sqrt(va / len(a) + vb / len(b))


def rows(emu: dict, sim: dict[float, dict], target: str, values: list[float]) -> list[dict]:
    """One row per (backend, value), an emulated value's replays averaged (``replays``,
    ``regret_se_ms``). Staleness 0 agrees with itself by definition."""
    out = []
    fresh_v = min(values)
    fresh = _replays(emu, target, fresh_v)
    for v in values:
        reps = _replays(emu, target, v)
        row = _row("emulate", v, _mean_policy(reps), _mean_policy(fresh), emu.get(REFERENCE), None)
        row["replays"] = len(reps)
        row["regret_se_ms"] = None if v == fresh_v else _se_ms(reps, fresh)
        out.append(row)
    for v in values:
        row = _row("simulate", v, sim[v][target], sim[fresh_v][target], sim[v].get(REFERENCE), sim[v].get(PERFECT))
        row["replays"], row["regret_se_ms"] = 1, None
        out.append(row)
    return out


TREND_FLAT_MS = 1.0
"""A regret this small (ms) is no trend on either backend."""
TREND_NOISE_SE = 2.0
"""An emulated regret within this many standard errors of the replays' spread is within noise."""


def trend(table: list[dict]) -> dict:
    """Sign of the regret trend on each backend (regret vs fresh at the largest value; 0 = flat:
    within :data:`TREND_FLAT_MS`, or on the fabric within :data:`TREND_NOISE_SE` standard errors
    when the values were replayed more than once), whether the two agree, and ``verdict``: "same
    sign", "different sign", or "within noise" (the fabric's regret not resolved from 0 while the
    simulator's is). ``consistent``: whether the simulator's regret lies within the fabric's
    band (:data:`TREND_NOISE_SE` standard errors around the emulated regret), None without one:
    a trend within noise may still be the simulator's, too small for the replays to resolve."""
    out: dict[str, Any] = {}
    noise = None
    last_of: dict[str, float | None] = {}
    for backend in ("emulate", "simulate"):
        pts = sorted((r["value"], r["regret_vs_fresh_ms"], r.get("regret_se_ms")) for r in table
                     if r["backend"] == backend)
        last = last_of[backend] = pts[-1][1] if pts else None
        band = TREND_FLAT_MS
        if pts and pts[-1][2] is not None:
            noise = pts[-1][2]
            band = max(band, TREND_NOISE_SE * noise)
        out[backend] = None if last is None else (0 if abs(last) < band else int(math.copysign(1, last)))
    out["same_sign"] = out["emulate"] is not None and out["emulate"] == out["simulate"]
    out["noise_ms"] = noise
    emu, sim = last_of.get("emulate"), last_of.get("simulate")
    out["consistent"] = (None if noise is None or emu is None or sim is None
                         else abs(sim - emu) <= TREND_NOISE_SE * noise)
    if out["emulate"] is None or out["simulate"] is None:
        out["verdict"] = None
    elif out["same_sign"]:
        out["verdict"] = "same sign"
    elif out["emulate"] == 0 and noise is not None:
        out["verdict"] = "within noise"
    else:
        out["verdict"] = "different sign"
    return out


def _fmt(x: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x * scale, spec)


def _params_text(params: dict | None) -> str:
    """`` (dwell=5, offset=0.7)``: a scenario's parameters after its name; empty without any."""
    return f" ({', '.join(f'{k}={v:g}' for k, v in params.items())})" if params else ""


def table_text(scenario: str, target: str, table: list[dict], tr: dict, params: dict | None = None) -> str:
    """The study's table and trend verdict as printed; ``params``: the scenario's parameters."""
    buf = io.StringIO()
    scrape = any("age_s" in r for r in table)
    what = ("telemetry read through Prometheus at each scrape interval (0: the controller's REST), the simulator "
            "at the median age measured at decision" if scrape else "telemetry oracle.staleness_s old")
    print(f"scenario '{scenario}'{_params_text(params)}: {target} with {what}, on the live fabric and the simulator",
          file=buf)
    print(f"{'backend':>9} {'scrape s' if scrape else 'stale s':>8} " + (f"{'age s':>6} " if scrape else "")
          + f"{'TTFT s':>8} " + (f"{'vs stat':>8} " if scrape else "") + f"{'vs c-l':>8} {'regret ms':>10} "
          f"{'vs perf ms':>10} {'same tier':>10} {'same inst':>10} {'tau':>6} {'tau tier':>8}", file=buf)
    for r in table:
        age = f"{_fmt(r['age_s'], '.2f'):>6} " if scrape else ""
        vs_static = f"{_fmt(r.get('vs_static_pct'), '+.1f') + '%':>8} " if scrape else ""
        print(f"{r['backend']:>9} {r['value']:>8g} {age}{_fmt(r['ttft_mean_s'], '.3f'):>8} {vs_static}"
              f"{_fmt(r['vs_cache_load_pct'], '+.1f') + '%':>8} {_fmt(r['regret_vs_fresh_ms'], '+.1f'):>10} "
              f"{_fmt(r['regret_vs_perfect_ms'], '+.1f'):>10} {_fmt(r['same_tier_fraction'], '.1f', 100) + '%':>10} "
              f"{_fmt(r['same_instance_fraction'], '.1f', 100) + '%':>10} {_fmt(r['kendall_tau'], '.2f'):>6} "
              f"{_fmt(r['kendall_tau_within_tier'], '.2f'):>8}", file=buf)
    noise = f" (fabric noise: standard error {tr['noise_ms']:.1f} ms)" if tr.get("noise_ms") is not None else ""
    if tr.get("verdict") == "within noise" and tr.get("consistent") is not None:
        noise += (", the simulator's regret inside the fabric's band: consistent" if tr["consistent"]
                  else ", the simulator's regret outside the fabric's band")
    verdict = (tr.get("verdict") or "").upper() if tr.get("verdict") == "different sign" else tr.get("verdict")
    print(f"regret trend (vs fresh, at the largest staleness): emulate {tr['emulate']:+d}, "
          f"simulate {tr['simulate']:+d}: {verdict}{noise}"
          if tr["emulate"] is not None and tr["simulate"] is not None else "regret trend: -",
          file=buf)
    return buf.getvalue().rstrip()


def plot(scenario: str, target: str, table: list[dict], command: str, params: dict | None = None) -> bytes:
    """Agreement, tau and regret against staleness: the live fabric (solid) and the simulator (dashed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.8), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    style = {"emulate": dict(linestyle="-", marker="o"), "simulate": dict(linestyle="--", marker="s")}
    for backend, kw in style.items():
        rs = sorted((r for r in table if r["backend"] == backend), key=lambda r: r["value"])
        xs = [max(r["value"], 0.05) for r in rs]

        def ys(key: str, scale: float = 1.0, rows: list[dict] = rs) -> list[float]:
            return [math.nan if r[key] is None else r[key] * scale for r in rows]

        ax1.plot(xs, ys("same_tier_fraction", 100), color="#1f77b4", label=f"same tier ({backend})", **kw)
        ax1.plot(xs, ys("same_instance_fraction", 100), color="#ff7f0e", label=f"same instance ({backend})", **kw)
        ax2.plot(xs, ys("kendall_tau"), color="#2ca02c", label=f"tau, all ({backend})", **kw)
        ax2.plot(xs, ys("kendall_tau_within_tier"), color="#9467bd", label=f"tau, within tiers ({backend})", **kw)
        se = [0.0 if r.get("regret_se_ms") is None else 2 * r["regret_se_ms"] for r in rs]
        ax3.errorbar(xs, ys("regret_vs_fresh_ms"), yerr=se if any(se) else None, color="#d62728", capsize=3,
                     label=f"vs fresh ({backend}{', 2 SE' if any(se) else ''})", **kw)
        if backend == "simulate":
            ax3.plot(xs, ys("regret_vs_perfect_ms"), color="#17becf", linestyle=":", marker="^",
                     label=f"vs {PERFECT} (simulate)")
    ax1.set_ylim(-5, 105)
    ax1.set_ylabel("% of decisions as on fresh telemetry")
    ax1.set_title("decision agreement")
    ax2.set_ylim(-1.05, 1.05)
    ax2.set_ylabel("Kendall tau-b of cost orderings")
    ax2.set_title("cost ranking agreement")
    ax3.axhline(0.0, color="black", linewidth=0.8)
    ax3.set_ylabel("extra mean TTFT (ms)")
    ax3.set_title(f"regret of {target}")
    scrape = any("age_s" in r for r in table)
    for ax in (ax1, ax2, ax3):
        ax.set_xscale("log")
        ax.set_xlabel("Prometheus scrape interval (s; 0: the controller's REST, drawn at 0.05)" if scrape
                      else "telemetry staleness (s; 0 drawn at 0.05)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.suptitle(f"{command}: scenario {scenario}{_params_text(params)} (solid: live fabric, dashed: simulator)",
                 fontsize="small")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    return png.getvalue()


def records_csv(records: dict[str, list]) -> bytes:
    """Every emulated replay's requests, the replay's label first (``netkv@1s``)."""
    from scheduler.model.records import RequestRecord

    cols = RequestRecord.columns()
    lines = [",".join(["replay", *cols])]
    for name, recs in records.items():
        for r in recs:
            lines.append(",".join([name, *(str(getattr(r, c)) for c in cols)]))
    return ("\n".join(lines) + "\n").encode()


def run_scenario(exp: Experiment, target: str, values: list[float], scale: float, time_scale: float,
                 ofp_port: int, rest_port: int, progress: bool, log: Callable[[str], Any], repeats: int = 1) -> dict:
    """One scenario's study on both backends: its rows, trend and the emulate run's evidence
    (calibration, fidelity, and its replays' KV transfers against their fluid twins)."""
    emu, records, ev = run_emulation(exp, scale, time_scale, ofp_port, rest_port, progress=progress, log=log,
                                     plan=emulate_plan(exp, target, values, repeats))
    log(f"staleness: simulating scenario {exp.scenario.name} at {', '.join(f'{v:g}' for v in values)} s")
    sim = simulate_points(exp, target, values, emulated_weights(emu, target, values))
    table = rows(emu, sim, target, values)
    return {"scenario": exp.scenario.name, "scenario_params": dict(exp.scenario.params), "rows": table,
            "trend": trend(table), "emulate_policies": emu,
            "simulate_points": {str(v): p for v, p in sim.items()},
            "calibration": ev.get("calibration"), "fidelity": ev.get("fidelity"),
            "paired_transfer_agreement": ev.get("paired_transfer_agreement"), "records": records}


def run_scrape_scenario(exp: Experiment, target: str, intervals: list[float], scale: float, time_scale: float,
                        ofp_port: int, rest_port: int, progress: bool, log: Callable[[str], Any],
                        repeats: int = 1) -> dict:
    """Staleness as deployed: one scenario with the scheduler reading telemetry through a real
    Prometheus at each scrape interval, against the controller's REST (value 0); the simulator
    at the same effective staleness: the median telemetry age measured at decision on the fabric,
    less the REST path's own (the simulator's fresh telemetry already lags by its polls)."""
    values = [0.0, *intervals]
    emu, records, ev = run_emulation(exp, scale, time_scale, ofp_port, rest_port, progress=progress, log=log,
                                     plan=scrape_plan(exp, target, intervals, repeats))
    ages = measured_ages(emu, target, values)
    # the simulator's staleness 0 already has the controller's polling lag (its telemetry samples
    # every poll interval, as the REST path does): it gets what Prometheus added to the REST's age
    base = ages[0.0] if math.isfinite(ages[0.0]) else 0.0
    sim_age = {v: (0.0 if v == 0 or not math.isfinite(a) else round(max(0.0, a - base), 2)) for v, a in ages.items()}
    log(f"staleness: simulating scenario {exp.scenario.name} at the measured ages "
        f"{', '.join(f'{a:g}' for a in sim_age.values())} s")
    by_age = simulate_points(exp, target, sorted(set(sim_age.values())), emulated_weights(emu, target, values))
    sim = {v: by_age[a] for v, a in sim_age.items()}
    table = rows(emu, sim, target, values)
    static_sim = _static_simulated(exp, emu)
    for r in table:
        r["age_s"] = ages[r["value"]] if r["backend"] == "emulate" else sim_age[r["value"]]
        static = emu.get(STATIC) if r["backend"] == "emulate" else static_sim
        r["vs_static_pct"] = (100.0 * (r["ttft_mean_s"] - static["ttft_mean_s"]) / static["ttft_mean_s"]
                              if static else None)
    return {"scenario": exp.scenario.name, "scenario_params": dict(exp.scenario.params), "rows": table,
            "trend": trend(table), "emulate_policies": emu, "measured_age_s": {str(v): a for v, a in ages.items()},
            "simulate_points": {str(v): p for v, p in sim.items()},
            "calibration": ev.get("calibration"), "fidelity": ev.get("fidelity"),
            "paired_transfer_agreement": ev.get("paired_transfer_agreement"), "records": records}


def _static_simulated(exp: Experiment, emu: dict) -> dict | None:
    """The simulator's netkv:static on the same window, with the emulated replay's weight (the
    static oracle has no age: one run serves every value)."""
    spec = resolve(STATIC)[0]
    params = (emu.get(STATIC) or {}).get("params") or {}
    weights = {STATIC: params[spec.tuned_param]} if spec.tuned_param and spec.tuned_param in params else {}
    policies, _ = run_simulation(dataclasses.replace(exp, policies=[spec], weights={**exp.weights, **weights},
                                                     tuned={}), progress=False, log=lambda m: None)
    return policies.get(STATIC)


def run_study(exps: list[Experiment], target: str, values: list[float], scale: float, time_scale: float,
              ofp_port: int, rest_port: int, progress: bool, log: Callable[[str], Any], repeats: int = 1,
              scrape: bool = False) -> list[dict]:
    """:func:`run_scenario` of every experiment in ``exps`` (one scenario each), in turn; with
    ``scrape`` the values are Prometheus scrape intervals (:func:`run_scrape_scenario`)."""
    if scrape:
        return [run_scrape_scenario(exp, target, values, scale, time_scale, ofp_port, rest_port, progress, log,
                                    repeats) for exp in exps]
    log(f"staleness: {len(exps)} scenario(s) x {len(values)} values on the fabric, {len(exps[0].requests)} "
        f"requests each, {repeats} replay(s) of each value (~"
        f"{sum(e.requests[-1].arrival_s for e in exps) * (len(values) * repeats + 1) * time_scale / 60:.0f} "
        f"min of replay)")
    return [run_scenario(exp, target, values, scale, time_scale, ofp_port, rest_port, progress, log, repeats)
            for exp in exps]


def write_study(out: Path, results: list[dict], target: str, values: list[float], scale: float, time_scale: float,
                repeats: int, command: str, provenance: dict | None) -> tuple[Path, str]:
    """Write the study's result folder at ``out`` (atomically): ``summary.json`` (every scenario's
    :func:`run_scenario`, its records aside), ``staleness.csv`` (every scenario's rows),
    ``staleness.txt``, one ``staleness-<scenario>.png`` and ``requests-<scenario>.csv`` per
    scenario. Returns (the folder, the tables' text)."""
    from scheduler.results.files import dumps_json, write_files

    texts = [table_text(r["scenario"], target, r["rows"], r["trend"], r["scenario_params"]) for r in results]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["scenario", *results[0]["rows"][0].keys()], lineterminator="\n")
    w.writeheader()
    for r in results:
        for row in r["rows"]:
            w.writerow({"scenario": r["scenario"], **row})
    files: dict[str, bytes] = {}
    for r in results:
        files[f"requests-{r['scenario']}.csv"] = records_csv(r.pop("records"))
    summary = {"kind": "staleness", "backend": "emulate", "provenance": provenance, "command": command,
               "param": "scrape_interval_s" if any("age_s" in r["rows"][0] for r in results) else "oracle.staleness_s",
               "policy": target, "values": values, "scale": scale,
               "time_scale": time_scale, "repeats": repeats, "scenarios": results}
    text = "\n\n".join(texts)
    files.update({"summary.json": dumps_json(summary).encode(), "staleness.csv": buf.getvalue().encode(),
                  "staleness.txt": (text + "\n").encode()})
    for r in results:
        files[f"staleness-{r['scenario']}.png"] = plot(r["scenario"], target, r["rows"], command, r["scenario_params"])
    return write_files(out, files), text
