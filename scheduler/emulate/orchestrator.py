"""The ``emulate`` backend: the experiment replayed on the packet-level Mininet fabric.

Order of a run: refuse what the fabric cannot run faithfully (:func:`scheduler.emulate.emulable.check_emulable`:
the ``perfect`` oracle, links taken down, layer-wise streaming, background traffic over the
forwarding budget); run the same window on the simulator (reference figures and the tuned
weights); build the fabric (controller connected, routes installed, every tier pinged); start an
agent in every serving GPU host (prefill and decode instances: reserved GPUs serve nothing, their
hosts only carry the scenario's background senders and sinks); open persistent prefill -> decode
connections; calibrate the tiers KV transfers take under the placement (per-tier goodput and idle
transfer time against the simulator's prediction); then for each policy replay the trace window
in (optionally dilated) real time with the scenario's events executed on the fabric, the oracle
reading the controller's telemetry over REST.

Where the work happens: the orchestrator (``RealtimeReplay``) only decides and records. Before
each policy's replay :class:`AgentTransport` resets every agent (a fresh instance of its role, the
run's config and time scale; all must answer), and per request it sends ``expect`` to the decode
agent and ``prefill`` to the prefill agent. The agents model their instance's compute with the
simulator's timing (``hosts.compute``), stream the KV bytes through the fabric (after the prefill,
or layer by layer with ``timing.kv_streaming = "layer-wise"``) and report ``prefilled`` /
``received`` / ``first_token`` / ``finished``, parsed into the replay's events (``hosts.events``).
Teardown (in ``finally`` and on signals, by :class:`topology.fabric.Fabric`) removes every bridge,
veth, namespace and process the run created.
"""
from __future__ import annotations

import dataclasses
import queue
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from scheduler.emulate.calibration import calibrate
from hosts.control import ControlError, ControlServer
from scheduler.emulate.emulable import background_warning, check_emulable
from hosts.events import event_from_message
from scheduler.emulate.fidelity import CpuMonitor, RttProbe, rtt_verdict
from hosts.framing import KV_PORT
from scheduler.emulate.scenario_exec import ScenarioExecutor
from scheduler.cluster import assign_roles
from scheduler.config import ExperimentConfig
from scheduler.experiment import Experiment, inherited_weights, make_policy, run_simulation, tune_policy
from scheduler.metrics import compare, summarize_policy
from scheduler.emulate.replay import AgentEvent, AgentFailure, Clock, EmulationError, RealtimeReplay
from scheduler.records import RequestRecord
from scheduler.scenario import Action
from scheduler.telemetry import TelemetryHistory, snapshot_from_json
from topology.fabric import Fabric
from topology.mininet_topo import DEFAULT_SCALE, link_capacity_bps
from topology.model import FatTree, peer_ip

AGENT_START_TIMEOUT_S = 60.0
RESET_TIMEOUT_S = 60.0
"""Every agent must answer ``reset`` within this (the first one imports the timing model)."""
DRAIN_S = 1.0
"""Pause between policies so queues and background flows of one replay do not leak into the next."""


