"""The predictive oracle: the oracle contract (scheduler/decision/oracle.py docstring) and its
pricing of a transfer over its future against the transfers committed before it."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.decision.dispatch import build_oracles
from scheduler.decision.oracle import OracleQuery, PredictiveOracle, TelemetryOracle, make_oracle
from scheduler.decision.telemetry import TelemetrySnapshot
from scheduler.model.config import build_config
from scheduler.policies import parse_spec
from scripts.netkv import EXIT_BAD_INPUT, main
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


def q(src, dsts, nbytes, now=0.0, start=None) -> OracleQuery:
    dsts = np.asarray(dsts, dtype=np.int64)
    nb = np.broadcast_to(np.asarray(nbytes, dtype=float), dsts.shape).copy()
    return OracleQuery(src, dsts, nb, now, None, start)


def others(tree, src):
    return np.array([d for d in range(tree.n_gpus) if d != src])


def idle_oracle(tree) -> PredictiveOracle:
    return PredictiveOracle(tree, Fixed(TelemetrySnapshot.idle(tree)))


def random_commitments(o: PredictiveOracle, tree: FatTree, rng: np.random.Generator, n: int) -> None:
    for key in range(n):
        src, dst = rng.choice(tree.n_gpus, size=2, replace=False)
        start = float(rng.uniform(0.0, 2.0))
        o.commit(int(src), int(dst), start, start + float(rng.uniform(0.01, 1.0)), None,
                 float(rng.uniform(0.1, 4.0)) * GB, key)


def reference_cost(o: PredictiveOracle, tree: FatTree, src: int, dst: int, nbytes: float, start: float) -> float:
    """Plainly, one candidate: from the start, move bytes at the bottleneck rate of the moment
    (capacity / (1 + committed transfers moving on the link)) until the next commitment starts
    or ends, and so on until every byte is moved."""
    if nbytes <= 0:
        return 0.0
    path = tree.path(src, dst)
    cap = tree.capacity[path]
    ledger = list(o._ledger.values())
    marks = sorted({t for e in ledger for t in (e.start, e.end) if t > start})
    t, left = start, nbytes
    for nxt in marks + [np.inf]:
        n = np.array([sum(int((e.path == link).sum()) for e in ledger if e.start <= t < e.end) for link in path])
        rate = float((cap / (1 + n)).min())
        if t + left / rate <= nxt:
            t += left / rate
            break
        left -= rate * (nxt - t)
        t = nxt
    return o.setup_s + float(tree.latency_s[path].sum()) + t - start


def test_kind_is_registered_and_usable_as_a_policy_oracle(tree):
    o = make_oracle("predictive", tree, Fixed(TelemetrySnapshot.idle(tree)), 0.0, 0.1, 30e-6)
    assert type(o) is PredictiveOracle and o.tracks_commitments
    assert parse_spec("netkv:predictive").make().oracle_kind == "predictive"


@pytest.mark.parametrize("commitments", [0, 1, 12])
def test_zero_bytes_cost_nothing(tree, commitments):
    o = idle_oracle(tree)
    random_commitments(o, tree, np.random.default_rng(commitments), commitments)
    dsts = others(tree, 3)
    assert np.all(o.cost(q(3, dsts, 0.0, start=0.5)) == 0.0)
    nb = np.where(np.arange(dsts.size) % 2 == 0, 0.0, GB)
    c = o.cost(q(3, dsts, nb, start=0.5))
    assert np.all(c[nb == 0] == 0.0) and np.all(c[nb > 0] > 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_more_bytes_never_cheaper(tree, seed):
    rng = np.random.default_rng(seed)
    o = idle_oracle(tree)
    random_commitments(o, tree, rng, 30)
    for src in (0, 21, 63):
        dsts = others(tree, src)
        prev = o.cost(q(src, dsts, 0.0, start=0.3))
        for nb in (1.0, 1e6, 1e8, 1e9, 8e9, 1e11):
            cur = o.cost(q(src, dsts, nb, start=0.3))
            assert np.all(cur >= prev), (src, nb)
            prev = cur


@pytest.mark.parametrize("shape", [{}, dict(nic_gbit_s=200), dict(routing="ecmp")], ids=["default", "nic200", "ecmp"])
def test_idle_fabric_higher_tier_never_cheaper_and_equals_telemetry(shape):
    tree = FatTree(FatTreeConfig(**shape))
    o = idle_oracle(tree)
    telemetry = TelemetryOracle(tree, Fixed(TelemetrySnapshot.idle(tree)))
    for src in (0, tree.n_gpus - 1):
        dsts = others(tree, src)
        tiers = tree.tiers(src, dsts)
        for nb in (1.0, GB, 10 * GB):
            c = o.cost(q(src, dsts, nb, start=1.0))
            assert np.array_equal(c, telemetry.cost(q(src, dsts, nb)))
            for t in range(3):
                assert c[tiers == t].max() <= c[tiers == t + 1].min()


# A committed transfer from GPU 0 to GPU 63 (a tier-3 path) over [1.0, 1.5); a new 1 GB transfer
# from GPU 0 (sharing its NIC uplink) or GPU 4 (another server: no link in common with it when
# sent to GPU 1), starting at `start`.
@pytest.mark.parametrize(("src", "dst", "start", "dearer"), [
    (0, 62, 1.0, True),    # overlapping, shares the source NIC and the core path
    (0, 8, 1.2, True),     # overlapping, shares the source NIC only
    (0, 8, 0.9, True),     # starts before, still moving when the committed one starts
    (0, 8, 1.5, False),    # starts when the committed one ends
    (0, 8, 3.0, False),    # long after
    (0, 8, 0.0, False),    # finishes (20 ms at 400 Gbit/s) before the committed one starts
    (4, 5, 1.2, False),    # overlapping in time, no link in common
    (4, 63, 1.2, True),    # overlapping, shares the destination NIC
])
def test_commitment_raises_price_only_on_shared_links_overlapping_in_time(tree, src, dst, start, dearer):
    o = idle_oracle(tree)
    before = o.cost(q(src, [dst], GB, start=start))[0]
    o.commit(0, 63, 1.0, 1.5, None, 10 * GB, key=1)
    after = o.cost(q(src, [dst], GB, start=start))[0]
    assert (after > before) if dearer else (after == before)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_price_is_the_integral_of_the_bottleneck_rate(tree, seed):
    rng = np.random.default_rng(seed)
    o = idle_oracle(tree)
    random_commitments(o, tree, rng, 20)
    src = int(rng.integers(tree.n_gpus))
    dsts = rng.choice(others(tree, src), size=6, replace=False)
    nb = rng.uniform(0.1, 20.0, dsts.size) * GB
    start = float(rng.uniform(0.0, 1.5))
    got = o.cost(q(src, dsts, nb, start=start))
    want = [reference_cost(o, tree, src, int(d), float(b), start) for d, b in zip(dsts, nb)]
    assert got == pytest.approx(want, rel=1e-9)


def test_finished_commitments_no_longer_count(tree):
    o = idle_oracle(tree)
    free = o.cost(q(0, [8], GB, start=1.0))[0]
    o.commit(0, 63, 1.0, 2.0, None, 10 * GB, key=7)
    assert o.cost(q(0, [8], GB, start=1.0))[0] > free
    o.done(7, 0.5)  # the backend reports it landed before the new decision
    assert o.cost(q(0, [8], GB, now=0.6, start=1.0))[0] == free


def test_down_path_costs_inf_unless_nothing_moves(tree):
    factor = np.ones(tree.n_links + 1)
    factor[tree.path(0, 63)[-1]] = 0.0  # GPU 63's NIC
    o = PredictiveOracle(tree, Fixed(TelemetrySnapshot(0.0, np.zeros(tree.n_links + 1), factor)))
    o.commit(0, 62, 0.0, 2.0, None, GB, key=1)
    c = o.cost(q(0, [62, 63], [GB, GB], start=0.5))
    assert np.isfinite(c[0]) and np.isinf(c[1])
    assert np.all(o.cost(q(0, [62, 63], 0.0, start=0.5)) == 0.0)


def saturated(tree, time_s=0.0) -> TelemetrySnapshot:
    """Every link at full load: the live price is the fair share's, (flows + 1) x the idle one."""
    return TelemetrySnapshot(time_s, np.append(np.ones(tree.n_links), 0.0), np.ones(tree.n_links + 1))


