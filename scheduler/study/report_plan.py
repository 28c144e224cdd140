"""What ``netkv report`` runs, and running it: the plan (matrix cells, sweep specs) in one pool.

Every run is independent, so all of them (matrix cells and sweep points) go into one process
pool (or onto Ray, :mod:`scheduler.study.executor`); the simulator is deterministic, so a rerun
reproduces every figure exactly (wall-clock fields aside). :mod:`scheduler.study.report_markdown` renders the results.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any

from scheduler.paths import MOONCAKE_DIR, REPO_ROOT
from scheduler.study import sweep as sw
from scheduler.study.executor import Executor, make_executor

TRACE = MOONCAKE_DIR / "conversation_trace.jsonl"
"""The real trace the report runs on (read in place, never copied); synthetic when absent."""
HEADLINE_POLICIES = ("round-robin,least-loaded,cache-load,topology-filter,topology-affinity,"
                     "netkv:static,netkv,netkv:inflight,netkv:perfect")
"""Policies of the headline matrix (and the 200 Gb/s one): every scheduler and every oracle."""
SHORT_POLICIES = "round-robin,cache-load,topology-affinity,netkv:static,netkv,netkv:perfect"
"""Policies of the placement and layer-wise matrices: the headline's without least-loaded, topology-filter
and netkv:inflight."""
SWEEP_POLICIES = "cache-load,topology-affinity,netkv:static,netkv,netkv:perfect"
"""Policies of every sweep: the tuned baselines and NetKV on its three oracles."""
SCENARIOS = ("idle", "decode-flap", "rolling", "incast", "tenant", "background", "bursty", "hotspot",
             "prefill-egress", "link-failure", "nic-failure", "shared-cluster")
"""Scenarios of the full report's headline matrix."""
QUICK_SCENARIOS = ("idle", "decode-flap", "rolling", "tenant", "prefill-egress")
"""Scenarios of the ``--quick`` report's headline matrix (a few-minute version)."""
PLACEMENTS = ("by-rack", "by-server", "mixed")
"""Placements of the report (the first is the default: the headline and nic200 cells)."""


@dataclass(frozen=True)
class Cell:
    """One simulate run of the matrix: (scenario, placement, extra constants)."""

    section: str
    scenario: str
    policies: str
    overrides: tuple[str, ...] = ()
    label: str = ""

    def base(self, trace: str | None, max_requests: int | None) -> sw.Base:
        return sw.Base(overrides=self.overrides, trace=trace, scenario=self.scenario, policies=self.policies,
                       max_requests=max_requests)

    def command(self, trace: str | None, max_requests: int | None) -> str:
        parts = ["netkv simulate"]
        if trace:
            parts.append(f"--trace {rel_path(trace)}")
        if max_requests:
            parts.append(f"--max-requests {max_requests}")
        parts.append(f"--scenario {self.scenario}")
        parts += [f"--set {o}" for o in self.overrides]
        parts.append(f"--policies {self.policies}")
        return " ".join(parts)


@dataclass
class SweepSpec:
    """One sweep of the report."""

    key: str
    title: str
    param: str
    values: list
    scenario: str
    policies: str = SWEEP_POLICIES
    overrides: tuple[str, ...] = ()
    note: str = ""
    shadow: bool = False

    def sweep(self, trace: str | None, max_requests: int, seeds: list[int]) -> sw.Sweep:
        base = sw.Base(overrides=self.overrides, trace=trace, scenario=self.scenario, policies=self.policies,
                       max_requests=max_requests)
        return sw.Sweep(self.param, list(self.values), seeds, base, shadow=self.shadow)

    def command(self, trace: str | None, max_requests: int, seeds: list[int]) -> str:
        cmd = "netkv staleness" if self.shadow else f"netkv sweep --param {self.param}"
        parts = [cmd, f"--values {','.join(f'{v:g}' if isinstance(v, float) else str(v) for v in self.values)}",
                 f"--seeds {','.join(map(str, seeds))}"]
        if trace:
            parts.append(f"--trace {rel_path(trace)}")
        parts += [f"--max-requests {max_requests}", f"--scenario {self.scenario}"]
        parts += [f"--set {o}" for o in self.overrides]
        if not self.shadow:
            parts.append(f"--policies {self.policies}")
        return " ".join(parts)


