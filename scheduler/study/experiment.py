"""One experiment definition, independent of the backend: trace, scenario, policies, tuning.

:func:`prepare` validates everything (trace, scenario, policies, constants) before anything runs,
so bad input stops the run with a clear error and no result folder. :func:`run_simulation` is the
``simulate`` backend; the emulator reuses :func:`prepare`, :func:`split_trace` and
:func:`tune_policy` so both backends run the same experiment.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scheduler.decision import oracle_error
from scheduler.model import transform
from scheduler.model.cluster import assign_roles
from scheduler.model.config import ConfigError, ExperimentConfig
from scheduler.model.records import RequestRecord
from scheduler.model.scenario import Scenario, load_scenario
from scheduler.model.synthetic import SyntheticConfig, synthetic_trace
from scheduler.model.timing import TimingModel
from scheduler.model.trace import Request, load_trace, trace_stats
from scheduler.policies import REGISTRY, PolicySpec, parse_spec, resolve
from scheduler.results.metrics import SloConfig
from scheduler.results.summary import policy_summary
from scheduler.sim.simulator import Simulator
from topology.model import FatTree, make_fabric

SCENARIO_SLACK_S = 300.0
"""Scenario events are expanded until this long after the last arrival (requests still finishing)."""


@dataclass
class Experiment:
    cfg: ExperimentConfig
    tree: FatTree
    trace_source: str
    requests: list[Request]  # evaluated window
    tune_requests: list[Request]  # held-out tuning slice, rebased to t=0
    scenario: Scenario
    policies: list[PolicySpec]
    seed: int = 0
    tune: bool = True
    weights: dict[str, float] = field(default_factory=dict)  # fixed weights (skip tuning)
    tuned: dict[str, tuple[float | None, list[dict]]] = field(default_factory=dict)  # memo of tune_policy
    policy_files: list = field(default_factory=list)  # --policy-module files (scheduler.policies.PolicyFile)

    @property
    def run_s(self) -> float:
        """The evaluated window's last arrival (what a scenario's ``$run_s`` stands for)."""
        return self.requests[-1].arrival_s if self.requests else 0.0

    @property
    def horizon_s(self) -> float:
        return self.run_s + SCENARIO_SLACK_S

    def actions(self, requests: list[Request] | None = None):
        """The scenario's actions for a run over ``requests`` (default: the evaluated window)."""
        last = (requests[-1].arrival_s if requests else 0.0) if requests is not None else self.run_s
        return self.scenario.actions(self.tree, last + SCENARIO_SLACK_S, last)

    def slo(self) -> SloConfig:
        """The run's SLO: the config's ``slo`` section, which the metrics take as it is."""
        return self.cfg.slo


@dataclass
class LinkRecording:
    """Per-link utilisation of one policy's simulated run, for the heat map: ``policy`` names the
    run to record; :func:`run_simulation` fills ``times_s`` (the telemetry polls, every
    ``oracle.poll_interval_s``), ``link_names`` and ``utilisation`` ``[poll, link]`` (0..1, as the
    oracle's snapshots). Recording reads the counters the simulator keeps anyway and changes no
    result."""

    policy: str
    times_s: np.ndarray = field(default_factory=lambda: np.empty(0))
    link_names: list[str] = field(default_factory=list)
    utilisation: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.float32))


