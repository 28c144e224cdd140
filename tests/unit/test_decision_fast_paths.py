"""The decision path's fast paths give what the plain computations give, on randomized inputs.

Each is checked against a reference written out here the simple way: the prefix index's bisect
search (:meth:`PrefixCacheGroup.hits`) against a block-by-block scan of every instance's LRU, the
layer writes (:attr:`PrefixHits.writes`: index tuples written entry by entry, arrays overwritten
by deeper layers) against the dense hit lengths, ``best_prefill``'s tie test against counting the
near-minimal estimates, and NetKV's decisions (and the views they leave) against a dense,
per-instance computation through the oracle's ``cost``."""
from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest

from scheduler.decision.context import DecisionContext
from scheduler.decision.oracle import OracleQuery, StaticTierOracle, TelemetryOracle
from scheduler.decision.telemetry import TelemetrySnapshot
from scheduler.model.cache import FEW, PrefixCacheGroup
from scheduler.model.cluster import Cluster
from scheduler.model.config import build_config
from scheduler.model.synthetic import SyntheticConfig, synthetic_trace
from scheduler.model.trace import BLOCK_TOKENS
from scheduler.policies import parse_spec
from scheduler.policies.cache_load import TIE_TOLERANCE_S, best_prefill
from topology.model import FatTree


