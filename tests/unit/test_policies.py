"""Scheduling policies (scheduler/policies/*.py) on a small cluster: one small cluster fixture
for every policy and the registry, to compare policies on the same inputs."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from scheduler.decision.context import DecisionContext
from scheduler.decision.oracle import TelemetryOracle
from scheduler.decision.telemetry import TelemetrySnapshot
from scheduler.model.cluster import Cluster, assign_roles, role_map
from scheduler.model.config import build_config
from scheduler.model.synthetic import SyntheticConfig, synthetic_trace
from scheduler.model.trace import BLOCK_TOKENS, Request, n_blocks
from scheduler.policies import DEFAULT_POLICIES, REGISTRY, UnknownPolicyError, parse_spec, resolve
from scheduler.policies.topology_affinity import TIER_SCORES
from topology.model import FatTree

# 16 GPUs: 2 pods x 2 ToRs x 2 servers x 2 GPUs (all four tiers); mixed placement -> each
# server holds one prefill (even GPU) and one decode (odd GPU): 8 prefill, 8 decode
SMALL = ["topology.pods=2", "topology.tors_per_pod=2", "topology.servers_per_tor=2",
         "topology.gpus_per_server=2", "topology.aggs_per_pod=2", "topology.cores=2",
         "cluster.placement=mixed", "cluster.reserved_servers_per_pod=0"]


class Fixed:
    def __init__(self, snap):
        self.snap = snap

    def at(self, time_s):
        return self.snap


def make(overrides=()):
    cfg = build_config(overrides=SMALL + list(overrides))
    tree = FatTree(cfg.topology)
    return cfg, tree, Cluster(cfg, tree)


def request(i: int, tokens: int, first_id: int = 1000, prefix: tuple[int, ...] = ()) -> Request:
    blocks = n_blocks(tokens)
    ids = prefix[:blocks] + tuple(range(first_id, first_id + blocks - len(prefix[:blocks])))
    return Request(i, 0.0, tokens, 100, ids)


def idle_oracle(tree):
    return TelemetryOracle(tree, Fixed(TelemetrySnapshot.idle(tree)))


def test_small_cluster_roles():
    _, tree, cl = make()
    assert tree.n_gpus == 16
    assert cl.prefill_ids.tolist() == [0, 2, 4, 6, 8, 10, 12, 14]
    assert cl.decode_ids.tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    for placement in ("mixed", "by-server", "by-rack"):
        p, d, r = assign_roles(FatTree(), placement, 0.5)
        assert len(p) == len(d) == 32 and not set(p) & set(d) and r.size == 0


def test_default_placement_is_pools_by_rack_with_a_reserved_server_per_pod():
    """The default layout the README and the built-in scenarios describe: per pod a prefill rack
    (t0: 8 GPUs) and a rack with a decode server (t1s0) and a reserved server (t1s1)."""
    cfg = build_config()
    tree = FatTree(cfg.topology)
    cl = Cluster(cfg, tree)
    layout = role_map(tree, cl.roles)
    for pod in range(4):
        assert layout[f"p{pod}t0s0"] == layout[f"p{pod}t0s1"] == "PPPP"
        assert layout[f"p{pod}t1s0"] == "DDDD" and layout[f"p{pod}t1s1"] == "RRRR"
    assert (cl.prefill_ids.size, cl.decode_ids.size, cl.roles.reserved.size) == (32, 16, 16)
    assert cl.describe()["layout"] == layout
    # every prefill has its nearest decode instances in the same pod, none in its rack
    for p in range(cl.prefill_ids.size):
        assert cl.decode_tiers(p).min() == 2


@pytest.mark.parametrize("placement,per_pod,want", [
    ("by-server", 1, {"p0t0s0": "PPPP", "p0t0s1": "DDDD", "p0t1s0": "PPPP", "p0t1s1": "RRRR",
                      "p1t0s0": "DDDD", "p1t0s1": "PPPP", "p1t1s0": "DDDD", "p1t1s1": "RRRR"}),
    ("mixed", 1, {"p0t0s0": "PDPD", "p0t1s1": "RRRR"}),
    ("by-rack", 0, {"p0t0s0": "PPPP", "p0t0s1": "PPPP", "p0t1s0": "DDDD", "p0t1s1": "DDDD"}),
    ("by-server", 3, {"p0t0s0": "PPPP", "p0t0s1": "RRRR", "p1t0s0": "DDDD", "p1t1s1": "RRRR"}),
])
def test_reserved_servers_are_the_last_of_each_pod_and_serve_nothing(placement, per_pod, want):
    tree = FatTree()
    roles = assign_roles(tree, placement, 0.5, per_pod)
    layout = role_map(tree, roles)
    for server, letters in want.items():
        assert layout[server] == letters, server
    assert roles.reserved.size == 4 * per_pod * tree.gps
    assert not (set(roles.reserved) & (set(roles.prefill) | set(roles.decode)))
    assert roles.reserved.size + roles.prefill.size + roles.decode.size == tree.n_gpus


def test_bad_placements_are_rejected_with_the_parameter():
    from scheduler.model.config import ConfigError

    with pytest.raises(ConfigError, match=r"reserved_servers_per_pod.*0..3"):
        assign_roles(FatTree(), "by-server", 0.5, 4)  # a pod has 4 servers: one must serve
    with pytest.raises(ConfigError, match=r"cluster\.placement"):
        assign_roles(FatTree(), "random", 0.5)
    with pytest.raises(ConfigError, match="leaves no decode"):
        # 4 servers, 3 reserved per pod: 1 serving server per pod, by-rack -> 4 racks, 3 prefill
        assign_roles(FatTree(), "by-rack", 0.9, 3)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_policy_returns_valid_indices(name):
    _cfg, tree, cl = make()
    oracle = idle_oracle(tree)
    policy = REGISTRY[name](weight=None, seed=0)
    reqs = synthetic_trace(dataclasses.replace(SyntheticConfig(), n_requests=120), seed=1)
    rng = np.random.default_rng(0)
    chosen_p, chosen_d = set(), set()
    for turn, r in enumerate(reqs, 1):
        dec = policy.choose(DecisionContext(cl, r, r.arrival_s, oracle, turn))
        assert isinstance(dec.prefill, int) and isinstance(dec.decode, int)
        assert 0 <= dec.prefill < cl.prefill_ids.size
        assert 0 <= dec.decode < cl.decode_ids.size
        chosen_p.add(dec.prefill)
        chosen_d.add(dec.decode)
        # evolve the cluster like the simulator does
        cl.prefill_cache.insert(dec.prefill, r.hash_ids)
        cl.decode_cache.insert(dec.decode, r.hash_ids)
        cl.prefill_busy_until[dec.prefill] = max(cl.prefill_busy_until[dec.prefill], r.arrival_s) + rng.uniform(0, 1)
        cl.decode_assigned_tokens[dec.decode] += r.input_tokens + r.output_tokens
    assert len(chosen_p) > 1 and len(chosen_d) > 1  # no policy is stuck on one instance
    assert policy.name == name and policy.description


def test_round_robin_cycles_through_all_instances():
    _, _tree, cl = make()
    rr = REGISTRY["round-robin"](seed=3)
    r = request(0, 2000)
    decs = [rr.choose(DecisionContext(cl, r, 0.0, None, turn)) for turn in range(1, 25)]
    ps = [d.prefill for d in decs]
    ds = [d.decode for d in decs]
    assert sorted(ps[:8]) == list(range(8))
    assert sorted(ds[:8]) == list(range(8))
    assert ps[8:16] == ps[:8] and ds[16:24] == ds[:8]  # periodic
    # the same seed replays the same cycle
    rr2 = REGISTRY["round-robin"](seed=3)
    assert [rr2.choose(DecisionContext(cl, r, 0.0, None, turn)).decode for turn in range(1, 9)] == ds[:8]
    # the turn comes with the context: the same decision index gives the same pick
    assert rr2.choose(DecisionContext(cl, r, 0.0, None, 3)).decode == ds[2]


def test_least_loaded_picks_minimum():
    _, _tree, cl = make()
    rng = np.random.default_rng(5)
    ll = REGISTRY["least-loaded"]()
    for _ in range(20):
        cl.prefill_busy_until[:] = rng.uniform(0, 5, 8)
        cl.decode_assigned_tokens[:] = rng.uniform(0, 1e5, 8)
        now = float(rng.uniform(0, 2))
        dec = ll.choose(DecisionContext(cl, request(0, 3000), now, None))
        queue = np.maximum(cl.prefill_busy_until - now, 0)
        assert queue[dec.prefill] == queue.min()
        assert cl.decode_assigned_tokens[dec.decode] == cl.decode_assigned_tokens.min()


def test_cache_load_prefers_prefill_with_cached_prefix():
    _, tree, cl = make()
    shared = tuple(range(1, 41))  # 40 blocks = 20480 tokens
    cl.prefill_cache.insert(5, shared)
    r = request(0, 40 * BLOCK_TOKENS + 300, prefix=shared)
    cl_policy = REGISTRY["cache-load"](weight=1.0)
    ctx = DecisionContext(cl, r, 0.0, None)
    assert ctx.prefill_cached_tokens[5] == 40 * BLOCK_TOKENS
    assert cl_policy.choose(ctx).prefill == 5
    # netkv uses the same prefill rule
    assert REGISTRY["netkv"]().choose(DecisionContext(cl, r, 0.0, idle_oracle(tree))).prefill == 5
    # a long enough queue in front of the cached instance outweighs the hit
    cl.prefill_busy_until[5] = 100.0
    assert cl_policy.choose(DecisionContext(cl, r, 0.0, None)).prefill != 5


def test_cache_load_decode_prefers_cached_decode_when_loads_equal():
    _, _tree, cl = make()
    shared = tuple(range(1, 21))
    cl.decode_cache.insert(6, shared)
    r = request(0, 20 * BLOCK_TOKENS + 100, prefix=shared)
    assert REGISTRY["cache-load"](weight=1.0).choose(DecisionContext(cl, r, 0.0, None)).decode == 6


def test_prefill_ties_rotate_instead_of_piling_onto_one_instance():
    _, _tree, cl = make()
    pol = REGISTRY["cache-load"](weight=1.0)
    picks = [pol.choose(DecisionContext(cl, request(i, 4000), 0.0, None, i + 1)).prefill
             for i in range(cl.prefill_ids.size)]
    assert sorted(picks) == list(range(cl.prefill_ids.size))  # idle and uncached: every instance once


def test_netkv_picks_same_server_decode_on_idle_fabric():
    _, tree, cl = make()
    oracle = idle_oracle(tree)
    nk = REGISTRY["netkv"](weight=0.1)
    for p_busy in range(8):
        # steer the prefill choice to instance p_busy by making every other one busy
        cl.prefill_busy_until[:] = 10.0
        cl.prefill_busy_until[p_busy] = 0.0
        dec = nk.choose(DecisionContext(cl, request(p_busy, 8000), 0.0, oracle))
        assert dec.prefill == p_busy
        p_gpu, d_gpu = int(cl.prefill_ids[dec.prefill]), int(cl.decode_ids[dec.decode])
        assert tree.tier(p_gpu, d_gpu) == 0


def test_netkv_avoids_decode_behind_congested_link_when_near_one_is_free():
    _, tree, cl = make()
    p_gpu = int(cl.prefill_ids[0])  # GPU 0; its same-server decode is GPU 1
    util = np.zeros(tree.n_links + 1)
    # saturate the NVLink into the same-server decode, priced against 9 elastic flows: 10% of
    # 3600 Gbit/s left, less than a free 400 Gbit/s NIC path to the same-rack decode (GPU 3)
    same_server = [d for d in cl.decode_ids if tree.tier(p_gpu, int(d)) == 0]
    assert len(same_server) == 1
    for d in same_server:
        util[tree.path(p_gpu, int(d))[-1]] = 1.0
    oracle = TelemetryOracle(tree, Fixed(TelemetrySnapshot(0.0, util, np.ones(tree.n_links + 1))),
                             saturated_link_flows=9)
    cl.prefill_busy_until[:] = 10.0  # steer the prefill choice to instance 0
    cl.prefill_busy_until[0] = 0.0
    nk = REGISTRY["netkv"](weight=0.0)
    dec = nk.choose(DecisionContext(cl, request(0, 16000), 0.0, oracle))
    d_gpu = int(cl.decode_ids[dec.decode])
    assert d_gpu not in same_server
    assert tree.tier(p_gpu, d_gpu) == 1  # the nearest free candidate
    assert d_gpu == 3
    # the same fabric without the congestion: back to the same-server decode
    dec = nk.choose(DecisionContext(cl, request(0, 16000), 0.0, idle_oracle(tree)))
    assert int(cl.decode_ids[dec.decode]) == 1


def test_netkv_weighs_bytes_against_path_unlike_cache_load():
    """Claim 1: a far decode holding half the prefix behind a congested core loses to a near
    one under netkv, while cache-load (network-blind) takes the far one."""
    _, tree, cl = make()
    p_gpu = 0
    far = next(i for i, d in enumerate(cl.decode_ids) if tree.tier(p_gpu, int(d)) == 3)
    far_gpu = int(cl.decode_ids[far])
    prompt = tuple(range(1, 65))  # 64 blocks
    cl.decode_cache.insert(far, prompt[:32])
    util = np.zeros(tree.n_links + 1)
    for link in tree.path(p_gpu, far_gpu):
        if tree.link_kind(link) == "agg_core":
            util[link] = 1.0
    oracle = TelemetryOracle(tree, Fixed(TelemetrySnapshot(0.0, util, np.ones(tree.n_links + 1))))
    cl.prefill_busy_until[1:] = 10.0  # prefill on GPU 0
    r = request(0, 64 * BLOCK_TOKENS, prefix=prompt)
    assert REGISTRY["cache-load"](weight=1.0).choose(DecisionContext(cl, r, 0.0, None)).decode == far
    dec = REGISTRY["netkv"](weight=0.1).choose(DecisionContext(cl, r, 0.0, oracle))
    assert dec.decode != far
    assert tree.tier(p_gpu, int(cl.decode_ids[dec.decode])) == 0


def test_netkv_load_term_moves_away_from_loaded_near_decode():
    _, tree, cl = make()
    oracle = idle_oracle(tree)
    cl.prefill_busy_until[1:] = 10.0
    same = [i for i, d in enumerate(cl.decode_ids) if tree.tier(0, int(d)) == 0]
    cl.decode_assigned_tokens[same] = cl.decode_capacity_tokens  # full
    dec = REGISTRY["netkv"](weight=10.0).choose(DecisionContext(cl, request(0, 4000), 0.0, oracle))
    assert dec.decode not in same


def test_netkv_without_oracle_fails_clearly():
    _, _tree, cl = make()
    with pytest.raises(RuntimeError, match="oracle"):
        REGISTRY["netkv"]().choose(DecisionContext(cl, request(0, 1000), 0.0, None))


def test_registry_contents_and_resolution():
    assert set(REGISTRY) == {"round-robin", "least-loaded", "cache-load", "topology-filter", "topology-affinity",
                             "netkv", "netkv-admit", "netkv-joint"}
    assert set(DEFAULT_POLICIES) == {"round-robin", "least-loaded", "cache-load", "topology-affinity",
                                     "netkv:static", "netkv", "netkv:perfect"}
    assert [c.name for c in resolve("netkv, round-robin,netkv")] == ["netkv", "round-robin"]
    assert [c.name for c in resolve(["cache-load"])] == ["cache-load"]
    specs = resolve("netkv:static,netkv,netkv:perfect,netkv:inflight,netkv:static")
    assert [s.name for s in specs] == ["netkv:static", "netkv", "netkv:perfect", "netkv:inflight"]
    assert [s.oracle for s in specs] == ["static", None, "perfect", "inflight"]
    pol = specs[0].make(0.3, 0, "telemetry")
    assert pol.name == "netkv:static" and pol.oracle_kind == "static"
    assert pol.params() == {"load_weight_s": 0.3, "oracle": "static"}
    assert specs[1].make(None, 0, "inflight").oracle_kind == "inflight"  # the experiment's default oracle
    assert REGISTRY["netkv"].needs_oracle and not REGISTRY["cache-load"].needs_oracle
    assert REGISTRY["netkv"].tuned_param and REGISTRY["cache-load"].tuned_param
    assert REGISTRY["round-robin"].tuned_param is None


@pytest.mark.parametrize("item,match", [
    ("cache-load:static", "does not use the network cost oracle"),
    ("netkv:psychic", "unknown oracle 'psychic'.*static, telemetry, inflight, perfect"),
])
def test_policy_spec_errors_name_the_problem(item, match):
    with pytest.raises(UnknownPolicyError, match=match):
        parse_spec(item)


def test_defaults_are_recorded_when_untuned():
    """--no-tune runs with each policy's default weight, and summary.json must say which."""
    assert REGISTRY["cache-load"]().params() == {"load_weight": 1.0}
    assert REGISTRY["netkv"]().params() == {"load_weight_s": 0.1}
    assert REGISTRY["topology-affinity"](load_weight=0.3).params() == {"affinity_weight": 1.0, "load_weight": 0.3}