class AgentTransport:
    """The host agents as :class:`RealtimeReplay` drives them: commands over the control channel
    (``reset``, ``expect``, ``prefill``), agent reports parsed into the replay's events.

    ``on_event`` must receive every message of the control server (it runs on the server's
    reader threads). A KV stream that fails is reported by both its sender and its receiver:
    only the first report is queued."""

    def __init__(self, control: ControlServer, tree: FatTree, port: int = KV_PORT,
                 reset_timeout_s: float = RESET_TIMEOUT_S,
                 address: Callable[[int, int], tuple[str, int]] | None = None) -> None:
        """``address(src, dst)`` is where GPU ``src``'s agent reaches GPU ``dst``'s data port;
        by default the fabric address of the pair (NVLink inside a server) and ``port``."""
        self.control = control
        self.tree = tree
        self.port = port
        self.address = address or (lambda src, dst: (peer_ip(tree, src, dst), port))
        self.reset_timeout_s = reset_timeout_s
        self.events: queue.Queue[AgentEvent] = queue.Queue()
        self._failed: set[int] = set()
        self._lock = threading.Condition()
        self._resetting: set[str] = set()
        self._reset_errors: list[str] = []

    def _send(self, gpu: int, msg: dict) -> None:
        try:
            self.control.send(self.tree.gpu_name(gpu), msg)
        except ControlError as exc:
            raise EmulationError(f"{msg['op']} to {self.tree.gpu_name(gpu)}: {exc}") from exc

    def reset(self, cfg: ExperimentConfig, prefill_gpus: Sequence[int], decode_gpus: Sequence[int],
              time_scale: float) -> None:
        """Give every agent a fresh instance of its role; returns when all have answered."""
        roles = {**{int(g): "prefill" for g in prefill_gpus}, **{int(g): "decode" for g in decode_gpus}}
        config = cfg.to_dict()
        with self._lock:
            self._resetting = {self.tree.gpu_name(g) for g in roles}
            self._reset_errors = []
        for g, role in roles.items():
            self._send(g, {"op": "reset", "config": config, "role": role, "time_scale": time_scale})
        deadline = time.monotonic() + self.reset_timeout_s
        with self._lock:
            while self._resetting and not self._reset_errors:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(self._resetting)
                    raise EmulationError(f"{len(missing)} agent(s) did not answer reset within "
                                         f"{self.reset_timeout_s:g} s: {', '.join(missing[:10])}")
                self._lock.wait(left)
            if self._reset_errors:
                raise EmulationError(f"reset failed: {self._reset_errors[0]}")

    def prefill(self, transfer_id: int, request_id: int, src: int, dst: int, input_tokens: int,
                cached_tokens: int, nbytes: int) -> None:
        ip, port = self.address(src, dst)
        self._send(src, {"op": "prefill", "transfer_id": transfer_id, "request_id": request_id,
                         "input_tokens": input_tokens, "cached_tokens": cached_tokens, "bytes": nbytes,
                         "dst_ip": ip, "dst_port": port, "dst_gpu": dst})

    def expect(self, transfer_id: int, request_id: int, dst: int, input_tokens: int,
               output_tokens: int) -> None:
        self._send(dst, {"op": "expect", "transfer_id": transfer_id, "request_id": request_id,
                         "input_tokens": input_tokens, "output_tokens": output_tokens})

    def on_event(self, msg: dict) -> None:
        ev, agent = msg.get("ev"), msg.get("agent")
        with self._lock:
            if self._resetting:
                if ev == "reset" and agent in self._resetting:
                    self._resetting.discard(agent)
                    self._lock.notify_all()
                    return
                if ev == "error" and str(msg.get("reason", "")).startswith("reset"):
                    self._reset_errors.append(f"{agent}: {msg.get('reason')}")
                    self._lock.notify_all()
                    return
        parsed = event_from_message(msg)
        if parsed is None:
            return
        if isinstance(parsed, AgentFailure) and parsed.transfer_id is not None:
            with self._lock:  # sender and receiver may both report an error: first one wins
                if parsed.transfer_id in self._failed:
                    return
                self._failed.add(parsed.transfer_id)
        self.events.put(parsed)