def rel_path(path: str) -> str:
    """``path`` relative to the repository (as the report prints commands), or as it is."""
    try:
        return os.path.relpath(path, REPO_ROOT)
    except ValueError:
        return path


@dataclass
class Plan:
    """Everything the report runs: the headline matrix cells and the sweeps, their windows and seeds."""

    quick: bool
    trace: str | None
    headline_requests: int | None
    sweep_requests: int
    seeds: list[int]
    cells: list[Cell] = field(default_factory=list)
    sweeps: list[SweepSpec] = field(default_factory=list)


def make_plan(quick: bool = False, max_requests: int | None = None, scenarios: list[str] | None = None,
              trace: str | None = None, overrides: tuple[str, ...] = ()) -> Plan:
    """What the report runs. ``max_requests`` caps every window (tests), ``scenarios`` restricts the
    headline matrix, ``overrides`` (``--set``) apply to every run."""
    trace = trace if trace is not None else (str(TRACE) if TRACE.exists() else None)
    names = list(scenarios or (QUICK_SCENARIOS if quick else SCENARIOS))
    headline = max_requests or (2000 if quick else None)
    swn = max_requests or (1500 if quick else 3000)
    seeds = [0, 1] if quick else [0, 1, 2]
    plan = Plan(quick, trace, headline, swn, seeds)
    for sc in names:
        plan.cells.append(Cell("headline", sc, HEADLINE_POLICIES, (), "by-rack, 400 Gb/s"))
        if not quick:
            plan.cells.append(Cell("nic200", sc, HEADLINE_POLICIES, ("topology.nic_gbit_s=200",), "by-rack, 200 Gb/s"))
        for placement in PLACEMENTS[1:]:
            plan.cells.append(Cell("placement", sc, SHORT_POLICIES, (f"cluster.placement={placement}",),
                                   f"{placement}, 400 Gb/s"))
        plan.cells.append(Cell("layer-wise", sc, SHORT_POLICIES, ("timing.kv_streaming=layer-wise",),
                               "by-rack, 400 Gb/s, layer-wise"))
    flap = "decode-flap"
    plan.sweeps = [
        SweepSpec("load", "Load: arrival rate x K", "rate-scale",
                  [1.0, 4.0, 16.0] if quick else [0.5, 1.0, 2.0, 4.0, 8.0, 16.0], flap),
        SweepSpec("context", "Context (Claim 1): prompt lengths x K, by-rack pools", "context-scale",
                  [0.25, 1.0, 4.0] if quick else [0.25, 0.5, 1.0, 2.0, 4.0, 8.0], flap),
        SweepSpec("context-mixed", "Context (Claim 1): prompt lengths x K, mixed placement", "context-scale",
                  [0.25, 1.0, 4.0] if quick else [0.25, 0.5, 1.0, 2.0, 4.0, 8.0], flap,
                  overrides=("cluster.placement=mixed",)),
        SweepSpec("bandwidth", "Bandwidth: NIC Gbit/s per GPU", "topology.nic_gbit_s",
                  [100.0, 400.0] if quick else [50.0, 100.0, 200.0, 400.0, 800.0], flap),
        SweepSpec("period", "Flap period: how fast congestion may move", "scenario.period",
                  [2.0, 30.0] if quick else [1.0, 2.0, 5.0, 10.0, 30.0, 120.0], flap,
                  note="A decision is taken ~0.5 s (queue + prefill) before its transfer starts, on telemetry up "
                       "to one poll interval (0.5 s) old: congestion that moves faster than that cannot be "
                       "followed, and even perfect information of the present does not know the future."),
        SweepSpec("staleness", "Telemetry staleness (Claim 3)", "oracle.staleness_s",
                  [0.0, 5.0] if quick else [0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0], flap,
                  policies="netkv,netkv:perfect,cache-load", shadow=True,
                  note="decode-flap's period is 30 s: a snapshot one whole period old shows the present phase "
                       "again, so at a staleness of 30 s the gain returns by aliasing, not by robustness; half a "
                       "period old (15 s) shows the opposite phase. \"same tier\" / \"same instance\": the share of "
                       "decisions on stale telemetry that a fresh oracle would have made alike."),
    ]
    if overrides:
        plan.cells = [dataclasses.replace(c, overrides=(*overrides, *c.overrides)) for c in plan.cells]
        for spec in plan.sweeps:
            spec.overrides = (*overrides, *spec.overrides)
    return plan


