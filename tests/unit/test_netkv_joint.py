"""netkv-joint (scheduler/policies/netkv_joint.py): the pair a brute force over every (prefill,
decode) pair picks, on small clusters in random states, with every oracle kind that prices from
telemetry or topology."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.decision.context import DecisionContext
from scheduler.decision.oracle import make_oracle
from scheduler.decision.telemetry import TelemetrySnapshot
from scheduler.model.cluster import Cluster
from scheduler.model.config import build_config
from scheduler.model.trace import Request, n_blocks
from scheduler.policies import REGISTRY, parse_spec
from scheduler.policies.cache_load import TIE_TOLERANCE_S
from scheduler.policies.netkv_joint import prefill_bounds
from topology.model import FatTree

SMALL = ["topology.pods=2", "topology.tors_per_pod=2", "topology.servers_per_tor=2",
         "topology.gpus_per_server=2", "topology.aggs_per_pod=2", "topology.cores=2"]
MIXED = ["cluster.placement=mixed", "cluster.reserved_servers_per_pod=0"]
LAYOUTS = {
    "mixed": SMALL + MIXED,
    "by-rack": SMALL + ["topology.gpus_per_server=4"],
    "mixed-tp2": ["topology.gpus_per_server=4", *SMALL[:3], *SMALL[4:], *MIXED, "cluster.tp=2"],
    "layer-wise": SMALL + MIXED + ["timing.kv_streaming=layer-wise"],
}


class Fixed:
    def __init__(self, snap):
        self.snap = snap

    def at(self, time_s):
        return self.snap


def random_state(layout: str, kind: str, seed: int):
    """A cluster with random queues, decode loads and prefix caches, and an oracle of ``kind``
    on a random telemetry snapshot (with commitments for the kinds that keep them)."""
    rng = np.random.default_rng(seed)
    cfg = build_config(overrides=LAYOUTS[layout])
    tree = FatTree(cfg.topology)
    cl = Cluster(cfg, tree)
    prompts = [tuple(range(1000 * i, 1000 * i + 20)) for i in range(4)]
    for _ in range(12):
        ids = prompts[int(rng.integers(len(prompts)))][: int(rng.integers(1, 21))]
        if rng.random() < 0.5:
            cl.prefill_cache.insert(int(rng.integers(cl.prefill_ids.size)), ids)
        else:
            cl.decode_cache.insert(int(rng.integers(cl.decode_ids.size)), ids)
    # some queues zero (ties among idle prefills), others busy
    cl.prefill_busy_until[:] = np.where(rng.random(cl.prefill_ids.size) < 0.5, 0.0,
                                        rng.uniform(0, 1.0, cl.prefill_ids.size))
    cl.decode_assigned_tokens[:] = rng.uniform(0, 0.6, cl.decode_ids.size) * cl.decode_capacity_tokens
    util = np.append(rng.uniform(0, 1.0, tree.n_links), 0.0) if rng.random() < 0.8 else np.zeros(tree.n_links + 1)
    oracle = make_oracle(kind, tree, Fixed(TelemetrySnapshot(0.0, util, np.ones(tree.n_links + 1))), 0.0, 0.1, 30e-6)
    if oracle.tracks_commitments:
        for key in range(6):
            src = int(rng.choice(cl.prefill_ids))
            dst = int(rng.choice(cl.decode_ids))
            start = float(rng.uniform(0, 1.5))
            oracle.commit(src, dst, start, start + float(rng.uniform(0.01, 0.5)), None, 2e9, key, tp=cl.tp)
    base = prompts[int(rng.integers(len(prompts)))]
    tokens = int(rng.integers(1, 20)) * 512 + int(rng.integers(0, 512))
    blocks = n_blocks(tokens)
    req = Request(0, 0.0, tokens, 100, base[:blocks] + tuple(range(50_000, 50_000 + max(blocks - len(base), 0))))
    return cl, oracle, req


def brute_force(ctx: DecisionContext, weight: float) -> tuple[int, int]:
    """Every pair's score (the module's formula, the same floating-point operations), then its
    tie rule: prefills within the tolerance of the best rotate with the turn, the decode is the
    argmin of the chosen prefill's row."""
    load = ctx.weighted_load(weight)
    est = ctx.prefill_estimate_s
    scores = np.array([(ctx.transfer_cost_s(p) + load) + est.item(p) for p in range(ctx.n_prefill)])
    best = scores.min()
    tied = [p for p in range(ctx.n_prefill) if scores[p].min() <= best + TIE_TOLERANCE_S]
    p = tied[ctx.turn % len(tied)]
    return p, int(scores[p].argmin())


