"""Network cost oracle contract (scheduler/decision/oracle.py docstring)."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.decision.oracle import (
    InflightOracle,
    OracleQuery,
    StaticTierOracle,
    TelemetryOracle,
    UnknownOracleError,
    make_oracle,
)
from scheduler.decision.telemetry import TelemetryHistory, TelemetrySnapshot
from topology.model import FatTree, FatTreeConfig

GB = 1e9


class Fixed:
    def __init__(self, snap):
        self.snap = snap

    def at(self, time_s):
        return self.snap


@pytest.fixture(scope="module")
def tree() -> FatTree:
    return FatTree()


def q(src, dsts, nbytes, now=0.0, flow_key=None) -> OracleQuery:
    dsts = np.asarray(dsts, dtype=np.int64)
    nb = np.broadcast_to(np.asarray(nbytes, dtype=float), dsts.shape).copy()
    return OracleQuery(src, dsts, nb, now, flow_key)


def random_snapshot(tree, rng, lo=0.0, hi=1.0) -> TelemetrySnapshot:
    util = np.append(rng.uniform(lo, hi, tree.n_links), 0.0)
    return TelemetrySnapshot(0.0, util, np.ones(tree.n_links + 1))


def oracles(tree, rng):
    return [StaticTierOracle(tree), TelemetryOracle(tree, Fixed(TelemetrySnapshot.idle(tree))),
            TelemetryOracle(tree, Fixed(random_snapshot(tree, rng)))]


def others(tree, src):
    return np.array([d for d in range(tree.n_gpus) if d != src])


def test_cost_shape_and_non_negative(tree):
    rng = np.random.default_rng(0)
    for o in oracles(tree, rng):
        dsts = others(tree, 5)
        c = o.cost(q(5, dsts, rng.uniform(0, 2 * GB, dsts.size)))
        assert c.shape == dsts.shape
        assert np.all(c >= 0) and np.all(np.isfinite(c))


def test_more_bytes_never_cheaper(tree):
    rng = np.random.default_rng(1)
    for o in oracles(tree, rng):
        for src in (0, 21, 63):
            dsts = others(tree, src)
            prev = o.cost(q(src, dsts, 0.0))
            for nb in (1, 1e3, 1e6, 1e8, 1e9, 8e9, 1e11):
                cur = o.cost(q(src, dsts, nb))
                assert np.all(cur >= prev), (type(o).__name__, src, nb)
                prev = cur
            assert np.all(prev > o.cost(q(src, dsts, 1e9)))  # and strictly more for much more


def test_more_utilisation_never_cheaper(tree):
    rng = np.random.default_rng(2)
    for _trial in range(20):
        low = random_snapshot(tree, rng, 0.0, 0.9)
        bump = np.append(rng.uniform(0, 0.5, tree.n_links), 0.0)
        high = TelemetrySnapshot(0.0, np.clip(low.utilisation + bump, 0, 1), low.capacity_factor.copy())
        src = int(rng.integers(tree.n_gpus))
        dsts = others(tree, src)
        nb = rng.uniform(1e6, 4 * GB, dsts.size)
        c_low = TelemetryOracle(tree, Fixed(low)).cost(q(src, dsts, nb))
        c_high = TelemetryOracle(tree, Fixed(high)).cost(q(src, dsts, nb))
        assert np.all(c_high >= c_low)
    # a fully busy path costs more than an idle one
    idle = TelemetrySnapshot.idle(tree)
    busy = TelemetrySnapshot(0.0, np.append(np.ones(tree.n_links), 0.0), np.ones(tree.n_links + 1))
    dsts = others(tree, 0)
    assert np.all(TelemetryOracle(tree, Fixed(busy)).cost(q(0, dsts, GB))
                  > TelemetryOracle(tree, Fixed(idle)).cost(q(0, dsts, GB)))


@pytest.mark.parametrize("shape", [
    {},
    dict(nic_gbit_s=200),
    dict(tor_oversubscription=1.0, agg_oversubscription=1.0),
    dict(pods=8, tors_per_pod=4, servers_per_tor=4, gpus_per_server=4, aggs_per_pod=4, cores=8),
    dict(routing="ecmp"),
], ids=["default", "nic200", "nonblocking", "big", "ecmp"])
def test_idle_fabric_higher_tier_never_cheaper(shape):
    tree = FatTree(FatTreeConfig(**shape))
    idle_oracles = [StaticTierOracle(tree), TelemetryOracle(tree, Fixed(TelemetrySnapshot.idle(tree)))]
    for src in (0, tree.n_gpus // 2 + 3, tree.n_gpus - 1):
        dsts = others(tree, src)
        tiers = tree.tiers(src, dsts)
        assert set(tiers.tolist()) == {0, 1, 2, 3}
        for nb in (1.0, 1e6, GB, 10 * GB):
            for o in idle_oracles:
                c = o.cost(q(src, dsts, nb, flow_key=7))
                for t in range(3):
                    assert c[tiers == t].max() <= c[tiers == t + 1].min(), (src, nb, t, type(o).__name__)
                # tier 0 (NVLink) strictly cheaper than anything over the NIC
                assert c[tiers == 0].max() < c[tiers == 1].min()


def test_zero_bytes_cost_zero_even_when_down(tree):
    down = TelemetrySnapshot(0.0, np.zeros(tree.n_links + 1), np.append(np.zeros(tree.n_links), 1.0))
    dsts = others(tree, 3)
    for o in (StaticTierOracle(tree), TelemetryOracle(tree, Fixed(down)),
              TelemetryOracle(tree, Fixed(TelemetrySnapshot.idle(tree)))):
        c = o.cost(q(3, dsts, 0.0))
        assert np.all(c == 0.0)
    # mixed: only the zero-byte candidates are free
    nb = np.where(np.arange(dsts.size) % 2 == 0, 0.0, 1e6)
    c = StaticTierOracle(tree).cost(q(3, dsts, nb))
    assert np.all(c[nb == 0] == 0) and np.all(c[nb > 0] > 0)


def test_down_link_gives_inf_only_where_no_route_survives(tree):
    src = 0
    dsts = others(tree, src)
    # a GPU's own NIC link has no alternative: unreachable
    nic = tree.path(src, 63)[-1]
    factor = np.ones(tree.n_links + 1)
    factor[nic] = 0.0
    c = TelemetryOracle(tree, Fixed(TelemetrySnapshot(0.0, np.zeros(tree.n_links + 1), factor))).cost(q(src, dsts, GB))
    assert np.isinf(c[dsts == 63]).all() and np.isfinite(c[dsts != 63]).all()
    # a core uplink: the controller reroutes around it, and the oracle prices the new route
    route = tree.path(src, 63)
    core_up = route[2]
    assert tree.link_kind(core_up) == "agg_core"
    factor = np.ones(tree.n_links + 1)
    factor[core_up] = 0.0
    snap = TelemetrySnapshot(0.0, np.zeros(tree.n_links + 1), factor)
    c = TelemetryOracle(tree, Fixed(snap)).cost(q(src, dsts, GB))
    c0 = StaticTierOracle(tree).cost(q(src, dsts, GB))
    rows = tree.paths(src, dsts)
    crosses = (rows == core_up).any(axis=1)
    assert crosses.sum() > 0
    assert np.allclose(c, c0)  # same capacities and hop counts on the surviving route
    # ... and congestion on the surviving route is what it pays
    util = np.zeros(tree.n_links + 1)
    new_core = tree.path(src, 63, down={core_up})[2]
    util[new_core] = 1.0
    c1 = TelemetryOracle(tree, Fixed(TelemetrySnapshot(0.0, util, factor))).cost(q(src, dsts, GB))
    assert c1[dsts == 63][0] > 1.5 * c0[dsts == 63][0]
    # a partially degraded link is between nominal and down (no reroute: it still works)
    factor[core_up] = 0.25
    c2 = TelemetryOracle(tree, Fixed(TelemetrySnapshot(0.0, np.zeros(tree.n_links + 1), factor))).cost(q(src, dsts, GB))
    assert np.all(c2[crosses] > c0[crosses]) and np.all(np.isfinite(c2))
    assert np.allclose(c2[~crosses], c0[~crosses])
    # the static oracle knows nothing of failures
    assert np.allclose(StaticTierOracle(tree).cost(q(src, dsts, GB)), c0)


def test_idle_cost_is_bytes_over_bottleneck_plus_latency(tree):
    o = StaticTierOracle(tree, setup_s=30e-6)
    for dst in (1, 4, 8, 63):
        links = tree.path(0, dst)
        want = GB / tree.capacity[links].min() + tree.latency_s[links].sum() + 30e-6
        assert o.cost(q(0, [dst], GB))[0] == pytest.approx(want)


def test_congested_link_raises_cost_of_paths_crossing_it(tree):
    src = 0
    dsts = others(tree, src)
    link = tree.path(src, 63)[2]
    util = np.zeros(tree.n_links + 1)
    util[link] = 0.95
    snap = TelemetrySnapshot(0.0, util, np.ones(tree.n_links + 1))
    c = TelemetryOracle(tree, Fixed(snap), min_available_fraction=0.1).cost(q(src, dsts, GB))
    c0 = StaticTierOracle(tree).cost(q(src, dsts, GB))
    crosses = (tree.paths(src, dsts) == link).any(axis=1)
    # saturated: a fair share against oracle.saturated_link_flows elastic flows (at least 2x the idle price)
    assert np.all(c[crosses] > c0[crosses] * 1.5)
    assert np.allclose(c[~crosses], c0[~crosses])


def test_ecmp_oracle_prices_the_flows_own_path():
    tree = FatTree(FatTreeConfig(routing="ecmp"))
    src, dst = 0, 63
    paths_by_key = {k: tree.path(src, dst, flow_key=k) for k in range(32)}
    k1 = 0
    k2 = next(k for k, p in paths_by_key.items() if p[2] != paths_by_key[k1][2])
    factor = np.ones(tree.n_links + 1)
    factor[paths_by_key[k1][2]] = 0.0
    util = np.zeros(tree.n_links + 1)
    util[paths_by_key[k2][2]] = 1.0  # the other flow's core uplink is busy
    o = TelemetryOracle(tree, Fixed(TelemetrySnapshot(0.0, util, np.ones(tree.n_links + 1))))
    assert o.cost(q(src, [dst], GB, flow_key=k2))[0] > 1.5 * o.cost(q(src, [dst], GB, flow_key=k1))[0]
    # a flow hashed onto a failed link is priced on the route the controller moves it to
    o = TelemetryOracle(tree, Fixed(TelemetrySnapshot(0.0, np.zeros(tree.n_links + 1), factor)))
    assert np.isfinite(o.cost(q(src, [dst], GB, flow_key=k1))[0])
    assert paths_by_key[k1][2] not in tree.path(src, dst, flow_key=k1, down={paths_by_key[k1][2]})


# ----------------------------------------------------------------------------- staleness
def congested_snapshot(tree, t, link) -> TelemetrySnapshot:
    util = np.zeros(tree.n_links + 1)
    util[link] = 1.0
    return TelemetrySnapshot(t, util, np.ones(tree.n_links + 1))


def test_stale_oracle_answers_from_snapshot_of_now_minus_staleness(tree):
    src, dst = 0, 63
    link = tree.path(src, dst)[2]
    hist = TelemetryHistory(max_age_s=100)
    hist.add(TelemetrySnapshot.idle(tree, 0.0))
    hist.add(congested_snapshot(tree, 1.0, link))
    hist.add(TelemetrySnapshot.idle(tree, 2.0))
    fresh = TelemetryOracle(tree, hist)
    stale = TelemetryOracle(tree, hist, staleness_s=1.0)
    idle_cost = StaticTierOracle(tree).cost(q(src, [dst], GB))[0]
    # fresh: congested during [1, 2)
    assert fresh.cost(q(src, [dst], GB, now=0.5))[0] == pytest.approx(idle_cost)
    assert fresh.cost(q(src, [dst], GB, now=1.5))[0] > 1.5 * idle_cost
    assert fresh.cost(q(src, [dst], GB, now=2.5))[0] == pytest.approx(idle_cost)
    # one second stale: congestion seen during [2, 3)
    assert stale.cost(q(src, [dst], GB, now=1.5))[0] == pytest.approx(idle_cost)
    assert stale.cost(q(src, [dst], GB, now=2.0))[0] > 1.5 * idle_cost
    assert stale.cost(q(src, [dst], GB, now=2.9))[0] > 1.5 * idle_cost
    assert stale.cost(q(src, [dst], GB, now=3.0))[0] == pytest.approx(idle_cost)


def test_no_snapshot_behaves_like_static(tree):
    rng = np.random.default_rng(3)
    static = StaticTierOracle(tree)
    empty = TelemetryHistory()
    late = TelemetryHistory()
    late.add(congested_snapshot(tree, 10.0, tree.path(0, 63)[2]))
    for src in (0, 40):
        dsts = others(tree, src)
        nb = rng.uniform(0, 3 * GB, dsts.size)
        want = static.cost(q(src, dsts, nb, now=1.0))
        assert np.allclose(TelemetryOracle(tree, empty).cost(q(src, dsts, nb, now=1.0)), want)
        # the only snapshot is newer than now - staleness: nothing is known yet
        assert np.allclose(TelemetryOracle(tree, late, staleness_s=5.0).cost(q(src, dsts, nb, now=12.0)), want)


def test_make_oracle_by_name(tree):
    hist = TelemetryHistory()
    assert isinstance(make_oracle("static", tree, hist, 0.0, 0.1, 30e-6), StaticTierOracle)
    with pytest.raises(UnknownOracleError, match="telemetry source"):
        make_oracle("telemetry", tree, None, 0.0, 0.1, 30e-6)
    o = make_oracle("telemetry", tree, hist, 0.0, 0.1, 30e-6)
    assert type(o) is TelemetryOracle and o.staleness_s == 0.0
    s = make_oracle("telemetry", tree, hist, 2.0, 0.1, 30e-6)
    assert type(s) is TelemetryOracle and s.staleness_s == 2.0
    assert type(make_oracle("inflight", tree, hist, 0.0, 0.1, 30e-6)) is InflightOracle
    with pytest.raises(UnknownOracleError, match="true network state"):
        make_oracle("perfect", tree, hist, 0.0, 0.1, 30e-6)
    with pytest.raises(UnknownOracleError, match="bogus"):
        make_oracle("bogus", tree, hist, 0.0, 0.1, 30e-6)
    with pytest.raises(ValueError):
        TelemetryOracle(tree, hist, staleness_s=-1.0)


def test_path_cache_does_not_mix_sources(tree):
    """The deterministic-routing path cache is keyed per (src, candidates)."""
    o = StaticTierOracle(tree)
    dsts = np.array([1, 4, 8, 63])
    a = o.cost(q(0, dsts, GB))
    b = o.cost(q(63, dsts, GB))  # same candidate array, other source
    c = StaticTierOracle(tree).cost(q(63, dsts, GB))
    assert np.allclose(b, c)
    assert not np.allclose(a, b)


def test_the_config_names_every_registered_oracle_kind() -> None:
    """``oracle.kind`` and ``--oracle`` accept exactly the kinds the registry builds."""
    from scheduler.decision.oracle import ORACLES
    from scheduler.model.config import ORACLE_KINDS

    assert tuple(ORACLES) == ORACLE_KINDS
