"""The simulator at thousands of GPUs: the rate filling on the links the flows cross gives the
same bits as over the whole fabric (scheduler/sim/maxmin.py, network.py), and the scale
benchmark's runs keep the default fabric's per-GPU load (scheduler/study/bench.py)."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.model.cluster import Cluster
from scheduler.model.synthetic import SyntheticConfig, synthetic_trace
from scheduler.sim import maxmin, network
from scheduler.sim.network import FlowNetwork, max_min_rates
from scheduler.study.bench import DEFAULT_GPUS, ScalePlan, scale_requests
from topology.model import FatTree, FatTreeConfig

NEVER, ALWAYS = 10**9, 0
"""Values of ``COMPACT_BELOW`` that switch the filling on the crossed links off and on."""


def _fabric(rng: np.random.Generator, n_links: int) -> np.ndarray:
    cap = rng.uniform(1.0, 100.0, n_links + 1)
    cap[rng.choice(n_links, 5, replace=False)] = 0.0  # failed links stall their flows
    cap[n_links] = np.inf  # padding
    return cap


def _paths(rng: np.random.Generator, n_flows: int, n_links: int, hot: int) -> np.ndarray:
    """Padded 8-wide paths of 1..6 links drawn from the first ``hot`` links (shared bottlenecks)."""
    paths = np.full((n_flows, 8), n_links, dtype=np.int64)
    for i in range(n_flows):
        k = int(rng.integers(1, 7))
        paths[i, :k] = rng.choice(hot, k, replace=False)
    return paths


@pytest.fixture
def compact(monkeypatch):
    def set_(value: int) -> None:
        monkeypatch.setattr(maxmin, "COMPACT_BELOW", value)
        monkeypatch.setattr(network, "COMPACT_BELOW", value)
    return set_


def test_filling_on_the_crossed_links_changes_no_bit(compact):
    rng = np.random.default_rng(3)
    for _ in range(40):
        n_links = int(rng.integers(50, 3000))
        n_flows = int(rng.integers(1, 40))
        cap = _fabric(rng, n_links)
        paths = _paths(rng, n_flows, n_links, min(n_links, 60))
        caps = np.where(rng.random(n_flows) < 0.3, rng.uniform(1, 50, n_flows), np.inf)
        compact(NEVER)
        whole = max_min_rates(paths, cap, caps, n_links)
        compact(ALWAYS)
        crossed = max_min_rates(paths, cap, caps, n_links)
        assert whole.tobytes() == crossed.tobytes()


def _replay(seed: int) -> tuple[bytes, bytes, list]:
    """A fixed sequence of flow arrivals, completions and a capacity change on a 2,000-link
    fabric: (port counters, per-link rates, completion times and flows)."""
    rng = np.random.default_rng(seed)
    n_links = 2000
    net = FlowNetwork(_fabric(rng, n_links), n_links)
    done = []
    for step in range(120):
        if rng.random() < 0.6 or not net.flows:
            net.add(_paths(rng, 1, n_links, 80)[0], float(rng.uniform(10, 500)),
                    cap=float(rng.uniform(5, 40)) if rng.random() < 0.2 else np.inf)
        if step == 60:
            net.set_capacity([int(x) for x in rng.choice(80, 3, replace=False)], 0.5)
        nxt = net.next_completion()
        if nxt is not None and rng.random() < 0.5:
            net.advance(nxt[0])
            net.remove(nxt[1])
            done.append(nxt)
        else:
            net.advance(net.now + float(rng.uniform(0, 0.5)))
    return net.link_bytes.tobytes(), net.link_rate.tobytes(), done


def test_flow_network_on_the_crossed_links_keeps_counters_and_completions(compact):
    for seed in range(3):
        compact(NEVER)
        whole = _replay(seed)
        compact(ALWAYS)
        assert _replay(seed) == whole


@pytest.mark.parametrize("gpus", [64, 1024, 16384])
def test_scale_plan_keeps_the_default_per_gpu_load_and_roles(gpus):
    plan = ScalePlan(gpus, 100, "netkv", "unused.jsonl")
    cfg = plan.config()
    tree = FatTree(cfg.topology)
    assert tree.n_gpus == gpus
    default = FatTree(ScalePlan(DEFAULT_GPUS, 1, "netkv", "").config().topology)
    # per pod, the default's shape and capacities: only the pod count grows
    assert (tree.gpp, tree.link_capacity_gbit_s) == (default.gpp, default.link_capacity_gbit_s)
    if gpus <= 1024:  # building the cluster of 16,384 GPUs is the benchmark's job
        cluster = Cluster(cfg, tree)
        assert cluster.decode_ids.size * DEFAULT_GPUS == 16 * gpus
        assert cluster.prefill_ids.size * DEFAULT_GPUS == 32 * gpus
    base = synthetic_trace(SyntheticConfig(n_requests=400), seed=1)
    scaled = scale_requests(base, 400, plan.rate_scale)
    per_gpu = (len(base) - 1) / (base[-1].arrival_s - base[0].arrival_s) / DEFAULT_GPUS
    assert (len(scaled) - 1) / (scaled[-1].arrival_s - scaled[0].arrival_s) / gpus == pytest.approx(per_gpu)


def test_scale_requests_repeats_the_trace_as_new_conversations():
    base = synthetic_trace(SyntheticConfig(n_requests=300), seed=2)
    out = scale_requests(base, 750, 4.0)
    assert len(out) == 750
    assert [r.req_id for r in out] == list(range(750))
    arrivals = [r.arrival_s for r in out]
    assert arrivals == sorted(arrivals)
    first, second = out[:300], out[300:600]
    assert [(r.input_tokens, r.output_tokens) for r in second] == [(r.input_tokens, r.output_tokens) for r in first]
    assert not {h for r in first for h in r.hash_ids} & {h for r in second for h in r.hash_ids}
    # prefixes shared inside a copy stay shared in the next one
    assert sum(len(set(r.hash_ids) & set(first[0].hash_ids)) for r in first) == \
        sum(len(set(r.hash_ids) & set(second[0].hash_ids)) for r in second)
    gap = second[0].arrival_s - first[-1].arrival_s
    assert gap == pytest.approx((first[-1].arrival_s - first[0].arrival_s) / 299)


@pytest.mark.parametrize("overrides", [
    {}, {"intra_server": "nic"}, {"routing": "ecmp"},
    {"pods": 8, "tors_per_pod": 4, "servers_per_tor": 2, "gpus_per_server": 8, "aggs_per_pod": 4, "cores": 8},
])
def test_cross_pod_first_paths_equal_the_paths_written_tier_by_tier(overrides):
    tree = FatTree(FatTreeConfig(**overrides))
    rng = np.random.default_rng(5)
    d = np.arange(tree.n_gpus)
    for src in rng.choice(tree.n_gpus, 12, replace=False):
        k, j = tree._up_choice(int(src), d, int(src) * 7)
        assert np.array_equal(tree._paths_via(int(src), d, k, j), tree._paths_by_tier(int(src), d, k, j))
        some = rng.choice(tree.n_gpus, 5)
        kk, jj = rng.integers(tree.config.aggs_per_pod, size=5), rng.integers(tree.cores_per_agg, size=5)
        assert np.array_equal(tree._paths_via(int(src), some, kk, jj), tree._paths_by_tier(int(src), some, kk, jj))


@pytest.mark.parametrize("overrides", [{}, {"intra_server": "nic"},
                                       {"pods": 3, "tors_per_pod": 2, "servers_per_tor": 3, "gpus_per_server": 2,
                                        "aggs_per_pod": 2, "cores": 6}])
def test_route_of_one_pair_equals_its_row_of_paths(overrides):
    tree = FatTree(FatTreeConfig(**overrides))
    for src in range(tree.n_gpus):
        every = tree.paths(src, np.arange(tree.n_gpus))
        for dst in range(tree.n_gpus):
            assert np.array_equal(tree.route(src, dst), every[dst])
