"""The decision path's and the simulator's caches give exactly what the uncached computations give.

Every cache of the fast paths is checked bit for bit against the plain computation it replaces
(written out here as the reference): the oracles' per-source cost tables (per snapshot, down set,
ground-truth share vector), the decision context's per-layer views of the prefix caches, the
prefill estimate, progressive filling, the flow network's memo of rates and its deferred
recomputation, and the simulator's batching of scenario changes at one instant.
(Over 400 lines: every cache beside the plain computation it replaces, so a reader checks both in one place.)"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from scheduler.decision.context import DecisionContext
from scheduler.decision.oracle import (
    SATURATED_LINK_FLOWS,
    InflightOracle,
    NetworkOracle,
    OracleQuery,
    PerfectOracle,
    StaticTierOracle,
    TelemetryOracle,
    down_links,
)
from scheduler.decision.telemetry import TelemetrySnapshot
from scheduler.model.cluster import Cluster
from scheduler.model.config import build_config
from scheduler.model.scenario import load_scenario
from scheduler.model.synthetic import SyntheticConfig, synthetic_trace
from scheduler.model.trace import BLOCK_TOKENS
from scheduler.policies import parse_spec
from scheduler.sim.maxmin import _EPS
from scheduler.sim.network import FlowNetwork, max_min_rates
from scheduler.sim.simulator import Simulator
from topology.model import FatTree

TREE = FatTree()


def same(a, b) -> bool:
    """Equal to the last bit (NaN-free float arrays: equal values and equal signs of zero)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and np.array_equal(a.view(np.int64), b.view(np.int64))


class Source:
    def __init__(self, snap=None):
        self.snap = snap

    def at(self, time_s):
        return self.snap


def random_snapshot(rng, tree=TREE, down=0, t=0.0) -> TelemetrySnapshot:
    util = np.append(rng.uniform(0, 1.2, tree.n_links), 0.0)
    factor = np.ones(tree.n_links + 1)
    factor[rng.integers(tree.n_links, size=3)] = rng.uniform(0.2, 1.0, 3)
    if down:
        factor[rng.integers(2 * tree.n_gpus, tree.n_links, size=down)] = 0.0  # fabric links
    return TelemetrySnapshot(t, util, factor)


def reference_cost(tree, src, dsts, nbytes, inv, down=frozenset(), setup_s=30e-6, flow_key=None):
    """The uncached oracle computation: paths avoiding ``down``, latency + bytes x the
    bottleneck's seconds per byte, zero bytes free."""
    paths = tree.paths(src, dsts, flow_key, down)
    latency = tree.latency_s[paths].sum(axis=1) + setup_s
    return NetworkOracle._finish(latency, np.asarray(nbytes, dtype=float), inv[paths].max(axis=1))


def telemetry_inv(tree, snap, floor=0.1, flows=SATURATED_LINK_FLOWS):
    """Seconds per byte of every link: a new flow gets what the load leaves, or its max-min share
    against ``flows`` others, or the floor, whichever is largest."""
    free = np.maximum(np.maximum(1.0 - np.clip(snap.utilisation, 0.0, 1.0), 1.0 / (flows + 1.0)), floor)
    return NetworkOracle._inverse(tree.capacity * snap.capacity_factor * free)


def random_bytes(rng, k):
    b = rng.integers(0, 4, size=k) * rng.uniform(1e6, 2e9)
    b[rng.random(k) < 0.2] = 0.0
    return b


# ----------------------------------------------------------------------------- oracle cost tables
@pytest.mark.parametrize("routing", ["dst", "ecmp"])
def test_telemetry_tables_equal_the_uncached_cost_over_random_snapshots(routing):
    cfg = build_config(overrides=[f"topology.routing={routing}"])
    tree = FatTree(cfg.topology)
    rng = np.random.default_rng(1)
    src = Source()
    oracle = TelemetryOracle(tree, src)
    dsts = np.arange(1, tree.n_gpus, 2)
    for trial in range(40):
        if trial % 4 == 0:  # a new snapshot every fourth query: tables reused, then rebuilt
            src.snap = random_snapshot(rng, tree, down=int(rng.integers(0, 3)), t=float(trial))
        s = int(rng.integers(0, tree.n_gpus, 1)[0]) // 2 * 2
        nbytes = random_bytes(rng, dsts.size)
        got = oracle.cost(OracleQuery(s, dsts, nbytes, float(trial), 7 + trial))
        want = reference_cost(tree, s, dsts, nbytes, telemetry_inv(tree, src.snap), down_links(src.snap),
                              flow_key=7 + trial)
        assert same(got, want)


