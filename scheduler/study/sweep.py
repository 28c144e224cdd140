"""Parameter sweeps over values and seeds, with 95% confidence intervals: ``netkv sweep``.

A sweep varies one parameter over values, for every seed, with the same experiment otherwise
(trace, scenario, policies, constants): each (value, seed) point is a full simulate run, tuning
included, so every policy is tuned for the conditions it is measured in. Points are independent
and run in parallel across the machine's cores (one process each), or on Ray
(:mod:`scheduler.study.executor`).

Parameters (``--param``): ``rate-scale`` and ``context-scale`` (the experiment options),
``SECTION.FIELD`` (any constant of ``netkv constants``, e.g. ``topology.nic_gbit_s``,
``oracle.staleness_s``) and ``scenario.NAME`` (a parameter of the scenario, e.g.
``scenario.period``). Values that all parse as numbers are plotted on a numeric axis (log when they
span more than a factor of 10 and are positive); others are categories (``cluster.placement``).

Seeds: with the embedded synthetic trace a seed generates another trace; with a trace file seed
``s`` evaluates the s-th block of ``--max-requests`` consecutive requests (rebased to t = 0), so
seeds are disjoint windows of the real trace and the interval says how much the result depends on
the window. Intervals: mean over seeds +- t(0.975, n - 1) x s / sqrt(n) (Student); NetKV's change
against a baseline is computed per seed (paired) before averaging.
"""
from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scheduler.policies import TARGET
from scheduler.results.metrics import SLO_DEFINITIONS
from scheduler.study.executor import Executor, make_executor

ROW_FIELDS = ("param", "value", "seed", "policy", "requests", "ttft_mean_s", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s",
              "slo_attainment", *(f"slo_{d.replace('-', '_')}" for d in SLO_DEFINITIONS), "tbt_mean_ms",
              "transfer_mean_s", "kv_bytes_moved", "tier0", "tier1", "tier2", "tier3", "weight",
              "same_tier_fraction", "same_instance_fraction", "kendall_tau", "kendall_tau_within_tier", "regret_ms",
              "wall_s")
"""Columns of ``sweep.csv``: one row per (value, seed, policy). ``regret_ms``: the policy's mean
TTFT minus that of ``netkv:perfect`` at the same point (empty without it); the agreement columns
(staleness studies): against a fresh oracle's decisions and cost orderings."""
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        15: 2.131, 20: 2.086, 30: 2.042}
"""Two-sided 95% Student t quantiles by degrees of freedom (interpolated between, 1.96 above 30)."""
PERFECT = "netkv:perfect"


class SweepError(ValueError):
    """A sweep's parameter or values are invalid; the message names the option."""


def t975(dof: int) -> float:
    """Two-sided 95% Student t quantile for ``dof`` degrees of freedom."""
    if dof < 1:
        return float("nan")
    if dof in T975:
        return T975[dof]
    if dof > 30:
        return 1.96
    lo = max(k for k in T975 if k < dof)
    hi = min(k for k in T975 if k > dof)
    return T975[lo] + (T975[hi] - T975[lo]) * (dof - lo) / (hi - lo)


def mean_ci(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% interval) of ``values``; the half-width is NaN for one value."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float("nan")
    return float(x.mean()), float(t975(x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))


@dataclass(frozen=True)
class Base:
    """The experiment every point shares (the common experiment options)."""

    model: str = "llama-3-8b"
    gpu: str | None = None
    overrides: tuple[str, ...] = ()
    trace: str | None = None
    scenario: str = "idle"
    scenario_params: tuple[tuple[str, float], ...] = ()
    policies: str = "cache-load,netkv"
    max_requests: int | None = None
    tune: bool = True
    weights: tuple[tuple[str, float], ...] = ()
    rate_scale: float = 1.0
    context_scale: float = 1.0


@dataclass(frozen=True)
class Point:
    value: Any
    seed: int


