"""``serve-bench``: a P/D router (smg, or ``netkv router``) in front of HTTP workers in the emulated
GPU hosts, TTFT measured by a real OpenAI client.

Order of a run: the fabric (controller connected, routes installed); a management link per serving
host (:mod:`topology.management`: router traffic never shares a queue with KV bytes); one HTTP
worker (:mod:`hosts.http_worker`) per prefill and decode instance inside its host, reached over
its management address, rendezvous and KV bytes over the fabric; the oracle service when the
router's policy prices the network; the router; the scenario's events executed on the fabric along
the client's clock; the client replaying the trace open loop (:mod:`scheduler.router.client_bench`);
``--fault decode:HOST@T[+D]`` kills a decode worker T s into the replay and starts it again D s
later. Then every worker's records are joined to the client's timings (per request: the pair, its
tier, bytes, the workers' own TTFT, the client's TTFT, the router's overhead), and the simulator
replays the same decisions (:class:`scheduler.emulate.agreement.FixedDecisions`) for a per-tier
comparison. Everything started is stopped on return, errors and stop signals (``with`` blocks; the
fabric's teardown kills every process in the hosts, which takes their management links with them).
"""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from controller.process import controlled_fabric
from controller.settings import DEFAULT_OFP_PORT, DEFAULT_REST_PORT
from scheduler.emulate.agreement import FixedDecisions
from scheduler.emulate.emulable import check_emulable
from scheduler.emulate.orchestrator import _restore_links, _Roles
from scheduler.emulate.replay import Clock, EmulationError
from scheduler.emulate.scenario_exec import ScenarioExecutor
from scheduler.emulate.telemetry_path import TelemetryPath, TelemetryPlan
from scheduler.router import client_bench
from scheduler.router.netkv_router import FAILURE_THRESHOLD, HEALTH_INTERVAL_S, HEALTH_TIMEOUT_S, PRICED
from scheduler.sim.simulator import Simulator
from scheduler.study.experiment import Experiment
from topology.management import ManagementNet
from topology.mininet_topo import DEFAULT_SCALE

ROUTERS = ("smg", "netkv")
"""The routers a bench can put in front of the workers."""
HTTP_PORT = 30000
"""Every worker's HTTP port (on its management address)."""
BOOTSTRAP_PORT = 8998
"""Every prefill worker's bootstrap port (SGLang's default)."""
KV_PORT = 9470
"""Every decode worker's KV data port."""
WORKER_START_TIMEOUT_S = 90.0
"""Every worker must answer /health this soon after its start (Python processes on two cores)."""
ROUTER_WATCH_S = 0.25
"""Seconds between polls of the router's worker listing during a fault."""
FAULT_RESTART_S = 5.0
"""Default seconds a killed decode worker stays down."""
FAULT_MARK = "decode:"
ROUTER_MARKS = {"smg": "smg launch", "netkv": "-m scripts.netkv router"}
"""The routers' command lines, as the cleanup of a killed run finds them (fabric state file)."""
PREROLL_S = 2.0
"""Seconds the scenario's steady background flows run before the first request (as the emulate
backend's replay does: at full rate from t = 0, as in the simulator)."""


SMG_HEALTH_ARGS = ("--health-check-interval-secs", str(int(HEALTH_INTERVAL_S)),
                   "--health-check-timeout-secs", str(int(HEALTH_TIMEOUT_S)),
                   "--health-failure-threshold", str(FAILURE_THRESHOLD), "--health-success-threshold", "1")
"""smg's health checks set as the NetKV router's (every second, 5 s timeout, out after 2 failures,
back after 1 success; smg's defaults check every 60 s): both routers detect a dead worker alike,
so a fault run compares their routing, not their probe settings."""
DRAIN_S = 1.0
"""Pause between routers so one replay's queues and flows do not leak into the next."""


class ServeBenchError(EmulationError):
    """A part of the bench failed; the message says which."""


@dataclass(frozen=True)
class WorkerFault:
    """``decode:HOST@T[+D]``: the decode worker of HOST killed T virtual s into the replay, started again D s later."""

    host: str
    at_s: float
    down_s: float = FAULT_RESTART_S

    @classmethod
    def parse(cls, text: str) -> WorkerFault:
        if not text.startswith(FAULT_MARK) or "@" not in text:
            raise ValueError(f"--fault {text!r}: expected decode:HOST@T[+D]")
        host, _, when = text[len(FAULT_MARK):].partition("@")
        at, _, down = when.partition("+")
        try:
            fault = cls(host, float(at), float(down) if down else FAULT_RESTART_S)
        except ValueError:
            raise ValueError(f"--fault {text!r}: T and D must be seconds") from None
        if not (fault.at_s >= 0 and fault.down_s > 0):
            raise ValueError(f"--fault {text!r}: T must be >= 0 and D > 0")
        return fault