def split_trace(requests: list[Request], max_requests: int | None, tune_requests: int,
                window: int = 0) -> tuple[list[Request], list[Request], bool]:
    """(evaluated window, tuning slice, disjoint?). The tuning slice is the trace's last
    ``tune_requests`` requests (rebased to t=0); the window is the first ``max_requests`` of the
    rest, or with ``window = w`` the w-th block of ``max_requests`` consecutive requests (rebased
    to t=0: how sweeps resample a fixed trace). A trace too short to hold both out gives an
    overlapping slice, reported as such."""
    n = len(requests)
    k = min(tune_requests, n)
    disjoint = n - k >= 1 and k > 0
    if disjoint:
        head, tail = requests[: n - k], requests[n - k:]
    else:
        head, tail = requests, requests[:k]
    if window:
        if not max_requests:
            raise ConfigError("a trace window other than the first needs --max-requests (the window's size)")
        start = window * max_requests
        if start + max_requests > len(head):
            raise ConfigError(f"window {window} of {max_requests} requests "
                              f"(requests {start}..{start + max_requests - 1}) "
                              f"lies beyond the trace's {len(head)} evaluable requests; use fewer seeds or a "
                              f"smaller --max-requests")
        first = head[start].arrival_s
        picked = [dataclasses.replace(r, arrival_s=r.arrival_s - first) for r in head[start:start + max_requests]]
    else:
        picked = head[:max_requests] if max_requests else head
    t0 = tail[0].arrival_s if tail else 0.0
    tune = [dataclasses.replace(r, arrival_s=r.arrival_s - t0) for r in tail]
    return picked, tune, disjoint


def split_too_long(requests: list[Request], kv_capacity_tokens: int) -> tuple[list[Request], list[Request]]:
    """(requests that fit, requests that never can): a request's KV at its last token (prompt +
    output tokens) must fit one decode instance's KV capacity (``TimingModel.kv_capacity_tokens``,
    all of its GPUs' KV memory, prefix-cache share included), else no decode instance can ever
    hold it and it is skipped rather than admitted."""
    fit = [r for r in requests if r.input_tokens + r.output_tokens <= kv_capacity_tokens]
    if len(fit) == len(requests):
        return requests, []
    return fit, [r for r in requests if r.input_tokens + r.output_tokens > kv_capacity_tokens]


def prepare(cfg: ExperimentConfig, trace: str | None, scenario: str, policies: str, max_requests: int | None,
            seed: int, scenario_params: dict[str, float] | None = None, tune: bool = True,
            weights: dict[str, float] | None = None, rate_scale: float = 1.0,
            context_scale: float = 1.0, window: int = 0) -> tuple[Experiment, dict]:
    """Validate and load every input; raises TraceError / ScenarioError / ValueError subclasses.
    ``rate_scale`` and ``context_scale`` transform the whole trace (window and tuning slice alike,
    see :mod:`scheduler.model.transform`) before it is split. Requests whose KV can never fit a decode
    instance (:func:`split_too_long`) are left out of the window and the tuning slice and counted
    (``info["skipped_too_long"]``, ``info["tuning_slice"]["skipped_too_long"]``)."""
    tree = make_fabric(cfg.topology)
    classes = resolve(policies)
    if max_requests is not None and max_requests < 1:
        raise ConfigError(f"--max-requests must be >= 1, got {max_requests}")
    if trace:
        reqs = load_trace(trace)
        source = str(Path(trace).resolve())
    else:
        reqs = synthetic_trace(SyntheticConfig(), seed=seed)
        source = f"synthetic(seed={seed})"
    sc = load_scenario(scenario, tree, scenario_params)
    reqs = transform.rate_scale(reqs, float(rate_scale))
    scaled = transform.context_scale(reqs, float(context_scale), cfg.model.max_context_tokens)
    reqs = scaled.requests
    window_reqs, tune_slice, disjoint = split_trace(reqs, max_requests, cfg.tuning.tune_requests, window)
    kv_capacity = TimingModel(cfg).kv_capacity_tokens
    window_reqs, too_long = split_too_long(window_reqs, kv_capacity)
    tune_slice, tune_too_long = split_too_long(tune_slice, kv_capacity)
    if not window_reqs:
        raise ConfigError(f"every one of the {len(too_long)} evaluated requests needs more KV (prompt + output "
                          f"tokens) than a decode instance holds ({kv_capacity} tokens: model '{cfg.model.name}' on "
                          f"cluster.tp={cfg.cluster.tp} x '{cfg.gpu.name}'); raise cluster.tp")
    for name, w in (weights or {}).items():
        try:
            spec = parse_spec(name)
        except ValueError:
            spec = None
        if spec is None or spec.tuned_param is None:
            raise ConfigError(f"--weight {name}=...: policy {name!r} has no tunable weight "
                             f"(tunable: {', '.join(n for n, c in REGISTRY.items() if c.tuned_param)})")
        if not (w >= 0 and math.isfinite(w)):
            raise ConfigError(f"--weight {name}={w}: a weight must be a finite number >= 0")
        used = {c.name for c in classes} | {o for c in classes for o in c.cls.inherits.values()}
        if spec.name not in used:
            raise ConfigError(f"--weight {name}=...: {name!r} is not among --policies "
                             f"({', '.join(c.name for c in classes)}) "
                             f"nor inherited by one of them, so the weight would be ignored")
    assign_roles(tree, cfg.cluster.placement, cfg.cluster.prefill_fraction,
                 cfg.cluster.reserved_servers_per_pod, cfg.cluster.tp)  # both roles present?
    exp = Experiment(cfg, tree, source, window_reqs, tune_slice, sc, classes, seed, tune, dict(weights or {}))
    info = {
        "source": source,
        "evaluated": trace_stats(window_reqs),
        "window": window,
        "tuning_slice": {"requests": len(tune_slice), "disjoint_from_evaluation": disjoint,
                         "skipped_too_long": len(tune_too_long)},
        "decode_kv_capacity_tokens": kv_capacity,
        "skipped_too_long": len(too_long),
        "skipped_too_long_req_ids": [r.req_id for r in too_long[:10]],
        "rate_scale": float(rate_scale),
        "context_scale": float(context_scale),
        "prompts_capped_at_context_window": scaled.capped,
    }
    return exp, info