def test_telemetry_table_is_reused_per_snapshot_and_rebuilt_for_a_new_one():
    rng = np.random.default_rng(2)
    src = Source(random_snapshot(rng))
    oracle = TelemetryOracle(TREE, src)
    dsts = np.arange(1, 64, 2)
    q = OracleQuery(0, dsts, None, 1.0)
    first = oracle.table(q)
    assert oracle.table(q)[1] is first[1]  # same snapshot, same source: the cached table
    assert oracle.table(q._replace(src=2))[1] is not first[1]  # another source: its own table
    src.snap = dataclasses.replace(src.snap)  # a new snapshot object with the same values
    again = oracle.table(q)
    assert again[1] is not first[1] and same(again[1], first[1])
    # a snapshot reporting a fabric link down: the table prices the rerouted paths
    link = TREE.path(0, 41)[2]
    factor = src.snap.capacity_factor.copy()
    factor[link] = 0.0
    src.snap = TelemetrySnapshot(2.0, src.snap.utilisation, factor)
    nbytes = np.full(dsts.size, 1e9)
    got = oracle.cost(q._replace(nbytes=nbytes))
    assert same(got, reference_cost(TREE, 0, dsts, nbytes, telemetry_inv(TREE, src.snap), frozenset({link})))
    assert np.isfinite(got).all()  # every candidate has a route around one fabric link
    # a caller passing another candidate array gets a table for it, not the cached one
    other = dsts[::-1].copy()
    assert same(oracle.cost(OracleQuery(0, other, nbytes, 2.0)),
                reference_cost(TREE, 0, other, nbytes, telemetry_inv(TREE, src.snap), frozenset({link})))


def test_static_tables_equal_the_uncached_cost():
    rng = np.random.default_rng(3)
    oracle = StaticTierOracle(TREE)
    inv = NetworkOracle._inverse(TREE.capacity)
    for s in (0, 2, 17, 63):
        dsts = np.arange(64)
        nbytes = random_bytes(rng, 64)
        assert same(oracle.cost(OracleQuery(s, dsts, nbytes, 0.0)), reference_cost(TREE, s, dsts, nbytes, inv))


class Truth:
    def __init__(self, share, down=frozenset()):
        self.share, self.down = share, frozenset(down)

    def routing_down(self):
        return self.down

    def entrant_share(self):
        return self.share


def test_perfect_tables_follow_the_share_vector_and_the_routing():
    rng = np.random.default_rng(4)
    truth = Truth(np.append(rng.uniform(1e9, 5e10, TREE.n_links), np.inf))
    oracle = PerfectOracle(TREE, truth)
    dsts = np.arange(1, 64, 2)
    for trial in range(12):
        if trial % 3 == 1:
            truth.share = np.append(rng.uniform(1e9, 5e10, TREE.n_links), np.inf)  # rates changed
            truth.share[rng.integers(TREE.n_links)] = 0.0
        if trial % 4 == 2:
            truth.down = frozenset({int(TREE.path(0, 41)[2])})  # the routing moved
        nbytes = random_bytes(rng, dsts.size)
        got = oracle.cost(OracleQuery(4, dsts, nbytes, 0.0))
        assert same(got, reference_cost(TREE, 4, dsts, nbytes, NetworkOracle._inverse(truth.share), truth.down))