@dataclass
class BenchPlan:
    """What one serve-bench runs."""

    router: str = "smg"
    policy: str = "cache-load"
    smg_policies: tuple[str, str] = ("cache_aware", "power_of_two")
    scale: float = DEFAULT_SCALE
    time_scale: float = 1.0
    telemetry: TelemetryPlan = field(default_factory=TelemetryPlan)
    fault: WorkerFault | None = None
    ofp_port: int = DEFAULT_OFP_PORT
    rest_port: int = DEFAULT_REST_PORT

    def __post_init__(self) -> None:
        if self.router not in ROUTERS:
            raise ValueError(f"--router must be one of {', '.join(ROUTERS)}, got {self.router!r}")

    @property
    def slug(self) -> str:
        """The label as a file-name part."""
        return self.label.replace(":", "-").replace("/", "-")

    @property
    def label(self) -> str:
        if self.router == "smg":
            return f"smg:{self.smg_policies[0]}/{self.smg_policies[1]}"
        return f"netkv-router:{self.policy}"


COMPARE_SET = (("smg", "", ("cache_aware", "power_of_two")), ("smg", "", ("round_robin", "round_robin")),
               ("netkv", "cache-load", ("", "")), ("netkv", "topology-affinity", ("", "")),
               ("netkv", "netkv", ("", "")))
"""``--compare``: smg with its P/D defaults and round robin, the NetKV router with cache-load,
topology-affinity and netkv."""


def compare_plans(base: BenchPlan) -> list[BenchPlan]:
    """:data:`COMPARE_SET` on ``base``'s fabric settings (no fault: the fault run is its own)."""
    import dataclasses

    return [dataclasses.replace(base, router=r, policy=pol or base.policy,
                                smg_policies=smg if smg[0] else base.smg_policies)
            for r, pol, smg in COMPARE_SET]


def check_bench(exp: Experiment, plan: BenchPlan) -> None:
    """Refuse, before anything is built, what the bench cannot run (errors name the option)."""
    check_emulable(exp, plan.scale, plan.time_scale)
    if plan.fault is not None:
        roles = _Roles.of(exp.tree, exp.cfg)
        decode = {exp.tree.gpu_name(int(g)) for g in roles.decode}
        if plan.fault.host not in decode:
            raise ValueError(f"--fault decode:{plan.fault.host}: not a decode instance of this placement "
                             f"(decode hosts: {', '.join(sorted(decode)[:6])}...)")
        if plan.router == "smg" and len(decode) < 2:
            raise ValueError("--fault needs a second decode worker to fail over to")