@pytest.mark.parametrize("lead, expect", [
    (0.0, "live"), (0.5, "live"), (1.0, "live"),  # within the persistence: the snapshot's price
    (30.0, "static"),  # far beyond it: the idle fabric's
])
def test_background_decays_to_the_static_price_beyond_the_persistence(tree, lead, expect):
    src, dsts = 0, others(tree, 0)
    query = q(src, dsts, 2 * GB, now=0.0, start=lead)  # the lead over the snapshot (taken at 0)
    got = PredictiveOracle(tree, Fixed(saturated(tree)), persistence_s=1.0).cost(query)
    live = PredictiveOracle(tree, Fixed(saturated(tree))).cost(query)
    static = make_oracle("static", tree, None, 0.0, 0.1, 30e-6).cost(query)
    assert (live > 2 * static).all()  # the saturated fabric is priced well above the idle one
    if expect == "live":
        assert np.array_equal(got, live)
    else:
        np.testing.assert_allclose(got, static, rtol=1e-6)


def test_background_weight_falls_with_the_lead(tree):
    src, dsts = 0, others(tree, 0)
    o = PredictiveOracle(tree, Fixed(saturated(tree)), persistence_s=1.0)
    prices = [o.cost(q(src, dsts, 2 * GB, start=lead)) for lead in (1.0, 1.5, 2.0, 4.0, 8.0)]
    for nearer, later in zip(prices, prices[1:]):
        assert (later < nearer).all()