class TelemetryPoller:
    """Polls the controller's REST telemetry every poll interval into the current replay's
    history (virtual time), overlaying the capacity factors the scenario executor set, and keeps
    every sample for telemetry.csv."""

    def __init__(self, fab: Fabric, tree: FatTree, nominal_bps: dict[str, float], interval_s: float) -> None:
        self.fab = fab
        self.tree = tree
        self.nominal = nominal_bps
        self.interval = interval_s
        self.rows: list[tuple] = []  # (policy, virtual time s, wall time, utilisation array)
        self.errors = 0
        self._target: tuple[str, Clock, TelemetryHistory, ScenarioExecutor] | None = None
        self._pending: tuple | None = None  # (snapshot, wall time) polled before the replay's clock started
        self._stop = threading.Event()
        self._last_time: float | None = None
        self._thread = threading.Thread(target=self._loop, name="telemetry-poller", daemon=True)

    def attach(self, policy: str, clock: Clock, history: TelemetryHistory, executor: ScenarioExecutor) -> None:
        self._pending = None
        self._target = (policy, clock, history, executor)

    def detach(self) -> None:
        self._target = None
        self._pending = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval / 2):
            target = self._target
            if target is None:
                continue
            try:
                payload = self.fab.telemetry(timeout_s=1.0)
            except Exception:  # noqa: BLE001 - a missed poll is counted, the replay goes on
                self.errors += 1
                continue
            if payload.get("time") is None or payload["time"] == self._last_time:
                continue
            self._last_time = payload["time"]
            policy, clock, history, executor = target
            snap = snapshot_from_json(self.tree, payload, self.nominal)
            snap.capacity_factor = executor.capacity_factor()
            if not clock.started:
                # the replay is still preparing (flow slots, pre-roll, agent reset): its virtual
                # times are not known yet; the newest such snapshot enters the history stamped
                # before 0 once the clock starts (the pre-rolled flows' load, seen at t = 0)
                self._pending = (snap, float(payload["time"]))
                continue
            pending, self._pending = self._pending, None
            for snap_, wall in ([pending] if pending is not None else []) + [(snap, float(payload["time"]))]:
                snap_.time_s = clock.virtual(wall)
                history.add(snap_)
                self.rows.append((policy, snap_.time_s, wall, snap_.utilisation[:-1].copy()))

    def csv_bytes(self) -> bytes:
        lines = ["policy,time_s,link,utilisation"]
        for policy, t, _, util in self.rows:
            for i in np.flatnonzero(util > 0.001):
                lines.append(f"{policy},{t:.3f},{self.tree.link_name(int(i))},{util[i]:.4f}")
        return ("\n".join(lines) + "\n").encode()


def _start_agents(fab: Fabric, tree: FatTree, gpus: Sequence[int], sock: Path, run_dir: Path) -> list:
    """An agent in the host of every GPU of ``gpus`` (the serving instances: reserved GPUs serve
    nothing, and the scenario executor starts their background senders and sinks itself)."""
    procs = []
    for g in gpus:
        name = tree.gpu_name(g)
        log = open(run_dir / f"agent-{name}.log", "wb")  # noqa: SIM115 - closed with the process
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


def kv_tier_pairs(tree: FatTree, prefill: np.ndarray, decode: np.ndarray) -> dict[int, tuple[int, int]]:
    """One (prefill GPU, decode GPU) pair per tier some KV transfer of this placement can take: the
    paths calibration measures (``by-rack`` has none on tiers 0 and 1, its prefill racks holding no
    decode instance). The first prefill GPU that has a decode GPU at that tier, and the first such
    decode GPU."""
    out: dict[int, tuple[int, int]] = {}
    for p in prefill:
        tiers = tree.tiers(int(p), decode)
        for tier in np.unique(tiers):
            out.setdefault(int(tier), (int(p), int(decode[np.flatnonzero(tiers == tier)[0]])))
    return dict(sorted(out.items()))


def _warm_connections(control: ControlServer, tree: FatTree, prefill: np.ndarray, decode: np.ndarray,
                      done: threading.Event, replies: list[dict], timeout_s: float = 60.0) -> None:
    """Every prefill agent opens a persistent connection to every decode agent before the clock
    starts (a KV transfer engine keeps its connections), so transfers never wait for a TCP
    handshake, whose lost SYN behind a congested queue would cost a one-second timeout."""
    for p in prefill:
        peers = [[peer_ip(tree, int(p), int(d)), KV_PORT] for d in decode]
        control.send(tree.gpu_name(int(p)), {"op": "warm", "peers": peers})
    if not done.wait(timeout_s):
        raise EmulationError(f"only {len(replies)}/{len(prefill)} agents opened their connections within {timeout_s:g} s")
    errors = [r for r in replies if r.get("ev") == "error"]
    if errors:
        raise EmulationError(f"opening persistent connections failed: {errors[0].get('agent')}: {errors[0].get('reason')}")


