"""How the live oracles price a busy link: a fair share against ``oracle.saturated_link_flows``
elastic flows (scheduler/decision/oracle.py, :func:`free_fraction`), not the floor."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.decision.dispatch import build_oracles
from scheduler.decision.oracle import (
    SATURATED_LINK_FLOWS,
    InflightOracle,
    OracleQuery,
    PredictiveOracle,
    StaticTierOracle,
    TelemetryOracle,
    free_fraction,
)
from scheduler.decision.telemetry import TelemetrySnapshot
from scheduler.model.config import ConfigError, build_config
from scheduler.sim.network import FlowNetwork
from topology.model import FatTree

GB = 1e9
KINDS = (TelemetryOracle, InflightOracle, PredictiveOracle)


class Fixed:
    def __init__(self, snap):
        self.snap = snap

    def at(self, time_s):
        return self.snap


@pytest.fixture(scope="module")
def tree() -> FatTree:
    return FatTree()


@pytest.mark.parametrize(("load", "flows", "floor", "want"), [
    (0.0, 4, 0.1, 1.0),  # idle: the whole link
    (0.5, 4, 0.1, 0.5),  # partial load below flows / (flows + 1): what is left, unchanged
    (0.75, 4, 0.1, 0.25),
    (0.8, 4, 0.1, 0.2),  # where the fair share takes over
    (0.95, 4, 0.1, 0.2),
    (1.0, 4, 0.1, 0.2),  # saturated: a fifth, against 4 elastic flows
    (1.0, 1, 0.1, 0.5),  # against one flow: half
    (1.0, 9, 0.1, 0.1),  # 9 flows: the floor alone (the pricing without a fair share)
    (1.0, 19, 0.1, 0.1),  # more flows than the floor allows: the floor still holds
    (1.3, 4, 0.1, 0.2),  # a counter over 100% counts as saturated
])
def test_free_fraction_table(load, flows, floor, want):
    assert free_fraction(np.array([load]), flows, floor)[0] == pytest.approx(want)


@pytest.mark.parametrize("flows", [1.0, 2.0, 4.0, 9.0])
def test_free_fraction_is_continuous_and_never_rises_with_load(flows):
    load = np.linspace(0.0, 1.0, 10001)
    free = free_fraction(load, flows, 0.1)
    steps = np.diff(free)
    assert np.all(steps <= 0)
    assert np.abs(steps).max() <= (load[1] - load[0]) + 1e-12


@pytest.mark.parametrize("flows", [1, 2, 4, 8])
def test_saturated_link_priced_at_the_simulators_share_for_that_many_equal_flows(tree, flows):
    """n greedy flows saturate a decode NIC; the simulator's max-min share for a new flow there
    equals what a live oracle told n flows prices from the counter alone."""
    dst = 63
    link = int(tree.path(0, dst)[-1])  # the decode GPU's NIC ingress
    net = FlowNetwork(tree.capacity, tree.pad)
    for src in range(1, 1 + flows):  # n sources on different NICs, all through that ingress
        net.add(tree.path(src, dst), np.inf)
    util = np.zeros(tree.n_links + 1)
    util[link] = net.link_rate[link] / tree.capacity[link]
    assert util[link] == pytest.approx(1.0)
    snap = TelemetrySnapshot(0.0, util, np.ones(tree.n_links + 1))
    oracle = TelemetryOracle(tree, Fixed(snap), saturated_link_flows=flows)
    avail = oracle.available(snap)
    assert avail[link] == pytest.approx(net.entrant_share()[link])


def _cost(cls, tree, util, flows, src=0, dst=63):
    snap = TelemetrySnapshot(0.0, util, np.ones(tree.n_links + 1))
    o = cls(tree, Fixed(snap), saturated_link_flows=flows)
    return o.cost(OracleQuery(src, np.array([dst]), np.array([GB]), 0.0))[0]


@pytest.mark.parametrize("cls", KINDS)
@pytest.mark.parametrize(("load", "flows", "factor"), [
    (0.0, 4, 1.0),  # idle link: the static price
    (0.5, 4, 2.0),  # half loaded: twice the bytes time, as before
    (1.0, 4, 5.0),  # saturated: a fair share against 4 flows, 5x (the floor made it 10x)
    (1.0, 1, 2.0),
    (1.0, 9, 10.0),
])
def test_live_kinds_price_the_nic_at_its_fair_share(tree, cls, load, flows, factor):
    src, dst = 0, 63
    link = int(tree.path(src, dst)[-1])
    util = np.zeros(tree.n_links + 1)
    util[link] = load
    static = StaticTierOracle(tree).cost(OracleQuery(src, np.array([dst]), np.array([GB]), 0.0))[0]
    latency = static - GB / tree.capacity[tree.path(src, dst)].min()
    assert _cost(cls, tree, util, flows) - latency == pytest.approx(factor * (static - latency))


def test_inflight_background_after_its_own_transfer_is_taken_off(tree):
    """A snapshot shows the decode NIC saturated while the scheduler's own transfer moves a
    quarter of it: the background is the other three quarters, and a new transfer (the own one
    is done by then) gets what they leave or the fair share against the assumed flows."""
    src, dst = 0, 63
    link = int(tree.path(src, dst)[-1])
    cap = tree.capacity[link]
    util = np.zeros(tree.n_links + 1)
    util[link] = 1.0
    snap = TelemetrySnapshot(1.0, util, np.ones(tree.n_links + 1))
    for flows, want_fraction in ((4, 0.25), (2, 1 / 3), (9, 0.25)):
        o = InflightOracle(tree, Fixed(snap), saturated_link_flows=flows)
        o.commit(8, dst, 0.5, 1.5, nbytes=0.25 * cap, key=1)  # moving at the snapshot, 1 s long
        o.done(1, 1.5)
        got = o.cost(OracleQuery(src, np.array([dst]), np.array([GB]), 2.0))[0]
        idle = StaticTierOracle(tree).cost(OracleQuery(src, np.array([dst]), np.array([GB]), 2.0))[0]
        latency = idle - GB / tree.capacity[tree.path(src, dst)].min()
        assert got - latency == pytest.approx(GB / (want_fraction * cap))


def test_config_parameter_reaches_the_oracle_and_is_validated(tree):
    assert build_config().oracle.saturated_link_flows == SATURATED_LINK_FLOWS
    cfg = build_config(overrides=["oracle.saturated_link_flows=1"])
    oracle, _ = build_oracles(cfg, tree, "telemetry", Fixed(None), None)
    assert isinstance(oracle, TelemetryOracle) and oracle.flows == 1.0
    with pytest.raises(ConfigError, match="saturated_link_flows"):
        build_config(overrides=["oracle.saturated_link_flows=0"])
    with pytest.raises(ValueError, match="saturated_link_flows"):
        TelemetryOracle(tree, Fixed(None), saturated_link_flows=-1.0)
