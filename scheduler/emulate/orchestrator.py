"""The ``emulate`` backend: the experiment replayed on the packet-level Mininet fabric.

Order of a run: refuse what the fabric cannot run faithfully (:func:`scheduler.emulate.emulable.check_emulable`:
the ``perfect`` oracle, one-way link failures, layer-wise streaming, background traffic over the
forwarding budget); run the same window on the simulator (reference figures and the tuned
weights); build the fabric (controller connected, routes installed, every tier pinged); start an
agent in every serving GPU host (prefill and decode instances: reserved GPUs serve nothing, their
hosts only carry the scenario's background senders and sinks); open persistent prefill -> decode
connections; calibrate the tiers KV transfers take under the placement (per-tier goodput and idle
transfer time against the simulator's prediction); then for each policy replay the trace window
in (optionally dilated) real time with the scenario's events executed on the fabric, the oracle
reading the controller's telemetry over REST, and ``--fault`` s injected along its clock
(:mod:`scheduler.emulate.faults`). Each step is one method of :class:`_EmulationRun` (the steps
of one run, in their order, read together).

Where the work happens: the orchestrator (``RealtimeReplay``) only decides and records. Before
each policy's replay :class:`AgentTransport` (``scheduler.emulate.transport``) resets every agent
(a fresh instance of its role, the run's config and time scale; all must answer), and per request
it sends ``expect`` to the decode agent and ``prefill`` to the prefill agent. The agents model
their instance's compute with the simulator's timing (``hosts.compute``), stream the KV bytes
through the fabric (after the prefill, or layer by layer with ``timing.kv_streaming =
"layer-wise"``) and report ``prefilled`` / ``received`` / ``first_token`` / ``finished``
(``hosts.messages``, mapped to the replay's events by ``replay_event``). Teardown (each step's
``with`` blocks; :class:`topology.fabric.Fabric` also on signals) removes everything the run made.
"""
from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from controller.process import controlled_fabric
from controller.settings import DEFAULT_OFP_PORT, DEFAULT_REST_PORT
from hosts.control import ControlServer
from hosts.framing import KV_PORT
from hosts.messages import Error, Report, Warm, Warmed
from scheduler.decision import oracle_error
from scheduler.decision.telemetry import TelemetryHistory
from scheduler.emulate import failures, faults
from scheduler.emulate.agreement import agreement, paired_agreement, transfer_agreement
from scheduler.emulate.calibration import calibrate, calibration_fits
from scheduler.emulate.emulable import BackgroundLoad, background_warning, check_emulable
from scheduler.emulate.fidelity import CpuMonitor, RttProbe, rtt_verdict
from scheduler.emulate.replay import Clock, EmulationError, RealtimeReplay
from scheduler.emulate.scenario_exec import ScenarioExecutor
from scheduler.emulate.telemetry_path import (
    AgeRecordingHistory,
    TelemetryPath,
    TelemetryPlan,
    age_summary,
    with_fallback,
)
from scheduler.emulate.transport import AgentTransport, TelemetryPoller  # (both also imported from here)
from scheduler.model.cluster import assign_roles, kv_tier_pairs
from scheduler.model.config import ExperimentConfig
from scheduler.model.records import RequestRecord
from scheduler.model.scenario import Action
from scheduler.policies import PolicySpec
from scheduler.results.summary import policy_summary
from scheduler.study.experiment import (
    Experiment,
    agreement_summary,
    inherited_weights,
    run_simulation,
    tune_policy,
)
from topology.fabric import Fabric
from topology.mininet_topo import DEFAULT_SCALE, link_capacity_bps
from topology.model import FatTree, peer_ip

AGENT_START_TIMEOUT_S = 60.0
"""Every agent must say hello within this after its start (64 Python processes on two cores)."""
WARM_TIMEOUT_S = 60.0
"""Every prefill agent must have opened its persistent connections within this."""
DRAIN_S = 1.0
"""Pause between policies so queues and background flows of one replay do not leak into the next."""


