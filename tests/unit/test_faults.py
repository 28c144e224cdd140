"""--fault parsing, and the telemetry oracle's static fallback while telemetry is stale (pure)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from scheduler.decision.oracle import OracleQuery, StaticTierOracle, make_oracle
from scheduler.decision.telemetry import TelemetryHistory, TelemetrySnapshot
from scheduler.emulate.faults import DEFAULT_CONTROLLER_OUTAGE_S, Fault, FaultSpecError, check_faults, parse_fault
from topology.model import FatTree


def test_parse_fault_forms_and_errors() -> None:
    assert parse_fault("controller@20") == Fault("controller", 20.0, DEFAULT_CONTROLLER_OUTAGE_S)
    assert parse_fault("controller@7.5+3") == Fault("controller", 7.5, 3.0)
    for bad in ("controller", "controller@x", "switch@3", "controller@-1", "controller@3+0", "agent:p0@", "agent@3"):
        with pytest.raises(FaultSpecError, match=re.escape(f"--fault {bad!r}")):
            parse_fault(bad)
    assert parse_fault("agent:p1t1s0g0@10") == Fault("agent", 10.0, 0.0, "p1t1s0g0")
    serving = {"p0t0s0g0": "prefill", "p1t1s0g0": "decode"}
    with pytest.raises(FaultSpecError, match="p1t1s1g0 runs no agent"):
        check_faults([parse_fault("agent:p1t1s1g0@3")], 60.0, serving)
    with pytest.raises(FaultSpecError, match="killed once"):
        check_faults([parse_fault("agent:p1t1s0g0@3"), parse_fault("agent:p1t1s0g0@5")], 60.0, serving)
    check_faults([parse_fault("agent:p1t1s0g0@3"), parse_fault("controller@2+5")], 60.0, serving)
    with pytest.raises(FaultSpecError, match="overlaps"):
        check_faults([parse_fault("controller@1+5"), parse_fault("controller@4")], 60.0)
    with pytest.raises(FaultSpecError, match="last arrival is at 10"):
        check_faults([parse_fault("controller@30")], 10.0)
    check_faults([parse_fault("controller@1+2"), parse_fault("controller@4")], 60.0)


@pytest.mark.parametrize("kind", ["telemetry", "inflight"])
def test_stale_telemetry_falls_back_to_static_pricing_and_resumes(kind: str) -> None:
    tree = FatTree()
    hist = TelemetryHistory()
    busy = np.zeros(tree.n_links + 1)
    busy[tree.path(0, 16)] = 0.95  # the cross-pod path to GPU 16 is congested
    for t in np.arange(0.5, 5.01, 0.5):  # polls every 0.5 s, then the controller dies at 5 s
        hist.add(TelemetrySnapshot(float(t), busy.copy(), np.ones(tree.n_links + 1)))
    oracle = make_oracle(kind, tree, hist, 0.0, 0.1, 30e-6, fallback_age_s=2.0)
    static = StaticTierOracle(tree, 30e-6)
    q = lambda now: OracleQuery(0, np.array([16, 24]), np.array([1e9, 1e9]), now)  # noqa: E731
    live = oracle.cost(q(6.0))  # snapshot of 5.0 s: 1 s old, still used
    assert live[0] > static.cost(q(6.0))[0] and oracle.stale_decisions == 0
    assert np.array_equal(oracle.cost(q(7.5)), static.cost(q(7.5)))  # 2.5 s old: static pricing
    oracle.cost(q(8.0))
    assert oracle.stale_decisions == 2 and oracle.stale_spells == [[7.5, 8.0]]
    hist.add(TelemetrySnapshot(8.5, busy.copy(), np.ones(tree.n_links + 1)))  # the controller is back
    assert oracle.cost(q(8.6))[0] == pytest.approx(live[0]) and oracle.stale_decisions == 2
    oracle.cost(q(20.0))  # a second outage is a second spell
    assert len(oracle.stale_spells) == 2
    never = make_oracle(kind, tree, hist, 0.0, 0.1, 30e-6)  # no fallback age: the old snapshot stays in use
    assert never.cost(q(20.0))[0] == pytest.approx(live[0]) and never.stale_decisions == 0


def test_a_stale_oracle_never_answers_from_a_snapshot_newer_than_now_minus_staleness() -> None:
    """The emulate poller adds snapshots as the controller serves them (irregular times); a stale
    oracle reading that history must only see what was known ``staleness`` ago."""
    tree = FatTree()
    rng = np.random.default_rng(5)
    hist = TelemetryHistory(max_age_s=1000.0)
    times = np.cumsum(rng.uniform(0.3, 0.8, 200))
    for t in times:
        hist.add(TelemetrySnapshot(float(t), rng.uniform(0, 1, tree.n_links + 1), np.ones(tree.n_links + 1)))
    for staleness in (0.0, 0.5, 2.0, 7.0):
        oracle = make_oracle("telemetry", tree, hist, staleness, 0.1, 30e-6, fallback_age_s=2.0)
        for now in rng.uniform(times[20], times[-1], 300):
            snap = oracle.snapshot(float(now))
            assert snap is not None and snap.time_s <= now - staleness
            assert now - staleness - snap.time_s <= 0.8  # the newest one allowed, not an older one