def _restore_links(executor: ScenarioExecutor) -> None:
    factors = executor.capacity_factor()[:-1]
    changed = tuple(int(i) for i in np.flatnonzero(factors != 1.0))
    if changed:
        executor.apply(Action(0.0, "link_capacity", links=changed, factor=1.0))


def run_emulation(exp: Experiment, scale: float = DEFAULT_SCALE, time_scale: float = 1.0,
                  ofp_port: int = 6653, rest_port: int = 8080, progress: bool = True, log=print,
                  keep_failed_logs: bool = True) -> tuple[dict, dict[str, list[RequestRecord]], dict]:
    """Returns (policies section, records, evidence) where evidence holds calibration, telemetry
    rows, fidelity, timings, the simulator's reference figures and the agreement check. The run's
    logs (controller, agents, background flows) live in a temporary folder that is removed, or
    kept for diagnosis when the run fails and ``keep_failed_logs`` (not when it is interrupted)."""
    tree = exp.tree
    cfg = exp.cfg
    fabric_scale = scale / time_scale
    nominal = link_capacity_bps(tree, fabric_scale)  # validates the scale before anything starts
    load = check_emulable(exp, scale, time_scale)  # what the fabric cannot run faithfully: refused here
    actions = exp.actions()
    # The simulator's run of the same window comes first: cheap, it fails fast on bad input, and its
    # tuned weights (grid search on the held-out slice, same scenario) are the emulated policies' too.
    log("emulate: simulating the same window first (reference figures and tuned weights)")
    sim_policies, _ = run_simulation(exp, progress=False, log=lambda m: None)
    tuned = {spec.name: sim_policies[spec.name]["params"][spec.tuned_param] for spec in exp.policies
             if spec.tuned_param and spec.tuned_param in (sim_policies[spec.name].get("params") or {})}
    exp = dataclasses.replace(exp, weights={**tuned, **exp.weights})
    prefill_gpus, decode_gpus, reserved_gpus = assign_roles(tree, cfg.cluster.placement, cfg.cluster.prefill_fraction,
                                                            cfg.cluster.reserved_servers_per_pod)
    serving = sorted(int(g) for g in np.concatenate([prefill_gpus, decode_gpus]))
    kv_pairs = kv_tier_pairs(tree, prefill_gpus, decode_gpus)
    run_dir = Path(tempfile.mkdtemp(prefix="netkv-emulate-"))
    evidence: dict = {"run_dir": str(run_dir), "scale": scale, "time_scale": time_scale,
                      "hosts": {"agents": len(serving), "reserved_without_agent": int(reserved_gpus.size)}}
    policies: dict[str, dict] = {}
    records: dict[str, list[RequestRecord]] = {}
    monitor = CpuMonitor(interval_s=0.5)
    monitoring = False
    ok = False
    try:
        t0 = time.monotonic()
        with Fabric(tree, fabric_scale, run_dir / "fabric", ofp_port, rest_port, cfg.oracle.poll_interval_s) as fab:
            evidence["fabric"] = {"up_s": round(time.monotonic() - t0, 2), "timings": dict(fab.timings),
                                  "reachability": {str(k): v for k, v in fab.reachability.items()}}
            log(f"emulate: fabric up in {evidence['fabric']['up_s']} s ({tree.n_gpus} hosts, "
                f"{len(tree.switch_names())} switches); starting agents")
            transports: list[AgentTransport] = []
            warmed: list[dict] = []
            warm_done = threading.Event()

            def dispatch(msg: dict) -> None:
                if msg.get("ev") == "warmed" or (msg.get("ev") == "error" and str(msg.get("reason", "")).startswith("warm")):
                    warmed.append(msg)
                    if len(warmed) >= len(prefill_gpus):
                        warm_done.set()
                elif transports:
                    transports[-1].on_event(msg)

            with ControlServer(run_dir / "control.sock", on_event=dispatch, queue_events=False) as control:
                _start_agents(fab, tree, serving, run_dir / "control.sock", run_dir)
                control.wait_hello([tree.gpu_name(g) for g in serving], timeout=AGENT_START_TIMEOUT_S)
                _warm_connections(control, tree, prefill_gpus, decode_gpus, warm_done, warmed)
                probe_src, probe_dst = _probe_pair(tree, prefill_gpus, reserved_gpus)
                probe = RttProbe(fab.host(tree.gpu_name(probe_src)), peer_ip(tree, probe_src, probe_dst))
                baseline_rtt = probe.measure(2.0)
                log(f"emulate: calibrating tier(s) {', '.join(map(str, kv_pairs))}, the ones KV transfers take "
                    f"under placement {cfg.cluster.placement} (goodput and idle transfer time vs the simulator)")
                cal = calibrate(fab, tree, control, KV_PORT, scale, time_scale, cfg.model.kv_bytes_per_token,
                                cfg.timing.transfer_setup_s, pairs=kv_pairs)
                cal["skipped_tiers"] = {str(t): f"no prefill -> decode pair on this tier under placement "
                                                f"{cfg.cluster.placement}: no KV transfer takes it"
                                        for t in range(4) if t not in kv_pairs}
                evidence["calibration"] = cal
                poller = TelemetryPoller(fab, tree, nominal, cfg.oracle.poll_interval_s)
                poller.start()
                monitor.start()
                monitoring = True
                probe.start()
                lags = {}
                try:
                    for k, cls in enumerate(exp.policies):
                        weight, table = tune_policy(exp, cls)  # the simulator's tuned weight (above)
                        table = sim_policies[cls.name].get("tuning", table)
                        policy = make_policy(cls, weight, exp.seed, cfg, inherited_weights(exp, cls))
                        transport = AgentTransport(control, tree)
                        transports.append(transport)
                        executor = ScenarioExecutor(fab, tree, scale, time_scale, run_dir)
                        history = TelemetryHistory(max_age_s=cfg.oracle.staleness_s + 10.0)
                        clock = Clock(time_scale)
                        replay = RealtimeReplay(cfg, exp.requests, policy, actions, transport, executor, history,
                                                clock, byte_scale=scale, transfer_id_base=(k + 1) * 10**9,
                                                progress=progress)
                        poller.attach(cls.name, clock, history, executor)
                        log(f"emulate: replaying {len(exp.requests)} requests with {cls.name} "
                            f"(~{exp.requests[-1].arrival_s * time_scale:.0f} s of wall time)")
                        t1 = time.monotonic()
                        try:
                            recs = replay.run()
                        finally:
                            poller.detach()
                            executor.close()
                            _restore_links(executor)
                        summary = summarize_policy(recs, exp.slo())
                        summary["params"] = policy.params()
                        summary["tuning"] = table
                        summary["wall_s"] = round(time.monotonic() - t1, 2)
                        summary["replay_lag_s"] = {"p50": float(np.percentile(replay.lag_s, 50)),
                                                   "p99": float(np.percentile(replay.lag_s, 99)),
                                                   "max": float(np.max(replay.lag_s))}
                        lags[cls.name] = summary["replay_lag_s"]
                        policies[cls.name] = summary
                        records[cls.name] = recs
                        time.sleep(DRAIN_S)
                finally:
                    run_rtt = probe.stop()
                    evidence["fidelity"] = fid = monitor.stop()
                    monitoring = False
                    fid["cpu_note"] = fid.pop("warning")
                    fid.pop("forwarding_saturated")
                    fid["forwarding_saturated"], fid["warning"] = rtt_verdict(baseline_rtt, run_rtt)
                    fid["probe"] = {"src": tree.gpu_name(probe_src), "dst": tree.gpu_name(probe_dst),
                                    "idle_rtt_ms_p50": _median(baseline_rtt), "run_rtt_ms_p50": _median(run_rtt),
                                    "run_rtt_ms_p99": float(np.percentile(run_rtt, 99)) if run_rtt else None,
                                    "replies": len(run_rtt)}
                    poller.stop()
                evidence["fidelity"]["replay_lag_s"] = lags
                evidence["fidelity"]["background_load"] = load.to_dict()
                evidence["fidelity"]["background_note"] = background_warning(load)
                evidence["fidelity"]["telemetry_poll_errors"] = poller.errors
                evidence["telemetry_csv"] = poller.csv_bytes()
                evidence["telemetry_rows"] = poller.rows
            t2 = time.monotonic()
        evidence["fabric"]["down_s"] = round(time.monotonic() - t2, 2)
        ok = True
    except (KeyboardInterrupt, SystemExit):
        keep_failed_logs = False  # stopped on purpose (a stop signal): nothing to diagnose, nothing left
        raise
    finally:
        if monitoring:
            monitor.stop()
        if ok or not keep_failed_logs:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            log(f"emulate: logs of the failed run kept in {run_dir}")
    evidence["simulate_reference"] = sim_policies
    evidence["agreement"] = agreement(policies, sim_policies)
    evidence["transfer_agreement"] = transfer_agreement(policies, sim_policies)
    return policies, records, evidence


