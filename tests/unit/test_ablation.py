"""What the ablation rests on: the inflight and perfect oracles, layer-wise KV streaming, the
ablation block of the summary, and scenarios in which live information must (or must not) matter."""
from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import Fixed

from scheduler.decision.context import Decision, DecisionContext
from scheduler.decision.oracle import InflightOracle, OracleQuery, PerfectOracle, StaticTierOracle, TelemetryOracle
from scheduler.decision.telemetry import TelemetrySnapshot
from scheduler.model.config import build_config
from scheduler.model.scenario import Action, load_scenario
from scheduler.model.timing import TimingModel
from scheduler.model.trace import Request, n_blocks
from scheduler.policies import parse_spec
from scheduler.policies.base import Policy
from scheduler.results.metrics import ablation
from scheduler.sim.network import FlowNetwork
from scheduler.sim.simulator import Simulator
from topology.model import FatTree

TREE = FatTree()
GB = 1e9


class Source:
    def __init__(self, snap):
        self.snap = snap

    def at(self, time_s):
        return self.snap if self.snap is not None and self.snap.time_s <= time_s else None


def snapshot(t: float, util: dict[int, float] | None = None) -> TelemetrySnapshot:
    u = np.zeros(TREE.n_links + 1)
    for link, v in (util or {}).items():
        u[link] = v
    return TelemetrySnapshot(t, u, np.ones(TREE.n_links + 1))


def query(src, dsts, nbytes, now, start=None):
    dsts = np.asarray(dsts)
    return OracleQuery(src, dsts, np.full(dsts.shape, float(nbytes)), now, None, start)


# ----------------------------------------------------------------------------- inflight oracle
def test_inflight_without_commitments_is_the_telemetry_oracle():
    snap = snapshot(1.0, {TREE.path(0, 40)[2]: 0.7})
    dsts = np.arange(8, 64, 3)
    q = query(0, dsts, GB, 1.2)
    assert np.array_equal(InflightOracle(TREE, Source(snap)).cost(q), TelemetryOracle(TREE, Source(snap)).cost(q))


def test_inflight_takes_its_own_seen_transfer_off_the_measured_load():
    """A link busy with the scheduler's own transfer is not congestion for the next one once that
    transfer is over; plain telemetry cannot tell."""
    src, dst = 0, 40
    nic = TREE.path(src, dst)[0]  # the prefill's NIC uplink, which any transfer from it crosses
    rate = TREE.capacity[nic]  # the own transfer ran at the NIC's full rate
    snap = snapshot(1.0, {nic: 1.0})
    oracle = InflightOracle(TREE, Source(snap))
    oracle.commit(src, dst, start=0.6, end=1.6, nbytes=rate * 1.0, key=7)
    idle = StaticTierOracle(TREE).cost(query(src, [dst], GB, 1.2))[0]
    tele = TelemetryOracle(TREE, Source(snap)).cost(query(src, [dst], GB, 1.2, start=2.0))[0]
    # the own transfer ends at 1.6: a transfer starting at 2.0 has the link to itself
    assert oracle.cost(query(src, [dst], GB, 1.2, start=2.0))[0] == pytest.approx(idle)
    assert tele > 5 * idle  # telemetry alone sees a saturated NIC
    # one starting at 1.4, while the own transfer still moves, shares the NIC with it
    shared = oracle.cost(query(src, [dst], GB, 1.2, start=1.4))[0]
    lat = idle - GB / rate
    assert shared - lat == pytest.approx(2 * (idle - lat))
    # reported done early: it no longer shares
    oracle.done(7, 1.3)
    assert oracle.cost(query(src, [dst], GB, 1.35, start=1.4))[0] == pytest.approx(idle)


@pytest.mark.parametrize("dst", [40, 8])  # cross-pod (6 hops) and same pod (4 hops + padding)
def test_inflight_counts_commitments_the_snapshot_cannot_show_yet(dst):
    src = 0
    snap = snapshot(1.0)  # idle when taken
    oracle = InflightOracle(TREE, Source(snap))
    idle = StaticTierOracle(TREE).cost(query(src, [dst], GB, 1.2))[0]
    lat = idle - GB / TREE.capacity[TREE.path(src, dst)[0]]
    for k in range(3):  # three transfers from the same prefill, decided after the snapshot
        oracle.commit(src, 45 + k, start=1.5, end=3.0, nbytes=GB, key=k)
    got = oracle.cost(query(src, [dst], GB, 1.2, start=2.0))[0]
    assert got - lat == pytest.approx(4 * (idle - lat))  # the NIC shared four ways
    # a candidate whose path shares nothing with them is unaffected
    other = oracle.cost(query(17, [dst], GB, 1.2, start=2.0))[0]
    assert other == pytest.approx(StaticTierOracle(TREE).cost(query(17, [dst], GB, 1.2))[0])


# ----------------------------------------------------------------------------- perfect oracle
class Truth:
    def __init__(self, net: FlowNetwork, down=frozenset()):
        self.net, self.down = net, frozenset(down)

    def routing_down(self):
        return self.down

    def entrant_share(self):
        return self.net.entrant_share()