def _steer_prefill(cl, p: int) -> None:
    cl.prefill_busy_until[:] = 10.0
    cl.prefill_busy_until[p] = 0.0


def test_topology_affinity_scores_tiers_on_llm_d_curve():
    _, _tree, cl = make()
    _steer_prefill(cl, 0)
    tiers = cl.decode_tiers(0)
    assert sorted(set(tiers.tolist())) == [0, 1, 2, 3]
    r = request(0, 4000)
    # weight 0: exactly cache-load (ties among idle, uncached decodes go to the lowest index)
    ta0 = REGISTRY["topology-affinity"](weight=0.0, load_weight=1.0)
    assert ta0.choose(DecisionContext(cl, r, 0.0, None)).decode == REGISTRY["cache-load"](weight=1.0).choose(
        DecisionContext(cl, r, 0.0, None)).decode
    # any positive weight on an idle, uncached cluster: the nearest tier (same server here)
    dec = REGISTRY["topology-affinity"](weight=0.5, load_weight=1.0).choose(DecisionContext(cl, r, 0.0, None))
    assert tiers[dec.decode] == 0
    # the decode-side cache hit of a far decode beats affinity only while the weight is small:
    # a cross-pod decode holding 90% of the prompt saves 0.9 of cache-load's score against the
    # same-server one's affinity advantage of weight x (1.0 - 0.02)
    far = int(np.flatnonzero(tiers == 3)[0])
    prompt = tuple(range(1, 41))
    cl.decode_cache.insert(far, prompt[:36])
    r = request(1, 40 * BLOCK_TOKENS, prefix=prompt)
    small = REGISTRY["topology-affinity"](weight=0.8, load_weight=1.0).choose(DecisionContext(cl, r, 0.0, None))
    large = REGISTRY["topology-affinity"](weight=1.0, load_weight=1.0).choose(DecisionContext(cl, r, 0.0, None))
    assert small.decode == far
    assert large.decode != far and tiers[large.decode] == 0
    assert TIER_SCORES == (1.0, 0.2, 0.05, 0.02)