def test_registered_and_tuned_like_netkv():
    cls = REGISTRY["netkv-joint"]
    netkv = REGISTRY["netkv"]
    assert (cls.tuned_param, cls.grid, cls.needs_oracle) == (netkv.tuned_param, netkv.grid, True)
    assert parse_spec("netkv-joint:predictive").make().oracle_kind == "predictive"


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", ["static", "telemetry", "inflight", "predictive"])
@pytest.mark.parametrize("weight", [0.0, 0.1, 3.0])
def test_picks_the_pair_brute_force_picks(layout, kind, weight):
    policy = parse_spec("netkv-joint").make(weight)
    for seed in range(8):
        cl, oracle, req = random_state(layout, kind, seed)
        for turn in (1, 2, 3):
            ctx = DecisionContext(cl, req, 0.2, oracle, turn)
            dec = policy.choose(ctx)
            want = brute_force(DecisionContext(cl, req, 0.2, oracle, turn), weight)
            assert (dec.prefill, dec.decode) == want, (layout, kind, seed, turn)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_bounds_never_exceed_a_prefills_best_score(layout):
    for seed in range(10):
        cl, oracle, req = random_state(layout, "telemetry", seed)
        ctx = DecisionContext(cl, req, 0.2, oracle)
        load = ctx.weighted_load(0.1)
        bound = prefill_bounds(ctx, load)
        for p in range(ctx.n_prefill):
            assert bound[p] <= ((ctx.transfer_cost_s(p) + load) + ctx.prefill_estimate_s.item(p)).min()


def test_takes_a_slower_prefill_when_its_transfer_saves_more():
    """The pair, not the prefill first: a busy prefill on the decode's server (NVLink) beats an
    idle one across the fabric when the queue costs less than the fabric transfer."""
    cfg = build_config(overrides=LAYOUTS["mixed"])
    tree = FatTree(cfg.topology)
    cl = Cluster(cfg, tree)
    oracle = make_oracle("static", tree, None, 0.0, 0.1, 30e-6)
    req = Request(0, 0.0, 8192, 100, tuple(range(n_blocks(8192))))
    cl.prefill_busy_until[:] = 1.0  # every prefill busy for a second ...
    cl.prefill_busy_until[0] = 0.0  # ... but GPU 0's
    cl.decode_assigned_tokens[:] = cl.decode_capacity_tokens  # every decode full ...
    cl.decode_assigned_tokens[3] = 0.0  # ... but GPU 7's (server 3: prefill instance 3, GPU 6)
    ctx = DecisionContext(cl, req, 0.0, oracle)
    transfer = ctx.raw_transfer_cost_s(0)[3]  # GPU 0 -> GPU 7: across the fabric
    cl.prefill_busy_until[3] = 0.5 * transfer  # GPU 6 waits less than that transfer takes
    joint = parse_spec("netkv-joint").make(10.0).choose(DecisionContext(cl, req, 0.0, oracle))
    netkv = parse_spec("netkv").make(10.0).choose(DecisionContext(cl, req, 0.0, oracle))
    assert (netkv.prefill, netkv.decode) == (0, 3)
    assert (joint.prefill, joint.decode) == (3, 3)
