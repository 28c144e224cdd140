"""The real-time replay engine (the emulate backend's core) with a fake transport, no root."""
from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from scheduler.config import build_config
from scheduler.oracle import StaticTierOracle, OracleQuery
from scheduler.policies import REGISTRY
from scheduler.realtime import Clock, EmulationError, RealtimeReplay, TransferDone
from scheduler.simulator import Simulator
from scheduler.telemetry import TelemetryHistory
from scheduler.trace import Request
from topology.model import FatTree


class FakeTransport:
    """Completes each transfer after bytes / idle bottleneck capacity (wall time, scaled back)."""

    def __init__(self, tree: FatTree, byte_scale: float, time_scale: float, fail: bool = False) -> None:
        self.done: queue.Queue = queue.Queue()
        self.oracle = StaticTierOracle(tree, setup_s=30e-6)
        self.byte_scale = byte_scale
        self.time_scale = time_scale
        self.fail = fail
        self.started: list[tuple[int, int, int, int]] = []

    def start(self, transfer_id: int, request_id: int, src: int, dst: int, nbytes: int) -> None:
        self.started.append((transfer_id, src, dst, nbytes))
        real = nbytes / self.byte_scale
        dur = float(self.oracle.cost(OracleQuery(src, np.array([dst]), np.array([real]), 0.0))[0])
        t0 = time.time()

        def finish() -> None:
            self.done.put(TransferDone(transfer_id, t0, time.time(), nbytes, "connection refused" if self.fail else None))

        threading.Timer(dur * self.time_scale, finish).start()


class NoActions:
    def __init__(self) -> None:
        self.applied = []

    def apply(self, action) -> None:
        self.applied.append(action)


def _requests(n: int = 8) -> list[Request]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        tokens = int(rng.integers(600, 3000))
        out.append(Request(i, 0.3 * i, tokens, 12, tuple(range(i * 100, i * 100 + -(-tokens // 512)))))
    return out


@pytest.mark.parametrize("policy", ["round-robin", "netkv"])
def test_realtime_replay_matches_the_simulator_on_an_idle_fabric(policy):
    cfg = build_config(overrides=["topology.nic_gbit_s=20"])  # transfers of tens of ms, never overlapping
    reqs = _requests()
    tree = FatTree(cfg.topology)
    transport = FakeTransport(tree, byte_scale=1e-3, time_scale=1.0)
    replay = RealtimeReplay(cfg, reqs, REGISTRY[policy](), [], transport, NoActions(), TelemetryHistory(),
                            Clock(1.0), byte_scale=1e-3)
    recs = replay.run()
    # no telemetry reaches this replay (empty history): compare with the simulator's static oracle
    sim = Simulator(cfg, reqs, REGISTRY[policy](), oracle_kind="static").run()
    assert [r.decode for r in recs] == [r.decode for r in sim]
    assert len(transport.started) == sum(r.kv_bytes > 0 for r in recs)
    for r, s in zip(recs, sim):
        # the same bytes, scaled, were handed to the transport
        assert r.kv_bytes == s.kv_bytes
        # transfer and TTFT agree within timer/scheduling jitter of a shared machine
        assert r.transfer_s == pytest.approx(s.transfer_s, abs=0.03)
        assert r.ttft_s == pytest.approx(s.ttft_s, abs=0.05)
    assert max(replay.lag_s) < 0.2


def test_a_failed_transfer_stops_the_replay_with_the_reason():
    cfg = build_config()
    reqs = _requests(3)
    transport = FakeTransport(FatTree(cfg.topology), byte_scale=1e-6, time_scale=1.0, fail=True)
    replay = RealtimeReplay(cfg, reqs, REGISTRY["round-robin"](), [], transport, NoActions(), TelemetryHistory(),
                            Clock(1.0), byte_scale=1e-6)
    with pytest.raises(EmulationError, match="connection refused"):
        replay.run()


def test_clock_dilation():
    c = Clock(4.0)
    c.start()
    time.sleep(0.2)
    assert 0.04 <= c.now() <= 0.1
    assert c.virtual(c.t0_wall + 8.0) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        Clock(0)