def test_topology_filter_keeps_the_nearest_tier_holding_a_decode():
    _, _tree, cl = make()
    _steer_prefill(cl, 0)
    tiers = cl.decode_tiers(0)
    near = np.flatnonzero(tiers == 0)
    # the nearest decode full: the filter still picks it (Dynamo 'preferred' has no load allowance)
    cl.decode_assigned_tokens[near] = cl.decode_capacity_tokens
    dec = REGISTRY["topology-filter"](load_weight=1.0).choose(DecisionContext(cl, request(0, 4000), 0.0, None))
    assert tiers[dec.decode] == 0
    # where no decode shares the server (default by-rack layout), the nearest tier is the pod
    cfg = build_config()
    tree2 = FatTree(cfg.topology)
    cl2 = Cluster(cfg, tree2)
    dec = REGISTRY["topology-filter"]().choose(DecisionContext(cl2, request(0, 4000), 0.0, None))
    assert cl2.decode_tiers(dec.prefill)[dec.decode] == 2


@pytest.mark.parametrize("names", ["bogus", "netkv,bogus", "", " , "])
def test_registry_errors_list_known_names(names):
    with pytest.raises(UnknownPolicyError) as exc:
        resolve(names)
    msg = str(exc.value)
    for known in REGISTRY:
        assert known in msg
    if "bogus" in names:
        assert "bogus" in msg