def control_experiment(exp: Experiment, scenario: str) -> Experiment:
    """``exp`` on another scenario (``scenario``: a built-in name or a file, with its own defaults):
    the same trace window, tuning slice, policies, seed and fixed weights, the tuning memo emptied
    so that tuned weights are tuned again under the control, as a run of that scenario would."""
    return dataclasses.replace(exp, scenario=load_scenario(scenario, exp.tree), tuned={})


def pick_weight(table: list[dict], tbt_tolerance_ms: float) -> float:
    """Tuning rule, the same for every tuned policy: the lowest mean TTFT among the grid points
    whose mean TBT is within ``tbt_tolerance_ms`` of the grid's best mean TBT (the paper bounds
    NetKV's TBT overhead by 0.5 ms); ties go to the smaller weight."""
    best_tbt = min(row["tbt_mean_ms"] for row in table)
    ok = [row for row in table if row["tbt_mean_ms"] <= best_tbt + tbt_tolerance_ms]
    return min(ok, key=lambda row: (row["ttft_mean_s"], row["weight"]))["weight"]


def inherited_weights(exp: Experiment, spec: PolicySpec, run=None) -> dict[str, float]:
    """Parameters ``spec`` takes from other policies' tuned weights (tuning those if needed)."""
    out = {}
    for param_name, other in spec.cls.inherits.items():
        w, _ = tune_policy(exp, PolicySpec(REGISTRY[other]), run)
        if w is not None:
            out[param_name] = w
    return out


def tune_policy(exp: Experiment, spec: PolicySpec, run=None) -> tuple[float | None, list[dict]]:
    """Grid search of ``spec``'s weight on the tuning slice under the same scenario, with the
    grid its class gives (``Policy.grid_values``) and :func:`pick_weight`'s rule. ``run(policy, requests)
    -> records`` is the backend (default: the simulator). Memoised per experiment."""
    if spec.tuned_param is None:
        return None, []
    if spec.name in exp.weights:
        return exp.weights[spec.name], []
    if not exp.tune or not exp.tune_requests:
        return None, []
    if spec.name in exp.tuned:
        return exp.tuned[spec.name]
    grid = spec.cls.grid_values(exp.cfg.tuning)
    if run is None:
        actions = exp.actions(exp.tune_requests)
        run = lambda pol, reqs: Simulator(exp.cfg, reqs, pol, actions).run()  # noqa: E731
    inherited = inherited_weights(exp, spec, run)
    table = []
    for w in grid:
        recs = run(spec.make(float(w), exp.seed, exp.cfg.oracle.kind, **inherited), exp.tune_requests)
        table.append({"weight": float(w), "ttft_mean_s": float(np.mean([r.ttft_s for r in recs])),
                      "tbt_mean_ms": float(np.mean([r.tbt_mean_ms for r in recs]))})
    exp.tuned[spec.name] = result = (pick_weight(table, exp.cfg.tuning.tbt_tolerance_ms), table)
    return result