def test_off_by_default_the_live_price_holds_whatever_the_lead(tree):
    query = q(0, others(tree, 0), 2 * GB, start=60.0)
    assert np.array_equal(PredictiveOracle(tree, Fixed(saturated(tree))).cost(query),
                          TelemetryOracle(tree, Fixed(saturated(tree))).cost(query))


def test_commitments_stay_exact_when_the_background_decays(tree):
    # a far-future transfer sharing links with a committed one: only the background fades, so
    # the price is the one on an idle fabric with that commitment
    src, dst = 0, 40
    query = q(src, [dst], 4 * GB, start=30.0)
    decayed = PredictiveOracle(tree, Fixed(saturated(tree)), persistence_s=1.0)
    idle = idle_oracle(tree)
    for o in (decayed, idle):
        o.commit(1, dst, 29.9, 31.0, None, 20 * GB, 0)
    alone = idle_oracle(tree).cost(query)
    assert idle.cost(query)[0] > 1.5 * alone[0]  # the commitment matters here
    np.testing.assert_allclose(decayed.cost(query), idle.cost(query), rtol=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_persistence_must_be_positive(tree, bad):
    with pytest.raises(ValueError, match="persistence_s"):
        PredictiveOracle(tree, Fixed(saturated(tree)), persistence_s=bad)


def configured_predictive(tree: FatTree, *overrides: str) -> PredictiveOracle:
    """The predictive oracle a run builds from its config (``--set`` overrides)."""
    oracle, _ = build_oracles(build_config(overrides=list(overrides)), tree, "predictive",
                              Fixed(saturated(tree)), truth=None)
    assert isinstance(oracle, PredictiveOracle)
    return oracle


def test_config_persistence_reaches_the_run_oracle(tree):
    # oracle.persistence_s = 0 (the default) is off: the live price at any lead; > 0 decays a
    # far-future transfer's background toward the idle price, and near-future ones keep it
    far, near = q(0, others(tree, 0), 2 * GB, start=30.0), q(0, others(tree, 0), 2 * GB, start=0.5)
    off = configured_predictive(tree)
    on = configured_predictive(tree, "oracle.persistence_s=1")
    assert off.persistence_s is None and on.persistence_s == 1.0
    live = TelemetryOracle(tree, Fixed(saturated(tree))).cost(far)
    assert np.array_equal(off.cost(far), live)
    assert (on.cost(far) < 0.5 * live).all()
    assert np.array_equal(on.cost(near), off.cost(near))


def test_cli_refuses_a_negative_persistence_naming_it(tmp_path, capsys):
    code = main(["simulate", "--max-requests", "10", "--no-tune", "--no-progress", "--policies", "netkv:predictive",
                 "--set", "oracle.persistence_s=-1", "--out", str(tmp_path / "out")])
    assert code == EXIT_BAD_INPUT
    assert "oracle.persistence_s" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