def same(a, b) -> bool:
    """Equal to the last bit (NaN-free float arrays: equal values and equal signs of zero)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and np.array_equal(a.view(np.int64), b.view(np.int64))


def chains(rng, count: int, roots: int = 12) -> list[tuple[int, ...]]:
    """Prompts as conversations grow: a chain extends an earlier one (a later turn) or starts a
    new one after a shared first block (a system prompt)."""
    out: list[tuple[int, ...]] = []
    fresh = iter(range(1, 10**9))
    for _ in range(count):
        if out and rng.random() < 0.7:
            base = out[int(rng.integers(len(out)))]
            base = base[:int(rng.integers(1, len(base) + 1))]
        else:
            base = (0,) if rng.random() < 0.8 else ()
        out.append(base + tuple(next(fresh) for _ in range(int(rng.integers(0 if base else 1, 40)))))
    return out + [tuple(next(fresh) for _ in range(roots))]


def scan(group: PrefixCacheGroup, hash_ids) -> list[tuple[int, int]]:
    """Runs of equal holder masks by looking at every block on every instance."""
    runs: list[tuple[int, int]] = []
    for h in hash_ids:
        mask = sum(1 << i for i, lru in enumerate(group._lru) if h in lru)
        if not mask:
            break
        if runs and runs[-1][0] == mask:
            runs[-1] = (mask, runs[-1][1] + 1)
        else:
            runs.append((mask, 1))
    return runs


@pytest.mark.parametrize("n, capacity", [(1, 50), (3, 7), (32, 120), (40, 15), (70, 400), (300, 60), (16, 0)])
def test_hits_and_writes_match_a_block_by_block_scan(n, capacity):
    rng = np.random.default_rng(n * 1000 + capacity)
    group = PrefixCacheGroup(n, capacity)
    prompts = chains(rng, 600)
    for step, prompt in enumerate(prompts):
        group.insert(int(rng.integers(n)), prompt)
        if step % 3:
            continue
        for q in (prompt, prompts[int(rng.integers(len(prompts)))], prompt + (10**9 + step,)):
            hits = group.hits(q)
            assert hits.runs == scan(group, q) == group.prefix_runs(q)
            dense = np.array([group.prefix_blocks_of(i, q) for i in range(n)], dtype=np.int64)
            assert np.array_equal(hits.dense(), dense)
            assert [hits.at(i) for i in range(n)] == dense.tolist()
            base, writes = hits.writes
            rebuilt = np.full(n, base, dtype=np.int64)
            for k, (idx, blocks) in enumerate(writes):
                if type(idx) is tuple:  # the instances of this layer that no deeper layer holds
                    later = {i for j, _ in writes[k + 1:] for i in np.atleast_1d(j).tolist()}
                    assert 0 < len(idx) <= FEW and not later & set(idx)
                    for i in idx:
                        rebuilt[i] = blocks
                else:  # the whole layer, overwritten by the deeper ones after it
                    assert idx.size > FEW
                    rebuilt[idx] = blocks
            assert np.array_equal(rebuilt, dense)
    # the index holds the complement of every block's holder mask, nothing for unheld blocks
    for h, v in group._holders.items():
        assert ~v == sum(1 << i for i, lru in enumerate(group._lru) if h in lru) > 0
    assert sum(len(lru) for lru in group._lru) == sum((~v).bit_count() for v in group._holders.values())


def test_best_prefill_matches_counting_the_near_minimal_estimates():
    rng = np.random.default_rng(3)
    for k in range(3000):
        n = int(rng.integers(1, 40))
        est = rng.choice([0.5, 0.5 + TIE_TOLERANCE_S / 2, 0.5 + 2 * TIE_TOLERANCE_S, 0.7], n) if k % 2 else rng.uniform(
            0, 1, n)
        turn = int(rng.integers(1, 10**6))
        best = int(est.argmin())
        near = est <= est[best] + TIE_TOLERANCE_S
        ties = near.nonzero()[0]
        want = best if np.count_nonzero(near) == 1 else int(ties[turn % ties.size])
        assert best_prefill(types.SimpleNamespace(prefill_estimate_s=est), turn) == want


class Source:
    def __init__(self, snap):
        self.snap = snap

    def at(self, time_s):
        return self.snap


@pytest.mark.parametrize("overrides", [
    ["cluster.placement=mixed", "cluster.reserved_servers_per_pod=0"],  # 32 decode instances
    [],  # the default cluster: 16 decode instances
    ["timing.kv_streaming=layer-wise"],
    # 512 GPUs: 256 instances of each role (the vectorised prefill formula, large layers as arrays)
    ["topology.pods=8", "topology.tors_per_pod=4", "topology.servers_per_tor=4", "topology.aggs_per_pod=4",
     "topology.cores=16", "cluster.placement=mixed", "cluster.reserved_servers_per_pod=0"],
])
@pytest.mark.parametrize("kind", ["telemetry", "static"])
def test_netkv_decides_as_the_dense_computation(overrides, kind):
    cfg = build_config(overrides=overrides)
    tree = FatTree(cfg.topology)
    cl = Cluster(cfg, tree)
    rng = np.random.default_rng(len(overrides) + len(kind))
    reqs = synthetic_trace(dataclasses.replace(SyntheticConfig(), n_requests=500), seed=len(overrides))
    for r in reqs[:350]:  # caches filled on a few instances each, so layers of every size occur
        for _ in range(int(rng.integers(1, 4))):
            cl.prefill_cache.insert(int(rng.integers(cl.prefill_ids.size)), r.hash_ids)
            cl.decode_cache.insert(int(rng.integers(cl.decode_ids.size)), r.hash_ids)
    cl.decode_assigned_tokens[:] = rng.uniform(0, 0.5, cl.decode_ids.size) * cl.decode_capacity_tokens
    util = np.append(rng.uniform(0, 1.1, tree.n_links), 0.0)
    factor = np.ones(tree.n_links + 1)
    factor[rng.integers(2 * tree.n_gpus, tree.n_links, size=2)] = 0.0  # two fabric links down
    oracle = (TelemetryOracle(tree, Source(TelemetrySnapshot(0.0, util, factor))) if kind == "telemetry"
              else StaticTierOracle(tree))
    policy = parse_spec("netkv").make(weight=0.37)
    t = cl.timing
    for turn, r in enumerate(reqs[250:500], 1):
        cl.prefill_busy_until[:] = np.where(rng.random(cl.prefill_ids.size) < 0.5, 0.0,
                                            rng.uniform(0, 2.0, cl.prefill_ids.size))  # idle ones tie
        now = 1.0
        ctx = DecisionContext(cl, r, now, oracle, turn)
        dec = policy.choose(ctx)
        inp = r.input_tokens
        pre = np.minimum(cl.prefill_cache.prefix_blocks(r.hash_ids) * BLOCK_TOKENS, inp)
        dec_cached = np.minimum(cl.decode_cache.prefix_blocks(r.hash_ids) * BLOCK_TOKENS, inp)
        queue = np.maximum(cl.prefill_busy_until - now, 0.0)
        est = queue + t.prefill_s_array(inp, pre)
        best = int(est.argmin())
        near = est <= est[best] + TIE_TOLERANCE_S
        p = best if np.count_nonzero(near) == 1 else int(near.nonzero()[0][turn % np.count_nonzero(near)])
        if cl.layer_wise:
            start = now + float(queue[p]) + float(est[p] - queue[p]) / cfg.model.layers
        else:
            start = now + float(est[p])
        nbytes = (inp - dec_cached).astype(float) * t.kv_bytes_per_token
        cost = oracle.cost(OracleQuery(int(cl.prefill_ids[p]), cl.decode_ids, nbytes, now, r.req_id, start))
        paid = cost
        if cl.layer_wise:
            compute = float(est[p] - queue[p])
            paid = np.maximum(cost / cfg.model.layers, cost - compute * (cfg.model.layers - 1) / cfg.model.layers)
        d = int((paid + 0.37 * (cl.decode_assigned_tokens / cl.decode_capacity_tokens)).argmin())
        assert (dec.prefill, dec.decode) == (p, d)
        assert same(ctx.prefill_estimate_s, est) and same(ctx.prefill_queue_s, queue)
        assert same(ctx.raw_transfer_cost_s(p), cost) and same(ctx.transfer_cost_s(p), paid)
        assert ctx.transfer_delay_s(p) + now == start
        assert ctx.prefill_cached_at(p) == pre[p] and ctx.decode_cached_at(d) == dec_cached[d]