# ----------------------------------------------------------------------------- one-file policies
def test_a_tunable_policy_is_one_class_registered_and_tuned_on_its_own_grid():
    """A policy defined outside the package (here, in the test) is one decorated class: the
    registry resolves it by name, and the experiment tunes its weight on the grid the class gives,
    with the same rule as every other policy, and runs it."""
    from scheduler.decision.context import Decision
    from scheduler.policies import Policy, register
    from scheduler.policies.cache_load import best_prefill
    from scheduler.study.experiment import pick_weight, prepare, run_simulation, tune_policy

    @register
    class NearestThenLoad(Policy):
        name = "test-nearest-load"
        description = "nearest tier, then load (a test policy)"
        tuned_param = "load_weight"
        default_weight = 1.0
        grid = (0.0, 1.0, 100.0)

        def choose(self, ctx):
            p = best_prefill(ctx, ctx.turn)
            return Decision(p, int((ctx.cluster.decode_tiers(p) + self.weight * ctx.decode_load).argmin()))

    try:
        cfg = build_config(overrides=["tuning.tune_requests=150"])
        exp, _ = prepare(cfg, None, "idle", "cache-load,test-nearest-load", max_requests=150, seed=0)
        weight, table = tune_policy(exp, parse_spec("test-nearest-load"))
        assert [row["weight"] for row in table] == [0.0, 1.0, 100.0]
        assert weight == pick_weight(table, cfg.tuning.tbt_tolerance_ms)
        assert len({row["ttft_mean_s"] for row in table}) > 1  # the weight matters: a real tuning
        out, recs = run_simulation(exp, progress=False, log=lambda *_: None)
        assert out["test-nearest-load"]["params"] == {"load_weight": weight}
        assert out["test-nearest-load"]["tuning"] == table
        assert len(recs["test-nearest-load"]) == len(exp.requests)
    finally:
        REGISTRY.pop("test-nearest-load", None)
    with pytest.raises(UnknownPolicyError, match="test-nearest-load"):
        parse_spec("test-nearest-load")


def test_register_refuses_a_taken_name_and_a_tuned_weight_without_grid():
    from scheduler.policies import Policy, register

    class Clash(Policy):
        name = "netkv"

        def choose(self, ctx):
            raise AssertionError

    with pytest.raises(ValueError, match="taken"):
        register(Clash)

    class NoGrid(Policy):
        name = "test-no-grid"
        tuned_param = "w"

        def choose(self, ctx):
            raise AssertionError

    with pytest.raises(ValueError, match="no grid"):
        register(NoGrid)
    assert REGISTRY["netkv"].__name__ == "NetKV" and "test-no-grid" not in REGISTRY


def test_a_grid_may_name_a_tuning_constant_so_set_overrides_it():
    cfg = build_config(overrides=["tuning.netkv_weights_s=0.5,2"])
    assert REGISTRY["netkv"].grid_values(cfg.tuning) == (0.5, 2.0)
    assert REGISTRY["cache-load"].grid_values(cfg.tuning) == tuple(cfg.tuning.cache_load_weights)
