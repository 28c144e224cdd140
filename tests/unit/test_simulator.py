"""Flow-level simulator (scheduler/sim/simulator.py) and the experiment's trace split (experiment.py)."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import Fixed

from scheduler.model.config import build_config
from scheduler.model.scenario import Action, load_scenario
from scheduler.model.synthetic import SyntheticConfig, synthetic_trace
from scheduler.model.timing import TimingModel
from scheduler.model.trace import Request, n_blocks
from scheduler.policies import REGISTRY
from scheduler.sim.simulator import Simulator, UnfinishedRequestsError
from scheduler.study.experiment import prepare, split_trace
from topology.model import FatTree

ROOT = Path(__file__).resolve().parents[2]
MIXED = ["cluster.placement=mixed", "cluster.reserved_servers_per_pod=0"]
"""Every GPU serving, roles alternating inside each server (GPU 0 prefill, 1 decode, ...): the
layout the exact-timing tests below address GPUs by."""




def req(i: int, t: float, tokens: int, out: int = 50, first_id: int = 1) -> Request:
    return Request(i, t, tokens, out, tuple(range(first_id, first_id + n_blocks(tokens))))


def strip(records):
    """Records without the wall-clock decision latency."""
    return [dataclasses.replace(r, decision_us=0.0) for r in records]


@pytest.fixture(scope="module")
def cfg():
    return build_config(overrides=MIXED)


@pytest.fixture(scope="module")
def trace():
    return synthetic_trace(dataclasses.replace(SyntheticConfig(), n_requests=150), seed=4)


# ----------------------------------------------------------------------------- whole runs
@pytest.mark.parametrize("name", list(REGISTRY))
def test_deterministic_and_every_request_finishes(cfg, trace, name):
    sc = load_scenario("hotspot", FatTree(cfg.topology))
    actions = sc.actions(FatTree(cfg.topology), trace[-1].arrival_s + 300)
    a = Simulator(cfg, trace, REGISTRY[name](weight=None, seed=0), actions).run()
    b = Simulator(cfg, trace, REGISTRY[name](weight=None, seed=0), actions).run()
    assert strip(a) == strip(b)
    assert len(a) == len(trace)
    assert [r.req_id for r in a] == [r.req_id for r in trace]
    for r, q in zip(a, trace):
        assert r.policy == name
        assert r.arrival_s == q.arrival_s and r.input_tokens == q.input_tokens
        assert np.isfinite(r.ttft_s) and r.ttft_s > 0
        assert r.first_token_s >= r.arrival_s
        for part in (r.queue_s, r.prefill_s, r.transfer_s, r.decode_wait_s):
            assert part >= -1e-12
        assert 0 <= r.tier <= 3
        assert r.kv_bytes == (r.input_tokens - r.decode_cached_tokens) * cfg.model.kv_bytes_per_token
        assert r.tbt_mean_ms > 0


def test_ttft_is_sum_of_its_parts(cfg, trace):
    timing = TimingModel(cfg)
    actions = load_scenario("bursty", FatTree()).actions(FatTree(), 400.0)
    recs = Simulator(cfg, trace, REGISTRY["netkv"](), actions).run()
    for r in recs:
        first_step = r.ttft_s - (r.queue_s + r.prefill_s + r.transfer_s + r.decode_wait_s)
        assert r.ttft_s == pytest.approx(r.first_token_s - r.arrival_s, abs=1e-9)
        # the first decode step of a batch: at least the weights-only step, within float tolerance
        assert first_step >= timing.decode_step_s(0) * (1 - 1e-9)
        assert first_step <= timing.decode_step_s(timing.kv_capacity_tokens) * (1 + 1e-9)
        # prefill compute is the timing model's, given the prefill cache hit
        assert r.prefill_s == pytest.approx(timing.prefill_s(r.input_tokens, r.prefill_cached_tokens), rel=1e-9)


@pytest.mark.parametrize("d_gpu", [1, 5, 9, 63])  # tiers 0, 1, 2, 3 from GPU 0
def test_lone_transfer_is_bytes_over_bottleneck_plus_latency(cfg, d_gpu):
    tree = FatTree(cfg.topology)
    timing = TimingModel(cfg)
    r = req(0, 0.5, 6000, out=20)
    (rec,) = Simulator(cfg, [r], Fixed(0, d_gpu)).run()
    links = tree.path(0, d_gpu)
    nbytes = 6000 * cfg.model.kv_bytes_per_token
    want = nbytes / tree.capacity[links].min() + tree.latency_s[links].sum() + cfg.timing.transfer_setup_s
    assert rec.kv_bytes == nbytes
    assert rec.tier == tree.tier(0, d_gpu)
    assert rec.transfer_s == pytest.approx(want, rel=1e-9)
    assert rec.queue_s == 0.0
    assert rec.decode_wait_s == 0.0
    assert rec.prefill_s == pytest.approx(timing.prefill_s(6000))
    step = timing.decode_step_s(6000)
    assert rec.ttft_s == pytest.approx(timing.prefill_s(6000) + want + step, rel=1e-9)
    assert rec.tbt_mean_ms == pytest.approx(step * 1e3, rel=1e-9)
    assert rec.prefill == tree.gpu_name(0) and rec.decode == tree.gpu_name(d_gpu)


def test_saturating_background_flow_slows_a_transfer_crossing_it(cfg):
    tree = FatTree(cfg.topology)
    r = req(0, 1.0, 8000, out=10)
    links = tree.path(0, 63)
    core_up = links[2]
    # a greedy flow from another GPU of pod 0 whose path shares 0 -> 63's core uplink
    src = 4
    dst = next(d for d in range(48, 64) if d != 63 and core_up in tree.path(src, d))
    bg = [Action(0.0, "flow_start", "bg", src, dst, None)]
    (alone,) = Simulator(cfg, [r], Fixed(0, 63)).run()
    (shared,) = Simulator(cfg, [r], Fixed(0, 63), bg).run()
    lat = tree.latency_s[links].sum() + cfg.timing.transfer_setup_s
    nbytes = 8000 * cfg.model.kv_bytes_per_token
    # max-min: the core uplink (400 Gbit/s) is split in two
    assert shared.transfer_s == pytest.approx(nbytes / (tree.capacity[core_up] / 2) + lat, rel=1e-9)
    assert shared.transfer_s > 1.9 * (alone.transfer_s - lat)
    # a background flow elsewhere in the fabric changes nothing
    far = [Action(0.0, "flow_start", "bg", 20, 40, None)]
    assert not set(tree.path(20, 40)) & set(links)
    (other,) = Simulator(cfg, [r], Fixed(0, 63), far).run()
    assert other.transfer_s == pytest.approx(alone.transfer_s, rel=1e-12)
    # a flow rate-limited below its fair share (100 of 200 Gbit/s) leaves the rest of the link
    capped = [Action(0.0, "flow_start", "bg", src, dst, 100.0)]
    (c,) = Simulator(cfg, [r], Fixed(0, 63), capped).run()
    assert c.transfer_s == pytest.approx(nbytes / (300e9 / 8) + lat, rel=1e-9)
    # ... while a cap above the fair share does not bind: max-min gives both 200 Gbit/s
    (c,) = Simulator(cfg, [r], Fixed(0, 63), [Action(0.0, "flow_start", "bg", src, dst, 300.0)]).run()
    assert c.transfer_s == pytest.approx(shared.transfer_s, rel=1e-9)


def test_down_link_stalls_transfer_until_it_comes_back(cfg):
    tree = FatTree(cfg.topology)
    r = req(0, 0.0, 4000, out=5)
    nic = tree.path(0, 63)[-1]  # the decode GPU's own NIC downlink: no other path
    (alone,) = Simulator(cfg, [r], Fixed(0, 63)).run()
    down = [Action(0.0, "link_capacity", links=(nic,), factor=0.0),
            Action(5.0, "link_capacity", links=(nic,), factor=1.0)]
    (rec,) = Simulator(cfg, [r], Fixed(0, 63), down).run()
    # the flow starts when prefill ends, moves nothing until t = 5, then runs at full rate
    assert rec.prefill_s < 5.0
    assert rec.prefill_s + rec.transfer_s == pytest.approx(5.0 + alone.transfer_s, rel=1e-9)
    assert rec.stalled_s == pytest.approx(5.0 - rec.prefill_s, rel=1e-9)
    # a link that never comes back: the run fails naming the request and the link, instead of hanging
    with pytest.raises(UnfinishedRequestsError, match=r"request 0 \(p0t0s0g0 -> p3t1s1g3\).*p3t1->p3t1s1g3 \(down"):
        Simulator(cfg, [r], Fixed(0, 63), down[:1]).run()


def test_failed_fabric_link_reroutes_after_the_detection_delay(cfg):
    """A failed core uplink: the transfer stands still for topology.reroute_delay_s, then moves to
    the surviving path and finishes at full rate; later transfers take the new path at once."""
    tree = FatTree(cfg.topology)
    links = tree.path(0, 63)
    core_up = links[2]
    first = req(0, 0.0, 4000, out=5)
    (alone,) = Simulator(cfg, [first], Fixed(0, 63)).run()
    prefill_end = alone.prefill_s
    down = [Action(prefill_end, "link_capacity", links=(core_up,), factor=0.0)]
    sim = Simulator(cfg, [first], Fixed(0, 63), down)
    (rec,) = sim.run()
    delay = cfg.topology.reroute_delay_s
    assert rec.transfer_s == pytest.approx(delay + alone.transfer_s, rel=1e-9)
    assert rec.stalled_s == pytest.approx(delay, rel=1e-9)
    assert sim.reroutes == 1
    new = tree.path(0, 63, down={core_up})
    assert core_up not in new and tree.link_kind(new[2]) == "agg_core"
    # a request arriving after the reroute never touches the dead link
    later = req(1, 10.0, 4000, out=5, first_id=5000)
    recs = Simulator(cfg, [first, later], Fixed(0, 63), down).run()
    assert recs[1].stalled_s == 0.0
    assert recs[1].transfer_s == pytest.approx(alone.transfer_s, rel=1e-9)


def test_reroute_uses_the_surviving_downlink_when_an_agg_to_tor_link_fails(cfg):
    tree = FatTree(cfg.topology)
    src, dst = 0, 13  # same pod, other rack: NIC up, tor->agg, agg->tor, NIC down
    links = tree.path(src, dst)
    downlink = links[2]
    assert tree.link_kind(downlink) == "tor_agg"
    rerouted = tree.path(src, dst, down={downlink})
    assert downlink not in rerouted and len(rerouted) == 4
    # both aggregation planes failed: nothing survives, the path keeps its dead link
    other = rerouted[2]
    assert tree.path(src, dst, down={downlink, other}) == links


def test_decode_cache_hit_moves_no_bytes(cfg):
    first = req(0, 0.0, 1000, out=5)
    again = dataclasses.replace(first, req_id=1, arrival_s=10.0)
    recs = Simulator(cfg, [first, again], Fixed(0, 63)).run()
    assert recs[0].kv_bytes > 0 and recs[0].transfer_s > 0
    assert recs[1].decode_cached_tokens == 1000
    assert recs[1].kv_bytes == 0 and recs[1].transfer_s == 0.0
    assert recs[1].prefill_cached_tokens == 1000
    assert recs[1].ttft_s < recs[0].ttft_s


def test_prefill_fifo_queues_requests(cfg):
    timing = TimingModel(cfg)
    reqs = [req(i, 0.0, 20000, out=5, first_id=1000 * (i + 1)) for i in range(3)]
    recs = Simulator(cfg, reqs, Fixed(0, 1)).run()
    one = timing.prefill_s(20000)
    assert [r.queue_s for r in recs] == pytest.approx([0.0, one, 2 * one])


def test_netkv_beats_round_robin_on_transfer_when_idle(cfg, trace):
    rr = Simulator(cfg, trace, REGISTRY["round-robin"]()).run()
    nk = Simulator(cfg, trace, REGISTRY["netkv"]()).run()
    assert np.mean([r.transfer_s for r in nk]) < np.mean([r.transfer_s for r in rr])
    assert np.mean([r.tier for r in nk]) < np.mean([r.tier for r in rr])


def test_telemetry_samples_measure_link_utilisation(cfg):
    tree = FatTree(cfg.topology)
    src, dst = 4, 59
    r = req(0, 2.0, 2000, out=5)  # arrives after three bg-only polls (0.5, 1.0, 1.5 s)
    bg = [Action(0.0, "flow_start", "bg", src, dst, 200.0)]
    sim = Simulator(cfg, [r], Fixed(0, 1), bg, record_telemetry=True)
    sim.run()
    samples = [(t, u) for t, u in sim.telemetry.samples if t <= 1.5]
    assert [t for t, _ in samples] == pytest.approx([0.5, 1.0, 1.5])
    bg_links = tree.path(src, dst)
    for _, util in samples:
        for link in bg_links:
            expected = 200e9 / 8 / tree.capacity[link]
            assert util[link] == pytest.approx(expected, rel=1e-6), tree.link_name(link)
        others = np.setdiff1d(np.arange(tree.n_links), bg_links)
        assert np.all(util[others] == 0.0)


@pytest.mark.parametrize("staleness", [0.0, 2.0])
def test_netkv_runs_with_stale_telemetry(trace, staleness):
    cfg = build_config(overrides=[f"oracle.staleness_s={staleness}", *MIXED])
    tree = FatTree(cfg.topology)
    actions = load_scenario("bursty", tree).actions(tree, trace[-1].arrival_s + 300)
    a = Simulator(cfg, trace, REGISTRY["netkv"](), actions).run()
    b = Simulator(cfg, trace, REGISTRY["netkv"](), actions).run()
    assert strip(a) == strip(b) and len(a) == len(trace)


_ECMP_SCRIPT = """
import dataclasses, hashlib, sys
from scheduler.model.config import build_config
from scheduler.policies import REGISTRY
from scheduler.model.scenario import load_scenario
from scheduler.sim.simulator import Simulator, UnfinishedRequestsError
from scheduler.model.synthetic import SyntheticConfig, synthetic_trace
from topology.model import FatTree
cfg = build_config(overrides=["topology.routing=ecmp"])
tree = FatTree(cfg.topology)
reqs = synthetic_trace(dataclasses.replace(SyntheticConfig(), n_requests=60), seed=0)
acts = load_scenario("hotspot", tree).actions(tree, reqs[-1].arrival_s + 300)
recs = Simulator(cfg, reqs, REGISTRY["least-loaded"](), acts).run()
print(hashlib.sha256(repr([dataclasses.replace(r, decision_us=0.0) for r in recs]).encode()).hexdigest())
"""


def test_ecmp_runs_are_reproducible_across_processes():
    outs = set()
    for seed in ("1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        res = subprocess.run([sys.executable, "-c", _ECMP_SCRIPT], env=env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        outs.add(res.stdout.strip())
    assert len(outs) == 1


# ----------------------------------------------------------------------------- split_trace
def reqs_at(times):
    return [req(i, t, 600) for i, t in enumerate(times)]


def test_split_trace_disjoint():
    rs = reqs_at([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    window, tune, disjoint = split_trace(rs, 4, 3)
    assert disjoint
    assert [r.req_id for r in window] == [0, 1, 2, 3]
    assert [r.req_id for r in tune] == [7, 8, 9]
    assert [r.arrival_s for r in tune] == [0.0, 1.0, 2.0]  # rebased
    assert [r.arrival_s for r in window] == [0.0, 1.0, 2.0, 3.0]  # untouched
    # no cap: the window is everything before the tuning slice
    window, tune, disjoint = split_trace(rs, None, 3)
    assert [r.req_id for r in window] == list(range(7))
    assert not {r.req_id for r in window} & {r.req_id for r in tune}
    # a cap larger than what is left keeps the slice held out
    window, tune, _ = split_trace(rs, 100, 3)
    assert [r.req_id for r in window] == list(range(7))


def test_split_trace_too_short_overlaps_and_says_so():
    rs = reqs_at([0.0, 1.0, 2.0])
    window, tune, disjoint = split_trace(rs, None, 5)
    assert not disjoint
    assert [r.req_id for r in window] == [0, 1, 2]
    assert [r.req_id for r in tune] == [0, 1, 2]
    window, tune, disjoint = split_trace(rs, 2, 3)
    assert not disjoint and [r.req_id for r in window] == [0, 1]


def test_split_trace_no_tuning():
    rs = reqs_at([0.0, 1.0, 2.0])
    window, tune, disjoint = split_trace(rs, None, 0)
    assert tune == [] and not disjoint
    assert [r.req_id for r in window] == [0, 1, 2]


def test_prepare_reports_split(cfg):
    small = build_config(overrides=["tuning.tune_requests=20"])
    exp, info = prepare(small, None, "idle", "netkv,round-robin", 30, seed=0)
    assert len(exp.requests) == 30 and len(exp.tune_requests) == 20
    assert info["tuning_slice"] == {"requests": 20, "disjoint_from_evaluation": True, "skipped_too_long": 0}
    assert exp.tune_requests[0].arrival_s == 0.0
    assert [c.name for c in exp.policies] == ["netkv", "round-robin"]
    with pytest.raises(ValueError, match="max-requests"):
        prepare(small, None, "idle", "netkv", 0, seed=0)
    with pytest.raises(ValueError, match="round-robin"):
        prepare(small, None, "idle", "netkv", 10, seed=0, weights={"round-robin": 1.0})


def test_staleness_shadow_does_not_change_decisions_and_agrees_with_itself():
    """The staleness study's fresh-telemetry shadow must not perturb the decisions it is compared
    with (policies keep tie-breaking state), and at (practically) zero staleness it agrees 100%."""
    import dataclasses as dc

    from scheduler.model.config import build_config
    from scheduler.policies import REGISTRY
    from scheduler.sim.simulator import Simulator
    from scheduler.study.experiment import prepare

    cfg = build_config(overrides=["cluster.placement=by-server", "oracle.staleness_s=1e-9"])
    exp, _ = prepare(cfg, None, "hotspot", "netkv", 150, 0, tune=False)
    acts = exp.scenario.actions(exp.tree, exp.horizon_s)
    plain = Simulator(cfg, exp.requests, REGISTRY["netkv"](), acts).run()
    sim = Simulator(cfg, exp.requests, REGISTRY["netkv"](), acts, shadow_fresh=True)
    shadowed = sim.run()
    strip = lambda rs: [dc.replace(r, decision_us=0.0) for r in rs]  # noqa: E731
    assert strip(plain) == strip(shadowed)
    assert sim.agreement["decisions"] == 150
    assert sim.agreement["same_tier"] == sim.agreement["same_instance"] == 150