def _start_agents(fab: Fabric, tree: FatTree, gpus: Sequence[int], sock: Path, run_dir: Path) -> list:
    """An agent in the host of every GPU of ``gpus`` (the serving instances: reserved GPUs serve
    nothing, and the scenario executor starts their background senders and sinks itself)."""
    procs = []
    for g in gpus:
        name = tree.gpu_name(g)
        log = open(run_dir / f"agent-{name}.log", "ab")  # noqa: SIM115 - closed with the process; "ab": a revived agent appends
        # 0.0.0.0 inside the host's own network namespace: reachable only from the emulated
        # fabric, on both the NIC and the NVLink address.
        procs.append(fab.host(name).popen(
            [sys.executable, "-m", "hosts.agent", "--name", name, "--gpu", str(g), "--listen-host", "0.0.0.0",
             "--port", str(KV_PORT), "--control", str(sock)], stdout=log, stderr=log))
        log.close()
    return procs


def _median(xs: list[float]) -> float | None:
    return float(np.median(xs)) if xs else None


def _probe_pair(tree: FatTree, prefill: np.ndarray, reserved: np.ndarray | None = None) -> tuple[int, int]:
    """Two GPUs of one server whose NVLink path no KV transfer takes: two prefill GPUs (prefill
    instances never receive KV, and send it over NVLink only to decode GPUs), else two reserved
    GPUs (they serve nothing; the built-in scenarios' flows between them cross the fabric, not
    NVLink), else the first two prefill GPUs."""
    for group in (prefill, reserved if reserved is not None else np.zeros(0, dtype=int)):
        by_server: dict[int, list[int]] = {}
        for g in group:
            by_server.setdefault(int(g) // tree.gps, []).append(int(g))
        for gs in by_server.values():
            if len(gs) >= 2:
                return gs[0], gs[1]
    return int(prefill[0]), int(prefill[1]) if len(prefill) > 1 else int(prefill[0])


class _EventRouter:
    """The control server's ``on_event``: replies to ``warm`` (``Warmed``, or an ``Error`` about
    warming) are collected until every prefill agent has answered; every other report goes to
    the transport of the newest replay (none before the first: those reports are dropped)."""

    def __init__(self, expected_warm: int) -> None:
        self.warmed: list[Report] = []
        self.warm_done = threading.Event()
        self.transport: AgentTransport | None = None
        self._expected = expected_warm

    def expect_warm(self, n: int) -> None:
        """Collect ``n`` fresh warm replies (a revived agent's)."""
        self.warmed, self._expected = [], n
        self.warm_done.clear()

    def __call__(self, msg: Report) -> None:
        if isinstance(msg, Warmed) or (isinstance(msg, Error) and msg.reason.startswith("warm")):
            self.warmed.append(msg)
            if len(self.warmed) >= self._expected:
                self.warm_done.set()
        elif self.transport is not None:
            self.transport.on_event(msg)


def _warm_connections(control: ControlServer, tree: FatTree, prefill: np.ndarray, decode: np.ndarray,
                      router: _EventRouter, timeout_s: float = WARM_TIMEOUT_S) -> None:
    """Every prefill agent opens a persistent connection to every decode agent before the clock
    starts (a KV transfer engine keeps its connections), so transfers never wait for a TCP
    handshake, whose lost SYN behind a congested queue would cost a one-second timeout."""
    for p in prefill:
        control.send(tree.gpu_name(int(p)), Warm(tuple((peer_ip(tree, int(p), int(d)), KV_PORT) for d in decode)))
    if not router.warm_done.wait(timeout_s):
        raise EmulationError(f"only {len(router.warmed)}/{len(prefill)} agents opened their connections "
                             f"within {timeout_s:g} s")
    errors = [r for r in router.warmed if isinstance(r, Error)]
    if errors:
        raise EmulationError(f"opening persistent connections failed: {errors[0].agent}: {errors[0].reason}")


def _restore_links(executor: ScenarioExecutor) -> None:
    factors = executor.capacity_factor()[:-1]
    changed = tuple(int(i) for i in np.flatnonzero(factors != 1.0))
    if changed:
        executor.apply(Action(0.0, "link_capacity", links=changed, factor=1.0))


@dataclasses.dataclass(frozen=True)
class _Roles:
    """The placement's GPUs: prefill, decode and reserved instances, the serving ones (each runs
    an agent) and one (prefill, decode) pair per tier KV transfers take (what calibration measures)."""

    prefill: np.ndarray
    decode: np.ndarray
    reserved: np.ndarray
    serving: list[int]
    kv_pairs: dict[int, tuple[int, int]]

    @classmethod
    def of(cls, tree: FatTree, cfg: ExperimentConfig) -> _Roles:
        c = cfg.cluster
        prefill, decode, reserved = assign_roles(tree, c.placement, c.prefill_fraction, c.reserved_servers_per_pod)
        serving = sorted(int(g) for g in np.concatenate([prefill, decode]))
        return cls(prefill, decode, reserved, serving, kv_tier_pairs(tree, prefill, decode))


def _simulate_first(exp: Experiment, log: Callable[[str], Any]) -> tuple[dict, Experiment]:
    """The simulator's run of the same window, and ``exp`` with its tuned weights. It comes first:
    cheap, it fails fast on bad input, and its tuned weights (grid search on the held-out slice,
    same scenario) are the emulated policies' too."""
    log("emulate: simulating the same window first (reference figures and tuned weights)")
    sim_policies, _ = run_simulation(exp, progress=False, log=lambda m: None)
    tuned = {spec.name: sim_policies[spec.name]["params"][spec.tuned_param] for spec in exp.policies
             if spec.tuned_param and spec.tuned_param in (sim_policies[spec.name].get("params") or {})}
    return sim_policies, dataclasses.replace(exp, weights={**tuned, **exp.weights})


def _fidelity(cpu: dict, baseline_rtt: list[float], run_rtt: list[float], probe: tuple[str, str]) -> dict:
    """The fidelity evidence: the CPU monitor's summary (its verdict kept as ``cpu_note``) judged
    by the RTT probe (idle baseline against the run), which decides ``forwarding_saturated``."""
    fid = cpu
    fid["cpu_note"] = fid.pop("warning")
    fid.pop("forwarding_saturated")
    fid["forwarding_saturated"], fid["warning"] = rtt_verdict(baseline_rtt, run_rtt)
    fid["probe"] = {"src": probe[0], "dst": probe[1],
                    "idle_rtt_ms_p50": _median(baseline_rtt), "run_rtt_ms_p50": _median(run_rtt),
                    "run_rtt_ms_p99": float(np.percentile(run_rtt, 99)) if run_rtt else None,
                    "replies": len(run_rtt)}
    return fid


@dataclasses.dataclass(frozen=True)
class Replay:
    """One replay of the run: ``spec`` under ``label`` (its key in the results), with ``cfg``
    instead of the experiment's (e.g. another ``oracle.staleness_s``) and, with ``shadow``, a fresh
    oracle beside a stale one (the decisions' agreement)."""

    label: str
    spec: PolicySpec
    cfg: ExperimentConfig | None = None
    shadow: bool = False
    scrape_interval_s: float | None = None
    """Read telemetry through a Prometheus scraping every this many s, started for this replay
    (its shadow, if any, on the controller's REST: fresh)."""


class _EmulationRun:
    """One ``emulate`` run: its inputs, its temporary folder, what it measures, and its steps,
    one method each (fabric, agents, calibration, replays). Every step releases what it opened
    by a ``with`` (fabric, control server, instruments), on errors and Ctrl-C too."""

    def __init__(self, exp: Experiment, scale: float, time_scale: float, nominal: dict[str, float],
                 load: BackgroundLoad, sim_policies: dict, progress: bool, log: Callable[[str], Any],
                 fault_list: Sequence[faults.Fault] = (), plan: Sequence[Replay] | None = None,
                 telemetry: TelemetryPlan | None = None) -> None:
        self.exp, self.cfg, self.tree = exp, exp.cfg, exp.tree
        self.telemetry_plan = telemetry or TelemetryPlan()
        self.telemetry_path: TelemetryPath | None = None
        self.rest_port = DEFAULT_REST_PORT
        self.faults = list(fault_list)
        self.plan = list(plan) if plan is not None else [Replay(spec.name, spec) for spec in exp.policies]
        self.scale, self.time_scale, self.nominal, self.load = scale, time_scale, nominal, load
        self.sim_policies, self.progress, self.log = sim_policies, progress, log
        self.actions = exp.actions()
        self.roles = _Roles.of(self.tree, self.cfg)
        self.run_dir = Path(tempfile.mkdtemp(prefix="netkv-emulate-"))
        self.evidence: dict = {"run_dir": str(self.run_dir), "scale": scale, "time_scale": time_scale,
                               "hosts": {"agents": len(self.roles.serving),
                                         "reserved_without_agent": int(self.roles.reserved.size)}}
        self.policies: dict[str, dict] = {}
        self.agent_procs: dict[str, Any] = {}  # GPU host name -> its agent's process
        self.records: dict[str, list[RequestRecord]] = {}
        self.evidence.setdefault("oracle_rows", {})  # policy -> its oracle's prices vs measured transfers

    def on_fabric(self, ofp_port: int, rest_port: int) -> None:
        """Build the fabric, run every other step on it, tear it down (both timed)."""
        tree, cfg = self.tree, self.cfg
        self.rest_port = rest_port
        t0 = time.monotonic()
        with controlled_fabric(tree, self.scale / self.time_scale, self.run_dir / "fabric", ofp_port, rest_port,
                    cfg.oracle.poll_interval_s) as fab:
            self.evidence["fabric"] = {"up_s": round(time.monotonic() - t0, 2), "timings": dict(fab.timings),
                                       "reachability": {str(k): v for k, v in fab.reachability.items()}}
            self.log(f"emulate: fabric up in {self.evidence['fabric']['up_s']} s ({tree.n_gpus} hosts, "
                     f"{len(tree.switch_names())} switches); starting agents")
            self.with_agents(fab)
            t2 = time.monotonic()
        self.evidence["fabric"]["down_s"] = round(time.monotonic() - t2, 2)

    def with_agents(self, fab: Fabric) -> None:
        """Start, connect and warm the agents, calibrate, then replay every policy with the
        instruments (telemetry poller, CPU monitor, RTT probe) running. Closing the control
        server makes every agent exit."""
        tree, roles, sock = self.tree, self.roles, self.run_dir / "control.sock"
        router = _EventRouter(len(roles.prefill))
        with ControlServer(sock, on_event=router, queue_events=False) as control:
            procs = _start_agents(fab, tree, roles.serving, sock, self.run_dir)
            self.agent_procs = {tree.gpu_name(g): proc for g, proc in zip(roles.serving, procs)}
            control.wait_hello([tree.gpu_name(g) for g in roles.serving], timeout=AGENT_START_TIMEOUT_S)
            _warm_connections(control, tree, roles.prefill, roles.decode, router)
            probe_src, probe_dst = _probe_pair(tree, roles.prefill, roles.reserved)
            probe = RttProbe(fab.host(tree.gpu_name(probe_src)), peer_ip(tree, probe_src, probe_dst))
            baseline_rtt = probe.measure(2.0)
            self.evidence["calibration"] = self.calibrate(fab, control)
            monitor = CpuMonitor()
            with ExitStack() as running:  # unwound in reverse: probe, CPU monitor, poller, telemetry path
                path = self.telemetry_path = TelemetryPath(
                    self.telemetry_plan, fab, self.rest_port, self.cfg.oracle.poll_interval_s,
                    self.scale / self.time_scale, self.time_scale, self.run_dir, self.log).enter(running)
                poller = TelemetryPoller(fab, tree, self.nominal, self.cfg.oracle.poll_interval_s, fetch=path.fetch())
                poller.start()
                running.callback(poller.stop)
                running.enter_context(monitor)
                probe.start()
                running.callback(probe.stop)
                lags = self.replay_all(fab, control, router, poller)
                self.evidence["telemetry_path"] = path.report()  # before its parts stop
                run_rtt = probe.stop()
                probe_names = (tree.gpu_name(probe_src), tree.gpu_name(probe_dst))
                fid = _fidelity(monitor.stop(), baseline_rtt, run_rtt, probe_names)
            fid["replay_lag_s"] = lags
            fid["background_load"] = self.load.to_dict()
            fid["background_note"] = background_warning(self.load)
            fid["telemetry_poll_errors"] = poller.errors
            self.evidence["fidelity"] = fid
            self.evidence["telemetry_csv"] = poller.csv_bytes()
            self.evidence["telemetry_rows"] = poller.rows

    def kill_agent(self, host: str) -> None:
        """SIGKILL the agent of ``host`` (an agent fault): its sockets close, nothing says goodbye."""
        proc = self.agent_procs.get(host)
        if proc is None:
            raise EmulationError(f"no agent runs in {host}")
        proc.kill()

    def revive_agent(self, fab: Fabric, control: ControlServer, router: _EventRouter, host: str) -> None:
        """Start ``host``'s agent again after a fault, connected (and, a prefill agent, warmed)."""
        tree = self.tree
        old = self.agent_procs.get(host)
        if old is not None:
            old.wait(timeout=10)
        control.wait_disconnect(host, timeout=10)
        g = tree.gpu_index(host)
        (proc,) = _start_agents(fab, tree, [g], self.run_dir / "control.sock", self.run_dir)
        self.agent_procs[host] = proc
        control.wait_hello([host], timeout=AGENT_START_TIMEOUT_S)
        prefill = [int(x) for x in self.roles.prefill]
        if g in prefill:  # its connections to every decode instance
            router.expect_warm(1)
            control.send(host, Warm(tuple((peer_ip(tree, g, int(d)), KV_PORT) for d in self.roles.decode)))
        else:  # every prefill instance's connection to it (the dead one is dropped from their pools)
            router.expect_warm(len(prefill))
            for p in prefill:
                control.send(tree.gpu_name(p), Warm(((peer_ip(tree, p, g), KV_PORT),)))
        if not router.warm_done.wait(WARM_TIMEOUT_S):
            raise EmulationError(f"connections of the revived agent of {host} not open in {WARM_TIMEOUT_S:g} s")
        self.log(f"emulate: agent of {host} started again")

    def calibrate(self, fab: Fabric, control: ControlServer) -> dict:
        """Goodput and idle transfer time of every tier KV transfers take, against the simulator."""
        cfg, pairs = self.cfg, self.roles.kv_pairs
        self.log(f"emulate: calibrating tier(s) {', '.join(map(str, pairs))}, the ones KV transfers take "
                 f"under placement {cfg.cluster.placement} (goodput and idle transfer time vs the simulator)")
        cal = calibrate(fab, self.tree, control, KV_PORT, self.scale, self.time_scale, cfg.model.kv_bytes_per_token,
                        cfg.timing.transfer_setup_s, pairs=pairs)
        cal["skipped_tiers"] = {str(t): f"no prefill -> decode pair on this tier under placement "
                                        f"{cfg.cluster.placement}: no KV transfer takes it"
                                for t in range(4) if t not in pairs}
        return cal

    def replay_all(self, fab: Fabric, control: ControlServer, router: _EventRouter,
                   poller: TelemetryPoller) -> dict[str, dict]:
        """Every policy's replay in turn, a drain pause after each; returns their replay lags."""
        lags = {}
        for k, item in enumerate(self.plan):
            summary, recs = self.replay_one(k, item, fab, control, router, poller)
            lags[item.label] = summary["replay_lag_s"]
            self.policies[item.label] = summary
            self.records[item.label] = recs
            time.sleep(DRAIN_S)
        return lags

    def replay_one(self, k: int, item: Replay, fab: Fabric, control: ControlServer, router: _EventRouter,
                   poller: TelemetryPoller) -> tuple[dict, list[RequestRecord]]:
        """The ``k``-th replay of the plan on the fabric: its summary and records. The scenario
        executor is closed and every link's capacity restored however it ends."""
        exp, spec = self.exp, item.spec
        cfg = item.cfg or self.cfg
        scrape = item.scrape_interval_s
        if scrape is None and self.telemetry_plan.source == "prometheus":
            scrape = self.telemetry_plan.scrape_interval_s
        cfg = with_fallback(cfg, scrape)  # through Prometheus an outage is scrapes missed, not polls
        weight, table = tune_policy(exp, spec)  # the simulator's tuned weight (see _simulate_first)
        table = self.sim_policies.get(spec.name, {}).get("tuning", table)
        policy = spec.make(weight, exp.seed, cfg.oracle.kind, **inherited_weights(exp, spec))
        transport = router.transport = AgentTransport(control, self.tree)
        executor = ScenarioExecutor(fab, self.tree, self.scale, self.time_scale, self.run_dir)
        history = AgeRecordingHistory(max_age_s=cfg.oracle.staleness_s + 10.0, staleness_s=cfg.oracle.staleness_s)
        path = self.telemetry_path
        feed = ExitStack()
        fetch, fresh = None, None
        if item.scrape_interval_s is not None and path is not None:
            fetch = path.replay_fetch(feed, item.scrape_interval_s)
            fresh = TelemetryHistory(max_age_s=10.0)
        clock = Clock(self.time_scale)
        injector = faults.FaultInjector(fab, self.faults, clock, self.log, kill_agent=self.kill_agent)
        replay = RealtimeReplay(cfg, exp.requests, policy, self.actions, transport, executor, history,
                                clock, byte_scale=self.scale, transfer_id_base=(k + 1) * 10**9,
                                progress=self.progress, shadow=item.shadow, lost_hosts=injector.lost,
                                oracle_factory=path.oracle_factory() if path is not None else None,
                                fresh_source=fresh)
        poller.attach(item.label, clock, history, executor, fetch=fetch, fresh_history=fresh)
        self.log(f"emulate: replaying {len(exp.requests)} requests with {item.label} "
                 f"(~{exp.requests[-1].arrival_s * self.time_scale:.0f} s of wall time)")
        t1 = time.monotonic()
        injector.start()
        try:
            recs = replay.run()
        finally:
            fault_events = injector.stop()  # a killed controller is back before anything else
            poller.detach()
            feed.close()  # this replay's own Prometheus, if any
            executor.close()
            _restore_links(executor)
        for host in sorted(injector.killed):  # every policy meets the same fault: the agent is back
            self.revive_agent(fab, control, router, host)
        reroute = None
        if executor.link_events:  # real link failures: what the controller did about them
            reroutes = injector.reroutes_before + failures.controller_reroutes(fab, len(executor.link_events)
                                                                       - len(injector.reroutes_before))
            recs = failures.stall_seconds(self.tree, recs, executor.link_events, reroutes, clock.virtual)
            reroute = failures.reroute_report(executor.link_events, reroutes, cfg.oracle.poll_interval_s,
                                              clock.virtual)
        lost = replay.dispatch.failures()
        failed = None
        if lost or injector.killed:
            by: dict[str, int] = {}
            for f in lost:
                by[f["reason"]] = by.get(f["reason"], 0) + 1
            failed = {"count": len(lost), "of": len(exp.requests), "by_reason": by, "requests": lost[:50]}
        errors = replay.dispatch.oracle_errors()  # the oracle's prices against the agents' transfers
        if errors:
            self.evidence["oracle_rows"][item.label] = errors
        summary = policy_summary(recs, exp.slo(), policy.params(), table, round(time.monotonic() - t1, 2), measured={
            "reroute": reroute, "faults": fault_events if self.faults else None, "failed_requests": failed,
            "telemetry_fallback": faults.fallback_summary(replay.dispatch.oracle),
            "telemetry_age_at_decision_s": age_summary(history.ages)}, after={
            "replay_lag_s": {"p50": float(np.percentile(replay.lag_s, 50)),
                             "p99": float(np.percentile(replay.lag_s, 99)), "max": float(np.max(replay.lag_s))},
            "agreement": agreement_summary(replay.dispatch.agreement) if item.shadow else None,
            "oracle_error": oracle_error.summarize(errors, calibration_fits(self.evidence.get("calibration")))
            if errors else None})
        return summary, recs


def run_emulation(exp: Experiment, scale: float = DEFAULT_SCALE, time_scale: float = 1.0,
                  ofp_port: int = DEFAULT_OFP_PORT, rest_port: int = DEFAULT_REST_PORT, progress: bool = True,
                  log=print,
                  keep_failed_logs: bool = True, fault_list: Sequence[faults.Fault] = (),
                  plan: Sequence[Replay] | None = None, telemetry: TelemetryPlan | None = None
                  ) -> tuple[dict, dict[str, list[RequestRecord]], dict]:
    """Returns (policies section, records, evidence) where evidence holds calibration, telemetry
    rows, fidelity, timings, the simulator's reference figures and the agreement check. The run's
    logs (controller, agents, background flows) live in a temporary folder that is removed, or
    kept for diagnosis when the run fails and ``keep_failed_logs`` (not when it is interrupted)."""
    nominal = link_capacity_bps(exp.tree, scale / time_scale)  # validates the scale before anything starts
    load = check_emulable(exp, scale, time_scale)  # what the fabric cannot run faithfully: refused here
    sim_policies, exp = _simulate_first(exp, log)
    run = _EmulationRun(exp, scale, time_scale, nominal, load, sim_policies, progress, log, fault_list, plan,
                        telemetry)
    ok = False
    try:
        run.on_fabric(ofp_port, rest_port)
        ok = True
    except (KeyboardInterrupt, SystemExit):
        keep_failed_logs = False  # stopped on purpose (a stop signal): nothing to diagnose, nothing left
        raise
    finally:
        if ok or not keep_failed_logs:
            shutil.rmtree(run.run_dir, ignore_errors=True)
        else:
            log(f"emulate: logs of the failed run kept in {run.run_dir}")
    evidence = run.evidence
    evidence["simulate_reference"] = sim_policies
    evidence["agreement"] = agreement(run.policies, sim_policies)
    evidence["transfer_agreement"] = transfer_agreement(run.policies, sim_policies)
    evidence["paired_transfer_agreement"] = paired_agreement(exp, run.records)
    return run.policies, run.records, evidence