def reference_inflight(oracle: InflightOracle, snap, query: OracleQuery) -> np.ndarray:
    """InflightOracle.cost as first written (ledger already cleaned up by the call under test)."""
    tree = oracle.tree
    inv = telemetry_inv(tree, snap, oracle.floor) if snap is not None else NetworkOracle._inverse(tree.capacity)
    start = query.now if query.start is None else query.start
    n = inv.shape[0]
    seen_t = snap.time_s if snap is not None else -np.inf
    seen = [e for e in oracle._ledger.values() if e.start <= seen_t < min(e.end, e.done_at)]
    later = [e.path for e in oracle._ledger.values() if e.start <= start < e.end and e.done_at > query.now]
    if seen or later:
        with np.errstate(invalid="ignore"):
            cap = tree.capacity * (snap.capacity_factor if snap is not None else 1.0)
            util = np.clip(snap.utilisation, 0.0, 1.0) if snap is not None else np.zeros(n)
            own = np.zeros(n)
            for e in seen:
                np.add.at(own, e.path, e.rate)
            own[-1] = 0.0
            with np.errstate(invalid="ignore"):
                background = np.maximum(util * cap - own, 0.0)
            background[-1] = 0.0  # the padding link
            free = np.maximum(np.maximum(cap - background, cap / (oracle.flows + 1.0)), oracle.floor * cap)
            sharers = np.bincount(np.concatenate(later), minlength=n).astype(float) if later else np.zeros(n)
            sharers[-1] = 0.0
            inv = NetworkOracle._inverse(free / (1.0 + sharers))
    return reference_cost(tree, query.src, query.dsts, query.nbytes, inv, down_links(snap))


def test_inflight_uses_the_snapshot_table_only_while_no_own_transfer_counts():
    rng = np.random.default_rng(5)
    snap = random_snapshot(rng, t=1.0)
    oracle = InflightOracle(TREE, Source(snap))
    dsts = np.arange(1, 64, 2)
    q = OracleQuery(0, dsts, random_bytes(rng, dsts.size), 1.2, None, 1.5)
    plain = TelemetryOracle(TREE, Source(snap))
    assert same(oracle.cost(q), plain.cost(q))  # empty ledger: the telemetry oracle
    oracle.commit(0, 41, start=0.8, end=1.4, nbytes=4e9, key=1)  # moving when the snapshot was taken
    oracle.commit(2, 45, start=1.3, end=2.0, nbytes=2e9, key=2)  # will share with a start at 1.5
    with np.errstate(invalid="ignore"):
        got = oracle.cost(q)
    assert same(got, reference_inflight(oracle, snap, q))
    oracle.done(2, 1.4)  # finished early: only the seen transfer is left to correct for
    with np.errstate(invalid="ignore"):
        assert same(oracle.cost(q), reference_inflight(oracle, snap, q))


# ----------------------------------------------------------------------------- decision context
def warmed_cluster(overrides, seed):
    cfg = build_config(overrides=overrides)
    tree = FatTree(cfg.topology)
    cl = Cluster(cfg, tree)
    rng = np.random.default_rng(seed)
    reqs = synthetic_trace(dataclasses.replace(SyntheticConfig(), n_requests=400), seed=seed)
    for r in reqs[:300]:
        cl.prefill_cache.insert(int(rng.integers(cl.prefill_ids.size)), r.hash_ids)
        cl.decode_cache.insert(int(rng.integers(cl.decode_ids.size)), r.hash_ids)
    cl.prefill_busy_until[:] = rng.uniform(0, 2.0, cl.prefill_ids.size)
    cl.decode_assigned_tokens[:] = rng.uniform(0, 0.5, cl.decode_ids.size) * cl.decode_capacity_tokens
    return cfg, tree, cl, reqs, rng


@pytest.mark.parametrize("overrides", [
    [],  # the default cluster: 32 prefill, 16 decode instances
    ["timing.kv_streaming=layer-wise"],
    # 512 GPUs, 256 prefill instances: above 128 the prefill estimate uses the vectorised formula
    ["topology.pods=8", "topology.tors_per_pod=4", "topology.servers_per_tor=4", "topology.aggs_per_pod=4",
     "topology.cores=16", "cluster.placement=mixed", "cluster.reserved_servers_per_pod=0"],
])
def test_context_views_equal_the_dense_computations(overrides):
    _cfg, tree, cl, reqs, rng = warmed_cluster(overrides, seed=len(overrides))
    snap = random_snapshot(rng, tree, down=1)
    oracle = TelemetryOracle(tree, Source(snap))
    t = cl.timing
    for r in reqs[250:400]:  # some prompts cached somewhere, some nowhere
        ctx = DecisionContext(cl, r, 1.0, oracle)
        inp = r.input_tokens
        pre = np.minimum(cl.prefill_cache.prefix_blocks(r.hash_ids) * BLOCK_TOKENS, inp)
        dec = np.minimum(cl.decode_cache.prefix_blocks(r.hash_ids) * BLOCK_TOKENS, inp)
        queue = np.maximum(cl.prefill_busy_until - 1.0, 0.0)
        assert same(ctx.prefill_estimate_s, queue + t.prefill_s_array(inp, pre))
        assert same(ctx.decode_miss, 1.0 - dec / max(inp, 1))
        assert np.array_equal(ctx.prefill_cached_tokens, pre) and np.array_equal(ctx.decode_cached_tokens, dec)
        nbytes = (inp - dec).astype(float) * t.kv_bytes_per_token
        assert same(ctx.decode_bytes, nbytes)
        for p in (0, int(rng.integers(cl.prefill_ids.size))):
            want = oracle.cost(OracleQuery(int(cl.prefill_ids[p]), cl.decode_ids, nbytes, 1.0, r.req_id,
                                           1.0 + ctx.transfer_delay_s(p)))
            assert same(ctx.raw_transfer_cost_s(p), want)
            assert ctx.prefill_cached_at(p) == pre[p]
        d = int(rng.integers(cl.decode_ids.size))
        assert ctx.decode_cached_at(d) == dec[d]