def _run_cell(job):
    from scheduler.study.experiment import run_simulation

    kind, key, payload = job
    t0 = time.perf_counter()
    if kind == "cell":
        cell, trace, n = payload
        s = sw.Sweep("rate-scale", [1.0], [0], cell.base(trace, n))
        exp, info = sw.prepare_point(s, sw.Point(1.0, 0))
        policies, _ = run_simulation(exp, progress=False, log=lambda m: None)
        for p in policies.values():
            p.pop("tuning", None)
        return kind, key, {"policies": policies, "trace": info}, time.perf_counter() - t0
    if kind == "tune":
        _, weights = sw.tune_value(payload)
        return kind, key, weights, time.perf_counter() - t0
    _, policies, _ = sw.run_point(payload)
    return kind, key, policies, time.perf_counter() - t0


def run_plan(plan: Plan, jobs: int | None = None, progress: bool = True, log=print,
             executor: Executor | str = "local") -> dict:
    """Every cell and sweep point of ``plan`` on one executor (``--executor``, see
    :mod:`scheduler.study.executor`); ``{"cells": {...}, "sweeps": {...}}``.
    First the matrix cells and one tuning job per sweep value (every seed of a value tunes on
    the same held-out slice, see :func:`scheduler.study.sweep.run`), then the sweep points."""
    from scheduler.progress import Progress

    sweeps = {s.key: s.sweep(plan.trace, plan.sweep_requests, plan.seeds) for s in plan.sweeps}
    for cell in plan.cells:  # validate everything before any work
        sw.prepare_point(sw.Sweep("rate-scale", [1.0], [0], cell.base(plan.trace, plan.headline_requests)),
                         sw.Point(1.0, 0))
    for s in sweeps.values():
        sw.validate(s)
    first: list[tuple[str, Any, tuple]] = [("cell", i, (cell, plan.trace, plan.headline_requests))
                                          for i, cell in enumerate(plan.cells)]
    first += [("tune", (key, v), (s, v)) for key, s in sweeps.items() for v in s.values]
    n_points = sum(len(s.points()) for s in sweeps.values())
    out: dict = {"cells": {}, "sweeps": {k: {} for k in sweeps}, "wall_s": {}}
    jobs = max(1, jobs or os.cpu_count() or 1)
    weights: dict = {}
    with Progress(total=len(first) + n_points, label="report", enabled=progress) as bar, \
            (executor if isinstance(executor, Executor) else make_executor(executor, jobs, inline_single=False)) as ex:
        for phase in (1, 2):
            work = first if phase == 1 else [
                ("point", (key, p.value, p.seed), (s, p, weights.get((key, p.value))))
                for key, s in sweeps.items() for p in s.points()]
            for kind, key, result, wall in ex.map(_run_cell, work, bar):
                if kind == "cell":
                    out["cells"][key] = result
                elif kind == "tune":
                    weights[key] = result
                else:
                    out["sweeps"][key[0]][(key[1], key[2])] = result
                out["wall_s"][str(key)] = wall
    out["sweep_objects"] = sweeps
    return out