class _Workers:
    """The HTTP workers of a bench, one per serving GPU host (a decode worker can be killed and restarted)."""

    def __init__(self, fab: Any, exp: Experiment, roles: _Roles, mgmt: ManagementNet, plan: BenchPlan,
                 run_dir: Path) -> None:
        self.fab, self.exp, self.roles, self.mgmt, self.plan, self.run_dir = fab, exp, roles, mgmt, plan, run_dir
        self.cfg_path = run_dir / "config.json"
        self.cfg_path.write_text(json.dumps(exp.cfg.to_dict()), encoding="utf-8")
        self.map_path = run_dir / "fabric-map.json"
        self.map_path.write_text(json.dumps({"hosts": {mgmt.addresses[g]: g for g in roles.serving}}),
                                 encoding="utf-8")
        self.decode_set = {int(g) for g in roles.decode}
        self.procs: dict[int, Any] = {}

    def url(self, g: int) -> str:
        return f"http://{self.mgmt.addresses[g]}:{HTTP_PORT}"

    def name(self, g: int) -> str:
        return str(self.exp.tree.gpu_name(g))

    def start(self, g: int) -> None:
        role = "decode" if g in self.decode_set else "prefill"
        name = self.name(g)
        argv = [sys.executable, "-m", "hosts.http_worker", "--role", role, "--host", "0.0.0.0",
                "--port", str(HTTP_PORT), "--bootstrap-port", str(BOOTSTRAP_PORT), "--kv-port", str(KV_PORT),
                "--name", name, "--gpu", str(g), "--config", str(self.cfg_path), "--fabric-map", str(self.map_path),
                "--time-scale", str(self.plan.time_scale), "--byte-scale", str(self.plan.scale),
                "--records", str(self.run_dir / f"records-{name}.jsonl")]
        with open(self.run_dir / f"worker-{name}.log", "ab") as log:
            self.procs[g] = self.fab.host(name).popen(argv, stdout=log, stderr=log)

    def start_all(self) -> None:
        for g in self.roles.serving:
            self.start(g)
        self.wait_healthy(self.roles.serving, WORKER_START_TIMEOUT_S)

    def wait_healthy(self, gpus: Sequence[int], timeout_s: float) -> None:
        pending, deadline = set(gpus), time.monotonic() + timeout_s
        with httpx.Client(timeout=1.0) as http:
            while pending and time.monotonic() < deadline:
                for g in sorted(pending):
                    if self.procs[g].poll() is not None:
                        raise ServeBenchError(f"the HTTP worker of {self.name(g)} exited with status "
                                              f"{self.procs[g].returncode}: {self.log_tail(g)}")
                    try:
                        if http.get(f"{self.url(g)}/health").status_code == 200:
                            pending.discard(g)
                    except httpx.HTTPError:
                        pass
                if pending:
                    time.sleep(0.2)
        if pending:
            raise ServeBenchError(f"{len(pending)} HTTP workers did not answer /health within {timeout_s:g} s "
                                  f"(first: {self.name(min(pending))}: {self.log_tail(min(pending))})")

    def kill(self, g: int) -> None:
        self.procs[g].kill()
        self.procs[g].wait(timeout=5)

    def log_tail(self, g: int, n: int = 3) -> str:
        try:
            lines = (self.run_dir / f"worker-{self.name(g)}.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-n:]) or "(empty log)"

    def exited(self) -> list[str]:
        """Workers that stopped on their own (a killed-and-restarted one counts by its new process)."""
        return [self.name(g) for g, p in self.procs.items() if p.poll() is not None]

    def records(self) -> list[dict]:
        out = []
        for g in self.roles.serving:
            path = self.run_dir / f"records-{self.name(g)}.jsonl"
            if path.exists():
                out += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return out


class _Router:
    """The bench's router, a process of its own either way: smg or ``netkv router``."""

    def __init__(self, plan: BenchPlan, workers: _Workers, oracle_url: str | None, run_dir: Path, fab: Any) -> None:
        self.plan, self.workers, self.oracle_url, self.run_dir, self.fab = plan, workers, oracle_url, run_dir, fab
        self.proc: Any = None
        self.version: str | None = None

    def __enter__(self) -> _Router:
        w, roles = self.workers, self.workers.roles
        prefill = [(w.url(int(g)), BOOTSTRAP_PORT) for g in roles.prefill]
        decode = [w.url(int(g)) for g in roles.decode]
        if self.plan.router == "smg":
            from scheduler.router.smg import SmgRouter, smg_version

            self.version = smg_version()
            self.proc = SmgRouter(prefill, decode, prefill_policy=self.plan.smg_policies[0],
                                  decode_policy=self.plan.smg_policies[1], log_path=self.run_dir / "smg.log",
                                  extra_args=SMG_HEALTH_ARGS)
        else:
            from scheduler.router.netkv_router import NetKVRouterProcess

            self.version = "netkv-router"
            self.proc = NetKVRouterProcess(prefill, decode, self.plan.policy,
                                           names={w.url(g): w.name(g) for g in roles.serving},
                                           oracle_url=self.oracle_url, log_path=self.run_dir / "router.log")
        self.proc.start()
        if self.proc.proc is not None:
            self.fab.record_process(self.proc.proc.pid, ROUTER_MARKS[self.plan.router])
        return self

    @property
    def url(self) -> str:
        return str(self.proc.url)

    def alive(self) -> bool:
        return self.proc.proc is not None and self.proc.proc.poll() is None

    def health(self) -> dict[str, bool]:
        """Worker URL -> healthy, as the router lists them now."""
        return {str(w.get("url", "")).rstrip("/"): bool(w.get("is_healthy", True)) for w in self.proc.workers()}

    def metrics(self) -> bytes | None:
        url = getattr(self.proc, "metrics_url", None)
        if url is None:
            return None
        try:
            return httpx.get(url, timeout=2.0).content
        except httpx.HTTPError:
            return None

    def listing(self) -> dict | None:
        """The NetKV router's own state (policy, failures, retries, workers); None for smg."""
        data = self.proc.listing() if self.plan.router == "netkv" else None
        return data if isinstance(data, dict) else None

    def __exit__(self, *exc: object) -> None:
        pid = self.proc.proc.pid if self.proc is not None and self.proc.proc is not None else None
        if self.proc is not None:
            self.proc.stop()
        if pid is not None:
            self.fab.forget_process(pid)


class _Scenario:
    """The scenario's actions released on the fabric along the client's clock (a thread)."""

    def __init__(self, exp: Experiment, executor: ScenarioExecutor, clock: Clock) -> None:
        self.executor, self.clock = executor, clock
        self.actions = exp.actions()
        by_t: dict[float, list] = defaultdict(list)
        for a in self.actions:
            by_t[float(a.time_s)].append(a)
        self.batches = sorted(by_t.items())
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scenario", daemon=True)

    def preroll(self) -> None:
        """Before the clock starts: sinks and flow slots for every action, the steady ones (t <= 0)
        started and given :data:`PREROLL_S` to reach their rate, as in the emulate backend."""
        self.executor.prepare(list(self.actions))
        pre = [a for t, batch in self.batches if t <= 0 for a in batch]
        if pre:
            self.executor.apply_batch(pre)
            time.sleep(PREROLL_S)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        for t, batch in self.batches:
            if t <= 0:
                continue
            while not self._stop.is_set() and self.clock.now() < t:
                self._stop.wait(min(0.05, max(0.0, (t - self.clock.now()) * self.clock.time_scale)))
            if self._stop.is_set():
                return
            try:
                self.executor.apply_batch(batch)
            except Exception as exc:  # reported in the summary, the bench goes on
                self.errors.append(f"at {t:g} s: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class _FaultRun:
    """Kills a decode worker at its time, restarts it, and watches the router's view of it."""

    def __init__(self, fault: WorkerFault, workers: _Workers, router: _Router, clock: Clock,
                 log: Callable[[str], Any]) -> None:
        self.fault, self.workers, self.router, self.clock, self.log = fault, workers, router, clock, log
        self.gpu = workers.exp.tree.gpu_index(fault.host)
        self.url = workers.url(self.gpu)
        self.events: dict[str, float | None] = {"killed": None, "restarted": None, "healthy_again": None,
                                                "router_marked_down": None, "router_marked_up": None}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _at(self, t_virtual: float) -> bool:
        while not self._stop.is_set() and self.clock.now() < t_virtual:
            self._stop.wait(0.02)
        return not self._stop.is_set()

    def _watch(self, until_virtual: float, key: str, want: bool) -> None:
        while not self._stop.is_set() and self.clock.now() < until_virtual:
            if self.router.health().get(self.url, not want) == want:
                self.events[key] = time.time()
                return
            self._stop.wait(ROUTER_WATCH_S)

    def _run(self) -> None:
        f = self.fault
        if not self._at(f.at_s):
            return
        self.workers.kill(self.gpu)
        self.events["killed"] = time.time()
        self.log(f"serve-bench: fault: killed the decode worker of {f.host} at {f.at_s:g} s")
        self._watch(f.at_s + f.down_s, "router_marked_down", False)
        if not self._at(f.at_s + f.down_s):
            return
        self.workers.start(self.gpu)
        self.events["restarted"] = time.time()
        try:
            self.workers.wait_healthy([self.gpu], WORKER_START_TIMEOUT_S)
            self.events["healthy_again"] = time.time()
        except ServeBenchError as exc:
            self.log(f"WARNING: serve-bench: the restarted worker of {f.host} did not come back: {exc}")
            return
        self.log(f"serve-bench: fault: the decode worker of {f.host} is back")
        self._watch(float("inf"), "router_marked_up", True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def report(self, timings: Sequence[client_bench.Timing], rows: Sequence[dict]) -> dict:
        """Seconds the router kept sending to the dead worker, client-visible failures, recovery."""
        ev = self.events
        killed, back = ev["killed"], ev["restarted"]
        out: dict[str, Any] = {"host": self.fault.host, "at_s": self.fault.at_s, "down_s": self.fault.down_s}
        if killed is None:
            return out | {"note": "the replay ended before the fault's time"}
        window_end = back if back is not None else float("inf")
        failed = [t for t in timings if t.error is not None or not t.chunk_times]
        in_window = [t for t in failed if killed <= t.t_send <= window_end]
        out |= {
            "router_marked_down_after_s": (None if ev["router_marked_down"] is None
                                           else ev["router_marked_down"] - killed),
            "router_marked_up_after_restart_s": (None if ev["router_marked_up"] is None or back is None
                                                 else ev["router_marked_up"] - back),
            "restart_to_healthy_s": None if back is None or ev["healthy_again"] is None else ev["healthy_again"] - back,
            "client_errors": len(failed), "client_errors_while_down": len(in_window),
            "last_error_after_kill_s": max((t.t_send - killed for t in in_window), default=None),
            "requests_sent_while_down": sum(1 for t in timings if killed <= t.t_send <= window_end),
            "errors_by_kind": _error_kinds(failed),
            "served_after_restart": sum(1 for r in rows if r.get("decode") == self.fault.host and back is not None
                                        and r.get("t_send", 0.0) > back)}
        return out


def _error_kinds(failed: Sequence[client_bench.Timing]) -> dict[str, int]:
    kinds: dict[str, int] = defaultdict(int)
    for t in failed:
        kinds[(t.error or "no token streamed").split(":", 1)[0]] += 1
    return dict(kinds)


def join_records(exp: Experiment, timings: Sequence[client_bench.Timing], records: Sequence[dict]) -> list[dict]:
    """One row per client request: the client's timings and, matched on the prompt's digest in
    send order (the same prompt twice is matched first-to-first), its prefill and decode records."""
    tree = exp.tree
    queues: dict[tuple[str, str], deque] = defaultdict(deque)
    for rec in sorted(records, key=lambda r: r.get("t_arrival", 0.0)):
        queues[(rec["role"], rec["prompt"])].append(rec)
    rows = []
    for t in sorted(timings, key=lambda t: t.t_send):
        pre, dec = (q.popleft() if (q := queues[(role, t.prompt_digest)]) else {} for role in ("prefill", "decode"))
        p_name, d_name = pre.get("worker"), dec.get("worker")
        tier = tree.tier(tree.gpu_index(p_name), tree.gpu_index(d_name)) if p_name and d_name else None
        first = dec.get("t_first_sent", dec.get("t_first"))
        start = min((x for x in (pre.get("t_arrival"), dec.get("t_arrival")) if x is not None), default=None)
        worker_ttft = first - start if first is not None and start is not None else None
        lag = dec["t_first_sent"] - dec["t_first"] if "t_first_sent" in dec and "t_first" in dec else None
        transfer = (pre["t_send_end"] - pre["t_send_start"]) if "t_send_end" in pre else None
        rows.append({
            "index": t.index, "req_id": exp.requests[t.index].req_id, "prompt": t.prompt_digest,
            "input_tokens": t.input_tokens, "output_tokens": t.output_tokens, "t_send": t.t_send,
            "prefill": p_name, "decode": d_name, "tier": tier, "prefill_cached_tokens": pre.get("cached_tokens"),
            "bytes": pre.get("bytes"), "transfer_s": transfer, "worker_ttft_s": worker_ttft,
            "client_ttft_s": t.ttft, "overhead_s": (t.ttft - worker_ttft if t.ttft is not None
                                                    and worker_ttft is not None else None),
            "worker_emit_lag_s": lag,
            "tbt_mean_s": statistics.fmean(t.tbt) if t.tbt else None, "tokens": t.tokens,
            "error": t.error or pre.get("error") or dec.get("error")})
    return rows


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _stats(values: Sequence[float]) -> dict:
    return {"n": len(values), "mean": float(np.mean(values)) if values else None,
            "p50": _pct(values, 50), "p99": _pct(values, 99)}


def simulator_twin(exp: Experiment, rows: Sequence[dict], time_scale: float) -> dict:
    """The simulator replaying the bench's own decisions: per tier, the client's TTFT (virtual
    seconds: wall / ``time_scale``) against the simulator's for the same requests."""
    decided = {r["req_id"]: (r["prefill"], r["decode"]) for r in rows
               if r["prefill"] and r["decode"] and r["client_ttft_s"] is not None}
    if not decided:
        return {}
    requests = [r for r in exp.requests if r.req_id in decided]
    sim = {r.req_id: r for r in Simulator(exp.cfg, requests, FixedDecisions(decided, "serve-bench"),
                                           exp.actions()).run()}
    by_tier: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        twin = sim.get(r["req_id"])
        if twin is not None and r["tier"] is not None and r["client_ttft_s"] is not None:
            by_tier[r["tier"]].append((r["client_ttft_s"] / time_scale, twin.ttft_s))
    out = {}
    for t, v in sorted(by_tier.items()):
        client, sim_ttft = float(np.mean([a for a, _ in v])), float(np.mean([b for _, b in v]))
        out[str(t)] = {"requests": len(v), "client_ttft_mean_s": client, "simulate_ttft_mean_s": sim_ttft,
                       "ratio": client / max(sim_ttft, 1e-12)}
    return out


def bench_summary(exp: Experiment, plan: BenchPlan, rows: Sequence[dict], timings: Sequence[client_bench.Timing],
                  evidence: dict) -> dict:
    ts = plan.time_scale
    ok = [r for r in rows if r["client_ttft_s"] is not None and not r["error"]]
    by_tier: dict[str, dict] = {}
    for tier in sorted({r["tier"] for r in ok if r["tier"] is not None}):
        sel = [r for r in ok if r["tier"] == tier]
        by_tier[str(tier)] = {"requests": len(sel),
                              "client_ttft_mean_s": float(np.mean([r["client_ttft_s"] for r in sel])) / ts,
                              "transfer_mean_s": (float(np.mean([r["transfer_s"] for r in sel
                                                                 if r["transfer_s"] is not None] or [np.nan])) / ts)}
    over = [r["overhead_s"] / ts for r in ok if r["overhead_s"] is not None]
    return {
        "backend": "serve-bench", "router": plan.label, "router_version": evidence.get("router_version"),
        "scenario": exp.scenario.name, "requests": len(rows), "scale": plan.scale, "time_scale": ts,
        "client": client_bench.summarize(timings) | {"note": "wall seconds at the client"},
        "ttft_s": _stats([r["client_ttft_s"] / ts for r in ok]),
        "worker_ttft_s": _stats([r["worker_ttft_s"] / ts for r in ok if r["worker_ttft_s"] is not None]),
        "router_overhead_s": _stats(over),
        "worker_emit_lag_s": _stats([r["worker_emit_lag_s"] / ts for r in ok
                                     if r.get("worker_emit_lag_s") is not None]),
        "by_tier": by_tier,
        "errors": sum(1 for r in rows if r["error"] or r["client_ttft_s"] is None),
        "units": "virtual (model) seconds: wall seconds / time_scale, except under 'client'",
        **evidence.get("sections", {}),
    }


def stop_workers(workers: _Workers) -> None:
    """Stop every worker (between routers: the next one meets fresh engines and empty caches)."""
    for proc in workers.procs.values():
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 5.0
    for proc in workers.procs.values():
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:  # a worker that ignores SIGTERM is killed
            proc.kill()
            proc.wait(timeout=5)
    for path in workers.run_dir.glob("records-*.jsonl"):
        path.unlink()


def _bench_one(exp: Experiment, plan: BenchPlan, fab: Any, workers: _Workers, log: Callable[[str], Any]
               ) -> tuple[dict, list[dict], dict[str, bytes]]:
    """One router's replay on the running fabric, with fresh workers; (summary, rows, files)."""
    run_dir = workers.run_dir
    evidence: dict[str, Any] = {"sections": {}}
    files: dict[str, bytes] = {}
    warnings: list[str] = []
    t0 = time.monotonic()
    workers.plan = plan
    with ExitStack() as stack:
        workers.start_all()
        stack.callback(stop_workers, workers)
        oracle_url, path = None, None
        if plan.router == "netkv" and plan.policy in PRICED:
            path = TelemetryPath(plan.telemetry, fab, plan.rest_port, exp.cfg.oracle.poll_interval_s,
                                 plan.scale / plan.time_scale, plan.time_scale, run_dir, log).enter(stack)
            oracle_url = path.service_url
        router = stack.enter_context(_Router(plan, workers, oracle_url, run_dir, fab))
        evidence["router_version"] = router.version
        log(f"serve-bench: {plan.label} at {router.url}; replaying {len(exp.requests)} requests "
            f"(~{exp.requests[-1].arrival_s * plan.time_scale:.0f} s of wall time)")
        executor = ScenarioExecutor(fab, exp.tree, plan.scale, plan.time_scale, run_dir)
        stack.callback(_restore_links, executor)
        stack.callback(executor.close)
        clock = Clock(plan.time_scale)
        scenario = _Scenario(exp, executor, clock)
        scenario.preroll()
        fault = _FaultRun(plan.fault, workers, router, clock, log) if plan.fault else None
        clock.start()
        scenario.start()
        stack.callback(scenario.stop)
        if fault is not None:
            fault.start()
            stack.callback(fault.stop)
        t_replay = time.monotonic()
        timings = client_bench.replay(router.url, exp.requests, time_scale=plan.time_scale)
        replay_s = time.monotonic() - t_replay
        scenario.stop()
        if fault is not None:
            fault.stop()
        records = workers.records()
        metrics = router.metrics()
        if metrics:
            files["smg-metrics.txt"] = metrics
        if not router.alive():
            warnings.append(f"the router ({plan.label}) stopped during the run")
        dead = [h for h in workers.exited() if plan.fault is None or h != plan.fault.host]
        if dead:
            warnings.append(f"HTTP workers exited during the run: {', '.join(dead)}")
        warnings += [f"scenario action failed {e}" for e in scenario.errors]
        rows = join_records(exp, timings, records)
        if fault is not None:
            evidence["sections"]["fault"] = fault.report(timings, rows)
        if path is not None:
            evidence["sections"]["telemetry_path"] = path.report() | {"plan": plan.telemetry.describe()}
        state = router.listing()
        if state:
            evidence["sections"]["router_state"] = state
            if state.get("oracle_failures"):
                warnings.append(f"{state['oracle_failures']} oracle calls failed (cache-load's decode choice was "
                                "taken instead)")
            if state.get("prefill_failures"):
                warnings.append(f"{state['prefill_failures']} prefill requests failed at the router")
        unhealthy = sorted(url for url, ok in router.health().items() if not ok)
        if unhealthy:
            warnings.append(f"{len(unhealthy)} workers out of the router's rotation at the end: "
                            f"{', '.join(unhealthy[:5])}")
    for name in ("smg.log", "router.log", "oracle-service.log"):  # complete now: their writers stopped
        if (run_dir / name).exists():
            files[name] = (run_dir / name).read_bytes()
            (run_dir / name).unlink()
    evidence["sections"]["timings_s"] = {"replay": round(replay_s, 2), "total": round(time.monotonic() - t0, 2)}
    evidence["sections"]["simulate_same_decisions_by_tier"] = simulator_twin(exp, rows, plan.time_scale)
    evidence["sections"]["warnings"] = warnings
    summary = bench_summary(exp, plan, rows, timings, evidence)
    files["worker-records.jsonl"] = "".join(json.dumps(r) + "\n" for r in records).encode()
    return summary, rows, files


def run_serve_bench(exp: Experiment, plans: Sequence[BenchPlan], log: Callable[[str], Any] = print
                    ) -> list[tuple[dict, list[dict], dict[str, bytes]]]:
    """Run each plan's router in turn on one fabric (the same links, scenario and trace window),
    the workers started afresh for each; one (summary, per-request rows, extra files) per plan."""
    if not plans:
        raise ValueError("no router to bench")
    for plan in plans:
        check_bench(exp, plan)
    first = plans[0]
    roles = _Roles.of(exp.tree, exp.cfg)
    run_dir = Path(tempfile.mkdtemp(prefix="netkv-serve-"))
    out = []
    try:
        t0 = time.monotonic()
        with ExitStack() as stack:
            fab = stack.enter_context(controlled_fabric(exp.tree, first.scale / first.time_scale, run_dir / "fabric",
                                                        first.ofp_port, first.rest_port,
                                                        exp.cfg.oracle.poll_interval_s))
            up_s = time.monotonic() - t0
            hosts = [(g, fab.host(exp.tree.gpu_name(g))) for g in roles.serving]
            mgmt = stack.enter_context(ManagementNet(hosts))
            log(f"serve-bench: fabric up in {up_s:.1f} s; {len(roles.serving)} HTTP workers per router "
                f"({len(roles.prefill)} prefill, {len(roles.decode)} decode)")
            workers = _Workers(fab, exp, roles, mgmt, first, run_dir)
            for k, plan in enumerate(plans):
                if k:
                    time.sleep(DRAIN_S)
                summary, rows, files = _bench_one(exp, plan, fab, workers, log)
                summary["timings_s"]["fabric_up"] = round(up_s, 2)
                out.append((summary, rows, files))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return out