def test_prefill_values_match_the_array_entries_on_both_sides_of_the_scalar_limit():
    cfg = build_config()
    cl = Cluster(cfg, FatTree(cfg.topology))
    t = cl.timing
    cached = [0, 512, 4096, 20000, 30000]
    for n in (t.SCALAR_MAX_INSTANCES, t.SCALAR_MAX_INSTANCES + 1):
        arr = np.array(cached + [0] * (n - len(cached)))
        assert same(t.prefill_s_values(20000, cached, n), t.prefill_s_array(20000, arr)[:len(cached)])


@pytest.mark.parametrize("spec", ["cache-load", "topology-affinity", "topology-filter", "netkv", "netkv:static"])
def test_policy_memos_do_not_change_decisions(spec):
    """Decisions with the cluster's memoised per-prefill tables equal those made on an empty memo."""
    _cfg, tree, cl, reqs, rng = warmed_cluster([], seed=9)
    oracle = TelemetryOracle(tree, Source(random_snapshot(rng, tree)))
    policy = parse_spec(spec).make()
    kept = cl.memo
    for turn, r in enumerate(reqs[250:330], 1):
        a = policy.choose(DecisionContext(cl, r, 1.0, oracle, turn))
        cl.memo = {}
        b = policy.choose(DecisionContext(cl, r, 1.0, oracle, turn))
        cl.memo = kept
        assert (a.prefill, a.decode) == (b.prefill, b.decode)
    assert bool(kept) == spec.startswith("topology-")  # the tier policies' tables were memoised


# ----------------------------------------------------------------------------- flow network
def reference_max_min(paths, capacity, caps, pad):
    """Progressive filling as first written: every round recounts the active flows per link."""
    n_flows = paths.shape[0]
    rates = np.zeros(n_flows)
    if n_flows == 0:
        return rates
    n_links = capacity.shape[0]
    remaining = capacity.astype(float).copy()
    active = np.ones(n_flows, dtype=bool)
    for _ in range(n_flows + n_links):
        if not active.any():
            break
        counts = np.bincount(paths[active].reshape(-1), minlength=n_links).astype(float)
        counts[pad] = 0.0
        used = counts > 0
        link_share = np.full(n_links, np.inf)
        link_share[used] = remaining[used] / counts[used]
        inc = link_share.min() if used.any() else np.inf
        inc = min(inc, (caps[active] - rates[active]).min())
        if not np.isfinite(inc):
            raise ValueError("a flow has neither a finite path capacity nor a rate cap")
        inc = max(inc, 0.0)
        rates[active] += inc
        remaining -= inc * counts
        saturated = used & (remaining <= _EPS * np.maximum(capacity, 1.0))
        saturated[pad] = False
        capped = np.isfinite(caps) & (caps - rates <= _EPS * np.maximum(np.where(np.isfinite(caps), caps, 1.0), 1.0))
        active &= ~(saturated[paths].any(axis=1) | capped)
    return rates


def random_flows(rng, k, width):
    paths = np.full((k, width), TREE.pad, dtype=np.int64)
    for i in range(k):
        s, d = rng.choice(TREE.n_gpus, size=2, replace=False)
        row = TREE.paths(int(s), np.array([int(d)]))[0]
        paths[i, :min(width, row.size)] = row[:width]
    caps = np.where(rng.random(k) < 0.3, rng.uniform(1e8, 6e10, k), np.inf)
    return paths, caps