@dataclass
class Sweep:
    param: str
    values: list
    seeds: list[int]
    base: Base
    shadow: bool = False  # record stale-vs-fresh decision agreement (the staleness study)
    numeric: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        self.numeric = all(isinstance(v, (int, float)) for v in self.values)

    def points(self) -> list[Point]:
        return [Point(v, s) for v in self.values for s in self.seeds]


def parse_values(text: str) -> list:
    """``--values``: comma-separated numbers (or names, for categorical parameters)."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise SweepError(f"--values {text!r}: expected a comma-separated list, e.g. 0.5,1,2")
    out: list = []
    for x in items:
        try:
            v = float(x)
        except ValueError:
            out.append(x)
            continue
        if not math.isfinite(v):
            raise SweepError(f"--values {text!r}: {x!r} is not a finite number")
        out.append(v)
    if any(isinstance(v, float) for v in out) and any(isinstance(v, str) for v in out):
        bad = next(v for v in out if isinstance(v, str))
        raise SweepError(f"--values {text!r}: {bad!r} is not a number like the others")
    if len(set(out)) != len(out):
        raise SweepError(f"--values {text!r}: a value is repeated")
    return out


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SweepError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise SweepError(f"--seeds {text!r}: expected distinct non-negative integers, e.g. 0,1,2")
    return seeds


def _point_args(sweep: Sweep, point: Point) -> dict:
    """Arguments of :func:`scheduler.study.experiment.prepare` (and the config) for one point."""
    b = sweep.base
    overrides = list(b.overrides)
    scenario_params = dict(b.scenario_params)
    rate, context = b.rate_scale, b.context_scale
    p, v = sweep.param, point.value
    if p == "rate-scale":
        rate = float(v)
    elif p == "context-scale":
        context = float(v)
    elif p.startswith("scenario."):
        scenario_params[p.split(".", 1)[1]] = float(v)
    else:
        overrides.append(f"{p}={v:g}" if isinstance(v, float) else f"{p}={v}")
    return {"model": b.model, "gpu": b.gpu, "overrides": overrides, "trace": b.trace, "scenario": b.scenario,
            "scenario_params": scenario_params, "policies": b.policies, "max_requests": b.max_requests,
            "seed": point.seed, "tune": b.tune, "weights": dict(b.weights), "rate_scale": rate,
            "context_scale": context, "window": point.seed if b.trace else 0}


def prepare_point(sweep: Sweep, point: Point):
    """Validate and build one point's experiment (raises the experiment's input errors)."""
    from scheduler.model.config import build_config
    from scheduler.study.experiment import prepare

    a = _point_args(sweep, point)
    cfg = build_config(a["model"], a["gpu"], a["overrides"])
    return prepare(cfg, a["trace"], a["scenario"], a["policies"], a["max_requests"], a["seed"], a["scenario_params"],
                   a["tune"], a["weights"], a["rate_scale"], a["context_scale"], a["window"])


def validate(sweep: Sweep) -> None:
    """Check the parameter and every point before any work, so a bad value fails at once, naming
    itself (the first seed of each value, and every seed's trace window)."""
    if sweep.param.startswith("scenario."):
        if not sweep.param.split(".", 1)[1]:
            raise SweepError("--param scenario.NAME: name the scenario parameter, e.g. scenario.period")
    elif sweep.param not in ("rate-scale", "context-scale") and "." not in sweep.param:
        raise SweepError(f"--param {sweep.param!r}: expected rate-scale, context-scale, SECTION.FIELD (a constant "
                         f"of `netkv constants`) or scenario.NAME")
    if not sweep.numeric and sweep.param in ("rate-scale", "context-scale"):
        raise SweepError(f"--param {sweep.param} takes numbers")
    if not sweep.numeric and sweep.param.startswith("scenario."):
        raise SweepError(f"--param {sweep.param}: scenario parameters are numbers")
    for v in sweep.values:
        prepare_point(sweep, Point(v, sweep.seeds[0]))
    if sweep.base.trace:
        for s in sweep.seeds:
            prepare_point(sweep, Point(sweep.values[0], s))


def tune_value(job: tuple[Sweep, Any]) -> tuple[Any, dict[str, float]]:
    """Every tuned weight of one value (the tuning slice is the same for every seed of a trace:
    its last requests), as ``--weight`` would fix them."""
    from scheduler.study.experiment import tune_policy

    sweep, value = job
    exp, _ = prepare_point(sweep, Point(value, sweep.seeds[0]))
    for spec in exp.policies:
        tune_policy(exp, spec)
    return value, {name: w for name, (w, _) in exp.tuned.items() if w is not None}


def run_point(job) -> tuple[Point, dict, float]:
    """One point of ``job`` = (sweep, point[, fixed weights]) simulated: (point, policies, wall s)."""
    from scheduler.study.experiment import run_simulation

    sweep, point = job[0], job[1]
    fixed = job[2] if len(job) > 2 else None
    t0 = time.perf_counter()
    exp, _ = prepare_point(sweep, point)
    if fixed:
        exp.weights.update(fixed)
    policies, _ = run_simulation(exp, progress=False, log=lambda m: None, shadow=sweep.shadow)
    for summary in policies.values():  # what the rows and the plots need, not the tuning tables
        summary.pop("tuning", None)
    return point, policies, time.perf_counter() - t0


def run(sweep: Sweep, jobs: int | None = None, progress: bool = True, log=print,
        executor: Executor | str = "local") -> dict[tuple, dict]:
    """Run every point on ``executor`` (an :class:`~scheduler.study.executor.Executor`, or a
    ``--executor`` spec: ``local``, ``ray``, ``ray=ADDRESS``; ``jobs`` processes or local Ray CPUs,
    default one per core); ``{(value, seed): policies}``. Ctrl-C cancels the outstanding points and
    re-raises ``KeyboardInterrupt``."""
    from scheduler.progress import Progress

    points = sweep.points()
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(points)))
    out: dict[tuple, dict] = {}
    # With a trace file every seed of a value tunes on the same slice (the trace's last requests):
    # tune once per value, then run the seeds with those weights (identical results, a fraction
    # of the work). Synthetic seeds are different traces: each point tunes for itself.
    tune_first = bool(sweep.base.trace) and sweep.base.tune and len(sweep.seeds) > 1
    total = len(points) + (len(sweep.values) if tune_first else 0)
    with Progress(total=total, label=f"sweep {sweep.param}", enabled=progress) as bar, \
            (executor if isinstance(executor, Executor) else make_executor(executor, jobs)) as ex:
        fixed: dict = dict(ex.map(tune_value, [(sweep, v) for v in sweep.values], bar)) if tune_first else {}
        for point, policies, _ in ex.map(run_point, [(sweep, p, fixed.get(p.value)) for p in points], bar):
            out[(point.value, point.seed)] = policies
    return out