def test_perfect_oracle_prices_the_max_min_share_a_new_flow_would_get():
    net = FlowNetwork(TREE.capacity, TREE.pad)
    src, dst = 0, 40
    core_up = TREE.path(src, dst)[2]
    # three greedy flows through the core uplink of 0 -> 40, and one capped at a tenth of it
    peers = [d for d in range(48, 64) if core_up in TREE.path(4, d)][:3]
    for d in peers:
        net.add(np.array(TREE.paths(4, np.array([d]))[0]), np.inf)
    oracle = PerfectOracle(TREE, Truth(net))
    share = TREE.capacity[core_up] / 4  # a fourth flow gets a quarter under max-min
    want = StaticTierOracle(TREE).cost(query(src, [dst], GB, 0.0))[0] - GB / TREE.capacity[TREE.path(src, dst)[0]]
    assert oracle.cost(query(src, [dst], GB, 0.0))[0] == pytest.approx(want + GB / share)
    # a down link with no route around it (the decode's NIC) is unreachable; one with a route is not
    nic = TREE.path(src, dst)[-1]
    net.set_capacity([nic, core_up], 0.0)
    assert math.isinf(PerfectOracle(TREE, Truth(net, {nic})).cost(query(src, [dst], GB, 0.0))[0])
    net.set_capacity([nic], 1.0)
    assert math.isfinite(PerfectOracle(TREE, Truth(net, {core_up})).cost(query(src, [dst], GB, 0.0))[0])
    assert math.isinf(PerfectOracle(TREE, Truth(net)).cost(query(src, [dst], GB, 0.0))[0])  # not rerouted yet


# ----------------------------------------------------------------------------- layer-wise streaming


@pytest.mark.parametrize("nic", [400.0, 10.0])  # network faster / slower than the prefill makes KV
def test_layer_wise_transfer_against_a_hand_computed_case(nic):
    """One request, one path, nothing else: the stream starts after the first of L layers, runs at
    min(network, KV production rate B/P) until the prefill ends, then at the network's rate."""
    cfg = build_config(overrides=[f"topology.nic_gbit_s={nic}", "timing.kv_streaming=layer-wise"])
    timing = TimingModel(cfg)
    tree = FatTree(cfg.topology)
    p_gpu, d_gpu = 0, 8  # prefill rack p0t0 -> decode rack p0t1: tier 2
    tokens = 12000
    r = Request(0, 0.0, tokens, 5, tuple(range(1, n_blocks(tokens) + 1)))
    (rec,) = Simulator(cfg, [r], Fixed(p_gpu, d_gpu)).run()
    links = tree.path(p_gpu, d_gpu)
    rate = tree.capacity[links].min()
    lat = tree.latency_s[links].sum() + cfg.timing.transfer_setup_s
    B, P, L = tokens * cfg.model.kv_bytes_per_token, timing.prefill_s(tokens), cfg.model.layers
    if rate >= B / P:  # the network keeps up: only the last layer's share is left after the prefill
        want = B / L / rate
    else:  # network-bound from the first layer on
        want = P / L + B / rate - P
    assert rec.prefill_s == pytest.approx(P)
    assert rec.transfer_s == pytest.approx(want + lat, rel=1e-9)
    # the same request streamed after the prefill takes the whole B / rate
    after = build_config(overrides=[f"topology.nic_gbit_s={nic}"])
    (rec2,) = Simulator(after, [r], Fixed(p_gpu, d_gpu)).run()
    assert rec2.transfer_s == pytest.approx(B / rate + lat, rel=1e-9)
    assert rec.transfer_s < rec2.transfer_s


def test_layer_wise_netkv_weighs_only_the_visible_part():
    cfg = build_config(overrides=["timing.kv_streaming=layer-wise"])
    from scheduler.model.cluster import Cluster

    cl = Cluster(cfg, TREE)
    r = Request(0, 0.0, 12000, 5, tuple(range(1, n_blocks(12000) + 1)))
    ctx = DecisionContext(cl, r, 0.0, StaticTierOracle(TREE))
    raw = ctx.raw_transfer_cost_s(0)
    P = float(ctx.prefill_estimate_s[0] - ctx.prefill_queue_s[0])
    L = cfg.model.layers
    assert np.allclose(ctx.transfer_cost_s(0), np.maximum(raw / L, raw - P * (L - 1) / L))
    assert ctx.transfer_delay_s(0) == pytest.approx(P / L)


# ----------------------------------------------------------------------------- the ablation block
def test_ablation_block_arithmetic():
    pol = {"netkv": {"ttft_mean_s": 0.50}, "netkv:static": {"ttft_mean_s": 0.55},
           "netkv:perfect": {"ttft_mean_s": 0.48}, "topology-affinity": {"ttft_mean_s": 0.54},
           "round-robin": {"ttft_mean_s": 0.9}}
    a = ablation(pol)
    assert list(a["vs"]) == ["netkv:static", "netkv:perfect", "topology-affinity"]
    assert a["vs"]["netkv:static"]["ttft_mean_pct"] == pytest.approx(100 * (0.50 - 0.55) / 0.55)
    assert a["vs"]["netkv:perfect"]["ttft_mean_delta_ms"] == pytest.approx(20.0)
    assert a["captured"] == pytest.approx((0.55 - 0.50) / (0.55 - 0.48))
    # perfect information buys nothing: no share to report
    flat = ablation({"netkv": {"ttft_mean_s": 0.5}, "netkv:static": {"ttft_mean_s": 0.5},
                     "netkv:perfect": {"ttft_mean_s": 0.5}})
    assert math.isnan(flat["captured"])
    assert ablation({"cache-load": {"ttft_mean_s": 0.5}}) == {}