def agreement(emu: dict, sim: dict, target: str = "netkv") -> dict:
    """NetKV's mean-TTFT change against each baseline on both backends: same sign, and the ratio
    of magnitudes (target: within a factor of 1.5)."""
    out = {}
    ce, cs = compare(emu, target), compare(sim, target)
    for base in ce:
        e, s = ce[base]["ttft_mean_pct"], cs.get(base, {}).get("ttft_mean_pct", float("nan"))
        ratio = max(abs(e), abs(s)) / max(min(abs(e), abs(s)), 1e-9)
        out[base] = {"emulate_pct": e, "simulate_pct": s, "same_sign": bool(np.sign(e) == np.sign(s)),
                     "magnitude_ratio": ratio, "within_1_5x": bool(ratio <= 1.5)}
    return out


def _tier_means(policies: dict) -> tuple[np.ndarray, np.ndarray]:
    """(transfers, mean seconds) per tier over every policy, weighting each policy's tier mean by
    its transfer count."""
    n = max((len(row.get("tier_histogram") or []) for row in policies.values()), default=0)
    counts, total = np.zeros(n), np.zeros(n)
    for row in policies.values():
        for tier, (count, mean) in enumerate(zip(row.get("tier_histogram") or [],
                                                 row.get("transfer_mean_s_by_tier") or [])):
            if count and mean is not None:
                counts[tier] += count
                total[tier] += count * mean
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts, total / counts


def transfer_agreement(emu: dict, sim: dict) -> dict:
    """Mean KV transfer time per tier on both backends, over all policies (each policy's tier mean
    weighted by its transfers), and their ratio: where the emulated network is slower or faster
    than the fluid model during the run, not only on the idle fabric. The two backends' transfers
    are not paired (a policy reading live telemetry may pick other instances), so this is a
    per-tier indicator; tiers without transfers on either backend are left out."""
    ce, me = _tier_means(emu)
    cs, ms = _tier_means(sim)
    out = {}
    for tier in range(min(len(ce), len(cs))):
        if ce[tier] > 0 and cs[tier] > 0 and ms[tier] > 0:
            out[str(tier)] = {"emulate_ms": float(me[tier] * 1e3), "simulate_ms": float(ms[tier] * 1e3),
                              "ratio": float(me[tier] / ms[tier]),
                              "transfers_emulate": int(ce[tier]), "transfers_simulate": int(cs[tier])}
    return out