def rows(sweep: Sweep, results: dict[tuple, dict]) -> list[dict]:
    """One row per (value, seed, policy), in the sweep's value and seed order (see ROW_FIELDS)."""
    out = []
    for v in sweep.values:
        for seed in sweep.seeds:
            policies = results[(v, seed)]
            perfect = policies.get(PERFECT, {}).get("ttft_mean_s")
            for name, s in policies.items():
                by = s.get("slo_attainment_by_definition") or {}
                agree = s.get("agreement") or {}
                params = s.get("params") or {}
                weight = next((w for k, w in params.items() if k != "oracle"), None)
                hist = s.get("tier_histogram") or [0, 0, 0, 0]
                out.append({
                    "param": sweep.param, "value": v, "seed": seed, "policy": name, "requests": s["requests"],
                    "ttft_mean_s": s["ttft_mean_s"], "ttft_p50_s": s["ttft_p50_s"], "ttft_p90_s": s["ttft_p90_s"],
                    "ttft_p99_s": s["ttft_p99_s"], "slo_attainment": s["slo_attainment"],
                    **{f"slo_{d.replace('-', '_')}": by.get(d) for d in SLO_DEFINITIONS},
                    "tbt_mean_ms": s["tbt_mean_ms"], "transfer_mean_s": s["transfer_mean_s"],
                    "kv_bytes_moved": s["kv_bytes_moved"], "tier0": hist[0], "tier1": hist[1], "tier2": hist[2],
                    "tier3": hist[3], "weight": weight,
                    "same_tier_fraction": agree.get("same_tier_fraction"),
                    "same_instance_fraction": agree.get("same_instance_fraction"),
                    "kendall_tau": agree.get("kendall_tau"),
                    "kendall_tau_within_tier": agree.get("kendall_tau_within_tier"),
                    "regret_ms": 1e3 * (s["ttft_mean_s"] - perfect) if perfect is not None else None,
                    "wall_s": s.get("wall_s"),
                })
    return out


