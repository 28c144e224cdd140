"""The decision-latency shortcuts price exactly what the straightforward computations price.

- :class:`~scheduler.decision.oracle.PredictiveOracle` keeps its ledger sorted by expected end and
  reuses what a set of pending commitments makes of the fabric across queries: every price is
  compared, bit for bit, with the plain computation below (the ledger rescanned and the
  breakpoints rebuilt for every query), through interleaved commits, done reports, new
  snapshots and decision times, with striped transfers, dead links and ECMP routing.
- :meth:`~scheduler.decision.context.DecisionContext.transfer_costs_s` (several prefills priced
  from their stacked cost tables, as netkv-joint prices them) gives each row to the last bit
  what :meth:`~scheduler.decision.context.DecisionContext.transfer_cost_s` gives alone.
"""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.decision import oracle as oracle_module
from scheduler.decision.context import DecisionContext
from scheduler.decision.oracle import NetworkOracle, OracleQuery, PredictiveOracle, make_oracle
from scheduler.decision.telemetry import TelemetrySnapshot
from scheduler.model.cluster import Cluster
from scheduler.model.config import build_config
from scheduler.model.trace import Request, n_blocks
from topology.model import FatTree, FatTreeConfig

GB = 1e9


class Source:
    """A telemetry source whose snapshot the test replaces."""

    def __init__(self, snap: TelemetrySnapshot) -> None:
        self.snap = snap

    def at(self, time_s: float) -> TelemetrySnapshot:
        return self.snap


def plain_cost(o: PredictiveOracle, query: OracleQuery) -> np.ndarray:
    """The predictive price computed plainly: scan the ledger for the commitments the snapshot
    shows and those pending at the query's start, rebuild the breakpoints and the sharers per
    link and interval, integrate the bottleneck rate of every affected candidate."""
    snap = o.source.at(query.now)
    inv = o._inverse(o.available(snap))
    down = o._down
    now = query.now
    start = now if query.start is None else query.start
    ledger = list(o._ledger.values())
    seen = [e for e in ledger if e.start <= snap.time_s < min(e.end, e.done_at)]
    pending = [e for e in ledger if e.end > start and e.done_at > now]
    if seen:
        cap, background = o._background(snap, seen, inv.shape[0])
        inv = o._inverse(o._free(cap, background))
    paths = o.tree.paths(query.src, query.dsts, query.flow_key if o.tree.config.routing != "dst" else None, down)
    latency = o.tree.latency_s[paths].sum(axis=1) + o.setup_s
    base = inv[paths].max(axis=1)
    nbytes = np.asarray(query.nbytes, dtype=float)
    out = NetworkOracle._finish(latency, nbytes, base)
    if not pending:
        return out
    links = np.unique(np.concatenate([e.path for e in pending]))
    links = links[links != o.tree.pad]
    compact = np.full(inv.shape[0], -1, dtype=np.int64)
    compact[links] = np.arange(links.size)
    hops = compact[paths]
    rows = np.flatnonzero(((hops >= 0).any(axis=1)) & (nbytes > 0))
    if rows.size == 0:
        return out
    starts = np.array([e.start for e in pending])
    ends = np.array([e.end for e in pending])
    bounds = np.unique(np.concatenate(([start], starts[starts > start], ends)))
    j0 = np.searchsorted(bounds, np.maximum(starts, start), side="right") - 1
    j1 = np.searchsorted(bounds, ends, side="left")
    sizes = [np.asarray(e.path).size for e in pending]
    on = compact[np.concatenate([e.path for e in pending])]
    keep = on >= 0
    on = on[keep]
    width = bounds.size + 1
    cells = (links.size + 1) * width
    delta = (np.bincount(on * width + np.repeat(j0, sizes)[keep], minlength=cells)
             - np.bincount(on * width + np.repeat(j1, sizes)[keep], minlength=cells))
    counts = np.cumsum(delta.reshape(links.size + 1, width), axis=1)[:, :-1]
    per_link = np.zeros(counts.shape)
    per_link[:-1] = inv[links][:, None] * (1.0 + counts[:-1])
    with np.errstate(invalid="ignore"):
        step = per_link[hops[rows]].max(axis=1)
    step = np.maximum(step, base[rows][:, None])
    rate = np.zeros(step.shape)
    np.divide(1.0, step, out=rate, where=np.isfinite(step))
    moved = np.zeros(step.shape)
    np.cumsum(rate[:, :-1] * np.diff(bounds)[None, :], axis=1, out=moved[:, 1:])
    want = nbytes[rows]
    j = (moved < want[:, None]).sum(axis=1) - 1
    k = np.arange(rows.size)
    with np.errstate(invalid="ignore"):
        finish = bounds[j] + (want - moved[k, j]) * step[k, j]
    out[rows] = latency[rows] + (finish - start)
    return out


def random_snapshot(tree: FatTree, rng: np.random.Generator, time_s: float) -> TelemetrySnapshot:
    util = np.append(rng.uniform(0, 1.0, tree.n_links), 0.0)
    factor = np.ones(tree.n_links + 1)
    if rng.random() < 0.3:  # a dead link now and then
        factor[int(rng.integers(tree.n_links))] = 0.0
    return TelemetrySnapshot(time_s, util, factor)