def run_simulation(exp: Experiment, progress: bool = True, log=print, shadow: bool = False,
                   links: LinkRecording | None = None, oracle_rows: dict | None = None
                   ) -> tuple[dict, dict[str, list[RequestRecord]]]:
    """Run every policy on the simulator; returns (policies section of summary, records).
    ``shadow``: a policy on a stale telemetry oracle also asks a fresh one at every decision, and
    its summary gains ``agreement`` (same tier, same instance as the fresh decision). ``links``:
    the run of ``links.policy`` records its per-link utilisation into it. A policy with an oracle
    gains ``oracle_error`` (its prices against the transfers' times, :mod:`scheduler.decision.oracle_error`),
    and ``oracle_rows`` (if given) its rows by policy."""
    actions = exp.actions()
    slo = exp.slo()
    out: dict[str, dict] = {}
    records: dict[str, list[RequestRecord]] = {}
    for spec in exp.policies:
        t0 = time.perf_counter()
        weight, table = tune_policy(exp, spec)
        tune_s = time.perf_counter() - t0
        if table:
            log(f"tuned {spec.name}: {spec.tuned_param}={weight:g} ({len(table)} grid points on "
                f"{len(exp.tune_requests)} held-out requests, {tune_s:.1f} s)")
        policy = spec.make(weight, exp.seed, exp.cfg.oracle.kind, **inherited_weights(exp, spec))
        t1 = time.perf_counter()
        stale = shadow and policy.oracle_kind in ("telemetry", "inflight") and exp.cfg.oracle.staleness_s > 0
        record = links is not None and spec.name == links.policy
        sim = Simulator(exp.cfg, exp.requests, policy, actions, progress=progress, shadow_fresh=stale,
                        record_telemetry=record)
        recs = sim.run()
        wall = time.perf_counter() - t1
        if links is not None and record:
            _fill_recording(links, sim)
        errors = sim.dispatch.oracle_errors()
        if errors and oracle_rows is not None:
            oracle_rows[spec.name] = errors
        out[spec.name] = policy_summary(recs, slo, policy.params(), table, round(wall, 3), after={
            "events": sim.events, "reroutes": sim.reroutes,
            "oracle_error": oracle_error.summarize(errors) if errors else None,
            "agreement": agreement_summary(sim.agreement) if shadow and policy.needs_oracle else None})
        records[spec.name] = recs
    return out, records


def agreement_summary(a: dict) -> dict:
    """A stale oracle's decisions against a fresh one's (the dispatcher's ``agreement`` counts):
    same tier, same instance, mean Kendall tau-b of the cost orderings (None without any)."""
    n = a["decisions"]
    return {"decisions": n, "same_tier_fraction": a["same_tier"] / n if n else 1.0,
            "same_instance_fraction": a["same_instance"] / n if n else 1.0,
            "kendall_tau": a["tau_sum"] / a["tau_n"] if a["tau_n"] else None,
            "kendall_tau_within_tier": a["tau_within_sum"] / a["tau_within_n"] if a["tau_within_n"] else None}


def _fill_recording(links: LinkRecording, sim: Simulator) -> None:
    """Copy the telemetry samples of ``sim`` (run with ``record_telemetry``) into ``links``."""
    samples = sim.telemetry.samples if sim.telemetry is not None else []
    links.link_names = [sim.tree.link_name(i) for i in range(sim.tree.n_links)]
    links.times_s = np.array([t for t, _ in samples], dtype=float)
    links.utilisation = (np.stack([u for _, u in samples]) if samples
                         else np.empty((0, sim.tree.n_links), dtype=np.float32))