def aggregate(sweep: Sweep, table: list[dict], target: str = TARGET) -> dict:
    """Per value and policy: mean and 95% interval over seeds of the main metrics, and the target's
    paired change against each other policy: percent of mean TTFT, the same in ms (the absolute
    gap), and percentage points of SLO attainment."""
    names = list(dict.fromkeys(r["policy"] for r in table))
    metrics = ("ttft_mean_s", "ttft_p99_s", "slo_attainment", "tbt_mean_ms", "transfer_mean_s", "regret_ms",
               "same_tier_fraction", "same_instance_fraction", "kendall_tau", "kendall_tau_within_tier")
    out: dict = {"values": sweep.values, "seeds": sweep.seeds, "policies": {}, "vs": {}}
    by = {(r["value"], r["seed"], r["policy"]): r for r in table}
    for name in names:
        out["policies"][name] = {m: [mean_ci([by[(v, s, name)][m] for s in sweep.seeds if (v, s, name) in by])
                                     for v in sweep.values] for m in metrics}
    if target in names:
        for base in names:
            if base == target:
                continue
            pct, pp, ms = [], [], []
            for v in sweep.values:
                p_, q_, d_ = [], [], []
                for s in sweep.seeds:
                    t, b = by.get((v, s, target)), by.get((v, s, base))
                    if t and b and b["ttft_mean_s"]:
                        p_.append(100.0 * (t["ttft_mean_s"] - b["ttft_mean_s"]) / b["ttft_mean_s"])
                        q_.append(100.0 * (t["slo_attainment"] - b["slo_attainment"]))
                        d_.append(1e3 * (t["ttft_mean_s"] - b["ttft_mean_s"]))
                pct.append(mean_ci(p_))
                pp.append(mean_ci(q_))
                ms.append(mean_ci(d_))
            out["vs"][base] = {"ttft_mean_pct": pct, "slo_pp": pp, "ttft_mean_delta_ms": ms}
    return out


def csv_bytes(table: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ROW_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in table:
        w.writerow({k: ("" if r.get(k) is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]))
                    for k in ROW_FIELDS})
    return buf.getvalue().encode()


def format_table(sweep: Sweep, agg: dict, target: str = TARGET) -> str:
    """Plain text: per value, each policy's mean TTFT (+- interval) and the target's changes."""
    lines = [f"{sweep.param:>16}  " + "  ".join(f"{n:>22}" for n in agg["policies"])]
    for i, v in enumerate(sweep.values):
        cells = []
        for m in agg["policies"].values():
            mean, hw = m["ttft_mean_s"][i]
            cells.append(f"{mean:>13.3f} s" + (f" +-{hw:.3f}" if math.isfinite(hw) else " " * 7))
        lines.append(f"{v!s:>16}  " + "  ".join(f"{c:>22}" for c in cells))
    if agg["vs"]:
        lines.append("")
        lines.append(f"{target} mean TTFT change (95% interval over seeds):")
        for base, d in agg["vs"].items():
            parts = []
            for v, (mean, hw) in zip(sweep.values, d["ttft_mean_pct"]):
                parts.append(f"{v!s}: {mean:+.1f}%" + (f" +-{hw:.1f}" if math.isfinite(hw) else ""))
            lines.append(f"  vs {base}: " + ", ".join(parts))
    return "\n".join(lines)