@pytest.mark.parametrize("few", [0, 8, 10_000], ids=["arrays", "default", "floats"])
@pytest.mark.parametrize("shape", [{}, dict(routing="ecmp")], ids=["dst", "ecmp"])
@pytest.mark.parametrize("seed", range(6))
def test_predictive_prices_as_the_plain_computation(shape, seed, few, monkeypatch):
    # both integrations (numpy arrays for many pending commitments, Python floats for a few)
    monkeypatch.setattr(oracle_module, "FEW_PENDING", few)
    rng = np.random.default_rng(seed)
    tree = FatTree(FatTreeConfig(**shape))
    source = Source(random_snapshot(tree, rng, 0.0))
    o = PredictiveOracle(tree, source)
    now, key = 0.0, 0
    for step in range(60):
        event = rng.random()
        if event < 0.35:  # a decision committed a transfer, sometimes striped over 2 ranks
            src, dst = (int(x) for x in rng.choice(tree.n_gpus // 2, size=2, replace=False) * 2)
            start = now + float(rng.uniform(0.0, 1.0))
            o.commit(src, dst, start, start + float(rng.uniform(0.01, 0.8)), key, float(rng.uniform(0.1, 8)) * GB,
                     key, tp=int(rng.choice([1, 2])))
            key += 1
        elif event < 0.5 and key:  # a transfer landed (sometimes reported ahead, as the benchmark does)
            o.done(int(rng.integers(key)), now + float(rng.uniform(-0.2, 0.3)))
        elif event < 0.6:  # a new snapshot, taken while some transfers moved
            source.snap = random_snapshot(tree, rng, now)
        elif event < 0.75:
            now += float(rng.uniform(0.0, 0.4))
        # a decision's queries: several sources at their own starts, some bytes zero
        dsts = np.sort(rng.choice(tree.n_gpus, size=int(rng.integers(4, 40)), replace=False))
        nbytes = np.where(rng.random(dsts.size) < 0.2, 0.0, rng.uniform(0.01, 10, dsts.size) * GB)
        for _ in range(3):
            src = int(rng.integers(tree.n_gpus))
            start = now + float(rng.choice([0.0, rng.uniform(0.0, 1.5)]))
            query = OracleQuery(src, dsts, nbytes, now, int(rng.integers(1000)), start)
            if rng.random() < 0.5:  # as a decision context asks: the table first
                table = o.table(query._replace(nbytes=None))
                if table is not None:
                    want = plain_cost(o, query)
                    assert np.array_equal(NetworkOracle._finish(table[0], nbytes, table[1]), want), (seed, step)
                    continue
            got = o.cost(query)
            assert np.array_equal(got, plain_cost(o, query)), (seed, step)


SMALL = ["topology.pods=2", "topology.tors_per_pod=2", "topology.servers_per_tor=2",
         "topology.gpus_per_server=2", "topology.aggs_per_pod=2", "topology.cores=2"]
MIXED = ["cluster.placement=mixed", "cluster.reserved_servers_per_pod=0"]
LAYOUTS = {
    "mixed": SMALL + MIXED,
    "by-rack": SMALL + ["topology.gpus_per_server=4"],
    "mixed-tp2": ["topology.gpus_per_server=4", *SMALL[:3], *SMALL[4:], *MIXED, "cluster.tp=2"],
    "layer-wise": SMALL + MIXED + ["timing.kv_streaming=layer-wise"],
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", ["static", "telemetry", "inflight", "predictive"])
def test_stacked_transfer_costs_are_each_prefills_own(layout, kind):
    for seed in range(6):
        rng = np.random.default_rng(seed)
        cfg = build_config(overrides=LAYOUTS[layout])
        tree = FatTree(cfg.topology)
        cl = Cluster(cfg, tree)
        prompts = [tuple(range(1000 * i, 1000 * i + 20)) for i in range(3)]
        for _ in range(10):
            ids = prompts[int(rng.integers(len(prompts)))][: int(rng.integers(1, 21))]
            cache = cl.prefill_cache if rng.random() < 0.5 else cl.decode_cache
            cache.insert(int(rng.integers(cl.prefill_ids.size if cache is cl.prefill_cache else cl.decode_ids.size)),
                         ids)
        cl.prefill_busy_until[:] = rng.uniform(0, 1.0, cl.prefill_ids.size)
        oracle = make_oracle(kind, tree, Source(random_snapshot(tree, rng, 0.0)), 0.0, 0.1, 30e-6)
        if oracle.tracks_commitments:
            for key in range(5):
                start = float(rng.uniform(0, 1.5))
                oracle.commit(int(rng.choice(cl.prefill_ids)), int(rng.choice(cl.decode_ids)), start,
                              start + float(rng.uniform(0.01, 0.5)), None, 2e9, key, tp=cl.tp)
        tokens = int(rng.integers(1, 20)) * 512 + int(rng.integers(0, 512))
        base = prompts[int(rng.integers(len(prompts)))]
        blocks = n_blocks(tokens)
        req = Request(0, 0.0, tokens, 100, base[:blocks] + tuple(range(50_000, 50_000 + max(blocks - len(base), 0))))
        some = [int(p) for p in rng.permutation(cl.prefill_ids.size)[: int(rng.integers(1, cl.prefill_ids.size + 1))]]
        ctx = DecisionContext(cl, req, 0.2, oracle)
        ctx.transfer_cost_s(some[-1])  # one already priced alone
        stacked = ctx.transfer_costs_s(some)
        for row, p in zip(stacked, some):
            alone = DecisionContext(cl, req, 0.2, oracle)
            assert np.array_equal(row, alone.transfer_cost_s(p)), (layout, kind, seed, p)
            assert np.array_equal(ctx.raw_transfer_cost_s(p), alone.raw_transfer_cost_s(p))