# ----------------------------------------------------------------------------- scenarios that must bite
def _run(spec: str, scenario: str, params=None, n=300):
    import dataclasses

    from scheduler.model.synthetic import SyntheticConfig, synthetic_trace

    cfg = build_config()
    reqs = synthetic_trace(dataclasses.replace(SyntheticConfig(), n_requests=n), seed=3)
    sc = load_scenario(scenario, TREE, params)
    acts = sc.actions(TREE, reqs[-1].arrival_s + 300, reqs[-1].arrival_s)
    pol = parse_spec(spec).make(None, 0, cfg.oracle.kind)
    return Simulator(cfg, reqs, pol, acts).run()


def test_live_telemetry_avoids_the_flooded_half_of_the_decode_pool_static_does_not():
    """decode-flap with long phases: the live oracle's transfers are about as fast as on an idle
    fabric, the static oracle's (topology only) much slower."""
    live = _run("netkv", "decode-flap", {"period": 60.0})
    static = _run("netkv:static", "decode-flap", {"period": 60.0})
    idle = _run("netkv:static", "idle")
    mean = lambda rs: float(np.mean([r.transfer_s for r in rs]))  # noqa: E731
    assert mean(static) > 2.0 * mean(idle)
    assert mean(live) < 1.3 * mean(idle)


def test_no_oracle_escapes_congestion_on_the_prefills_own_nics():
    """prefill-egress loads every prefill uplink: every decode choice pays the same."""
    live = _run("netkv", "prefill-egress")
    perfect = _run("netkv:perfect", "prefill-egress")
    idle = _run("netkv", "idle")
    mean = lambda rs: float(np.mean([r.transfer_s for r in rs]))  # noqa: E731
    assert mean(live) > 1.5 * mean(idle)
    assert mean(perfect) == pytest.approx(mean(live), rel=0.05)


def test_link_failure_counts_stalled_transfers_and_loses_none():
    recs = _run("cache-load", "link-failure", {"down_at": 0.2, "outage": 0.5}, n=400)
    assert len(recs) == 400 and all(math.isfinite(r.ttft_s) for r in recs)
    stalled = [r for r in recs if r.stalled_s > 0]
    for r in stalled:  # caught on the failed link: it stood still at most until the reroute
        assert r.stalled_s <= build_config().topology.reroute_delay_s + 1e-9
    # telemetry sees the link down: the live oracle prices the rerouted path and is not worse off
    live = _run("netkv", "link-failure", {"down_at": 0.2, "outage": 0.5}, n=400)
    assert len(live) == 400


class Recorder(Policy):
    """cache-load's choice, recording what the oracle says of one candidate at each decision."""

    name = "recorder"
    needs_oracle = True

    def __init__(self, watch: int, **kw) -> None:
        super().__init__(**kw)
        self.watch, self.seen = watch, []

    def choose(self, ctx) -> Decision:
        self.seen.append((ctx.now, float(ctx.raw_transfer_cost_s(0)[self.watch])))
        return Decision(0, (self.watch + 1) % ctx.n_decode)


@pytest.mark.parametrize("kind,unreachable_at", [("telemetry", 1.6), ("perfect", 1.25), ("static", None)])
def test_a_failed_link_is_unreachable_only_once_the_oracle_can_know(kind, unreachable_at):
    """The decode NIC fails at 1.2 s. Telemetry polls at 1.0 and 1.5 s: the live oracle learns of it
    at the 1.5 s snapshot, the perfect one at once, the static one never."""
    cfg = build_config()
    from scheduler.model.cluster import Cluster

    cl = Cluster(cfg, TREE)
    d_gpu = int(cl.decode_ids[3])
    nic = TREE.path(int(cl.prefill_ids[0]), d_gpu)[-1]
    down = [Action(1.2, "link_capacity", links=(nic,), factor=0.0),
            Action(3.0, "link_capacity", links=(nic,), factor=1.0)]
    times = (0.8, 1.25, 1.4, 1.6, 2.5, 3.6)
    reqs = [Request(i, t, 2000, 3, tuple(range(100 * i + 1, 100 * i + 1 + n_blocks(2000))))
            for i, t in enumerate(times)]
    pol = Recorder(3, oracle_kind=kind)
    Simulator(cfg, reqs, pol, down).run()
    for t, cost in pol.seen:
        dead = unreachable_at is not None and unreachable_at <= t < 3.0 + (0.5 if kind == "telemetry" else 0.0)
        assert math.isinf(cost) == dead, (kind, t, cost)