@pytest.mark.parametrize("width", [6, 8])  # the network's rows are 8 wide; the simulator's paths 6
def test_progressive_filling_equals_the_textbook_loop_bit_for_bit(width):
    rng = np.random.default_rng(7)
    for trial in range(150):
        paths, caps = random_flows(rng, int(rng.integers(1, 50)), width)
        capacity = TREE.capacity.copy()
        if trial % 5 == 0:
            capacity[rng.integers(TREE.n_links, size=4)] *= rng.choice([0.0, 0.5], size=4)
        assert same(max_min_rates(paths, capacity, caps, TREE.pad), reference_max_min(paths, capacity, caps, TREE.pad))


def test_rate_memo_and_deferred_recomputation_change_no_rate():
    rng = np.random.default_rng(8)
    memo, plain = FlowNetwork(TREE.capacity, TREE.pad), FlowNetwork(TREE.capacity, TREE.pad)

    class NoMemo(dict):
        def __setitem__(self, key, value):
            pass

    plain._memo = NoMemo()  # computes every time
    pairs = [(0, 41), (2, 45), (4, 9), (6, 40), (1, 3)]  # few flows over few pairs: flow sets recur
    ids: list[int] = []
    for step in range(400):
        held = step % 7 == 0
        if held:
            memo.hold()
        for _ in range(3 if held else 1):
            if len(ids) >= 4 or (ids and rng.random() < 0.45):
                fid = ids.pop(int(rng.integers(len(ids))))
                memo.remove(fid)
                plain.remove(fid)
            else:
                s, d = pairs[int(rng.integers(len(pairs)))]
                path = TREE.paths(s, np.array([d]))[0]
                size = float(rng.choice([np.inf, 1e9, 5e8]))
                ids.append(memo.add(path, size))
                plain.add(path, size)
        if held:
            memo.release()
        for fid in ids:
            assert memo.flows[fid].rate == plain.flows[fid].rate
        assert same(memo.link_rate, plain.link_rate) and same(memo.entrant_share(), plain.entrant_share())
        assert memo.next_completion() == plain.next_completion()
        t = memo.now + float(rng.uniform(0, 0.005))
        memo.advance(t)
        plain.advance(t)
    assert memo.memo_hits > 100 and plain.memo_hits == 0


# ----------------------------------------------------------------------------- simulator
@pytest.mark.parametrize("scenario", ["decode-flap", "link-failure"])
def test_batched_scenario_changes_give_the_same_run(scenario):
    """Scenario changes at one instant share one rate recomputation and push no more events; the
    records are those of applying them one by one."""
    cfg = build_config()
    tree = FatTree(cfg.topology)
    reqs = synthetic_trace(dataclasses.replace(SyntheticConfig(), n_requests=500), seed=1)
    actions = load_scenario(scenario, tree, {"period": 4.0} if scenario == "decode-flap" else None).actions(
        tree, reqs[-1].arrival_s + 300.0, reqs[-1].arrival_s)
    runs = []
    for batch in (True, False):
        sim = Simulator(cfg, reqs, parse_spec("netkv").make(), actions)
        sim._batch_scenario = batch
        runs.append(([dataclasses.replace(r, decision_us=0.0) for r in sim.run()], sim.events, sim.net.recomputes))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1] <= runs[1][1] and runs[0][2] < runs[1][2]  # no more events, fewer recomputations


def test_route_cache_gives_the_topology_paths():
    down = frozenset({int(TREE.path(0, 41)[2])})
    for src, dst in ((0, 41), (0, 41), (5, 9), (3, 3)):
        for d in (frozenset(), down):
            got = TREE.route(src, dst, 123, d)
            assert np.array_equal(got, TREE.paths(src, np.array([dst]), 123, d)[0])
            assert not got.flags.writeable


def test_inflight_commit_routes_are_the_topology_paths():
    snap = TelemetrySnapshot.idle(TREE)
    oracle = InflightOracle(TREE, Source(snap))
    for k, (src, dst) in enumerate(((0, 41), (0, 41), (2, 9))):
        oracle.commit(src, dst, 1.0, 2.0, flow_key=k, nbytes=1e9, key=k)
        assert np.array_equal(oracle._ledger[k].path, TREE.paths(src, np.array([dst]), k)[0])
    assert oracle._ledger[0].path is oracle._ledger[1].path  # one route, computed once
