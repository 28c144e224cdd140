"""Benchmarks that print figures (not assertions): decision latency and simulator speed.

Decision latency: each policy's ``choose`` on a warmed cluster (prefix caches filled by replaying
trace requests, decode loads spread, a live telemetry snapshot with random utilisation, and as
many warm-up decisions on a disjoint slice of the trace as are timed), timed per call with
``perf_counter_ns`` with the garbage collector paused; p50/p99 in microseconds for several |D|. Simulator speed:
requests per second of wall time replaying a trace under one policy, and how it grows with the
number of requests and GPUs.
"""
from __future__ import annotations

import dataclasses
import gc
import time
from pathlib import Path

import numpy as np

from scheduler.cluster import Cluster
from scheduler.config import build_config
from scheduler.oracle import TelemetryOracle
from scheduler.policies import REGISTRY
from scheduler.simulator import Simulator
from scheduler.synthetic import SyntheticConfig, synthetic_trace
from scheduler.telemetry import TelemetrySnapshot
from scheduler.trace import load_trace
from topology.model import FatTree

CONVERSATION_TRACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mooncake" / "conversation_trace.jsonl"

# Fat-tree shapes with |D| = GPUs / 2 decode instances.
SHAPES = {
    32: dict(pods=4, tors_per_pod=2, servers_per_tor=2, gpus_per_server=4, aggs_per_pod=2, cores=4),
    256: dict(pods=8, tors_per_pod=4, servers_per_tor=4, gpus_per_server=4, aggs_per_pod=4, cores=16),
    4096: dict(pods=16, tors_per_pod=8, servers_per_tor=8, gpus_per_server=8, aggs_per_pod=8, cores=64),
}


class _FixedSource:
    def __init__(self, snap: TelemetrySnapshot) -> None:
        self.snap = snap

    def at(self, time_s: float) -> TelemetrySnapshot:
        return self.snap


def _overrides(shape: dict) -> list[str]:
    return [f"topology.{k}={v}" for k, v in shape.items()]


def decision_latency(n_decode: int, requests, calls: int, seed: int = 0) -> dict[str, dict]:
    cfg = build_config(overrides=_overrides(SHAPES[n_decode]))
    tree = FatTree(cfg.topology)
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {}
    for name, cls in REGISTRY.items():
        cluster = Cluster(cfg, tree)
        for r in requests[:2000]:  # warm caches: each request's prefix on one prefill and one decode
            cluster.prefill_cache.insert(int(rng.integers(cluster.prefill_ids.size)), r.hash_ids)
            cluster.decode_cache.insert(int(rng.integers(cluster.decode_ids.size)), r.hash_ids)
        cluster.decode_assigned_tokens[:] = rng.uniform(0, 0.5, cluster.decode_ids.size) * cluster.decode_capacity_tokens
        cluster.prefill_busy_until[:] = rng.uniform(0, 2.0, cluster.prefill_ids.size)
        snap = TelemetrySnapshot(0.0, np.append(rng.uniform(0, 0.9, tree.n_links), 0.0), np.ones(tree.n_links + 1))
        oracle = TelemetryOracle(tree, _FixedSource(snap))
        policy = cls(weight=None, seed=seed)
        # steady state: per-source path tables are built once per prefill instance and then cached,
        # and warm-up decisions on a disjoint slice of the trace fill the memo of holder sets
        for p in range(cluster.prefill_ids.size):
            cluster.context(requests[0], 1.0, oracle).transfer_cost_s(p)
        for r in requests[calls: 2 * calls]:
            policy.choose(cluster.context(r, 1.0, oracle))
        samples = np.empty(calls)
        gc.disable()  # like timeit: collector pauses are not the scheduler's cost
        for i in range(calls):
            r = requests[i % len(requests)]
            t0 = time.perf_counter_ns()
            policy.choose(cluster.context(r, 1.0, oracle))
            samples[i] = (time.perf_counter_ns() - t0) / 1e3
        gc.enable()
        warm = samples
        out[name] = {"p50_us": round(float(np.percentile(warm, 50)), 1),
                     "p99_us": round(float(np.percentile(warm, 99)), 1), "calls": int(warm.size)}
    return out


def simulator_speed(requests, policy: str, shape_decode: int = 32) -> dict:
    cfg = build_config(overrides=_overrides(SHAPES[shape_decode]))
    t0 = time.perf_counter()
    sim = Simulator(cfg, requests, REGISTRY[policy](weight=None))
    sim.run()
    wall = time.perf_counter() - t0
    return {"policy": policy, "requests": len(requests), "gpus": FatTree(cfg.topology).n_gpus,
            "wall_s": round(wall, 2), "requests_per_s": round(len(requests) / wall, 1), "events": sim.events}


def run_bench(trace: str | None = None, quick: bool = False, log=print) -> dict:
    path = Path(trace) if trace else CONVERSATION_TRACE
    if path.exists():
        requests = load_trace(path)
        source = str(path)
    else:
        requests = synthetic_trace(dataclasses.replace(SyntheticConfig(), n_requests=12031), seed=0)
        source = "synthetic(12031 requests; Mooncake conversation trace not found)"
    figures: dict = {"trace": source, "decision_latency": {}, "simulator": []}
    sizes = (32, 256) if quick else (32, 256, 4096)
    for n in sizes:
        log(f"bench: decision latency, |D| = {n}")
        figures["decision_latency"][str(n)] = decision_latency(n, requests, 500 if quick else 3000)
    counts = (1000, 3000) if quick else (1000, 4000, len(requests))
    for policy in ("cache-load", "netkv"):
        for k in counts:
            log(f"bench: simulator, {policy}, {k} requests, 64 GPUs")
            figures["simulator"].append(simulator_speed(requests[:k], policy))
    for n in ((256,) if quick else (256, 4096)):
        k = counts[0]
        log(f"bench: simulator, netkv, {k} requests, {2 * n} GPUs")
        figures["simulator"].append(simulator_speed(requests[:k], "netkv", n))
    return figures


def format_bench(f: dict) -> str:
    lines = [f"trace: {f['trace']}", "", "decision latency (us)       " +
             "".join(f"{'|D|=' + n:>25}" for n in f["decision_latency"])]
    names = list(next(iter(f["decision_latency"].values())))
    for name in names:
        cells = "".join(f"{'p50 %.1f / p99 %.1f' % (v[name]['p50_us'], v[name]['p99_us']):>25}"
                        for v in f["decision_latency"].values())
        lines.append(f"  {name:<26}{cells}")
    lines += ["", "simulator speed", f"  {'policy':<12}{'requests':>9}{'GPUs':>6}{'wall s':>8}{'req/s':>9}{'events':>9}"]
    for s in f["simulator"]:
        lines.append(f"  {s['policy']:<12}{s['requests']:>9}{s['gpus']:>6}{s['wall_s']:>8}{s['requests_per_s']:>9}{s['events']:>9}")
    return "\n".join(lines)
