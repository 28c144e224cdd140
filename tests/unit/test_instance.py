"""The per-instance compute model the host agents run (scheduler/model/instance.py), the shared decode
batching it is built on (scheduler/model/decode.py), and the config round trip the agents receive."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest

from scheduler.model.config import ConfigError, build_config, config_from_dict
from scheduler.model.decode import DecodeBatch, decode_capacity_tokens
from scheduler.model.instance import FINISHED, FIRST_TOKEN, InstanceModel, RoleError
from scheduler.model.synthetic import SyntheticConfig, synthetic_trace
from scheduler.model.timing import TimingModel
from scheduler.policies import REGISTRY
from scheduler.sim.simulator import Simulator

SMALL = ["topology.pods=1", "topology.tors_per_pod=1", "cluster.placement=mixed",
         "cluster.reserved_servers_per_pod=0"]  # 2 servers: 4 prefill + 4 decode GPUs


# --------------------------------------------------------------------------- prefill
def test_prefill_is_fifo_with_the_timing_models_durations():
    cfg = build_config()
    timing = TimingModel(cfg)
    inst = InstanceModel(cfg, "prefill")
    jobs = [(0.0, 8000, 0), (0.1, 3000, 1024), (0.2, 500, 512), (5.0, 12000, 0), (5.0, 600, 0)]
    busy = 0.0
    for k, (t, tokens, cached) in enumerate(jobs):
        start, end = inst.submit_prefill(t, k, tokens, cached)
        assert start == max(t, busy)
        assert end - start == pytest.approx(timing.prefill_s(tokens, cached), rel=1e-12)
        busy = end
    assert inst.busy_until == busy
    # the second job queued behind the first; the fourth found the instance idle
    assert inst.submit_prefill(100.0, 9, 100, 0)[0] == 100.0


# --------------------------------------------------------------------------- decode vs simulator
@pytest.fixture(scope="module")
def small_sim():
    """A crowded 4-GPU cluster whose decode batches hold several requests and make some wait."""
    cfg = build_config(overrides=[*SMALL, "cluster.decode_cache_fraction=0.93"])
    reqs = synthetic_trace(dataclasses.replace(SyntheticConfig(), n_requests=150), seed=2)
    sim = Simulator(cfg, reqs, REGISTRY["round-robin"]())
    sim.run()
    return cfg, sim


def test_the_simulator_fixture_exercises_batching_and_waiting(small_sim):
    _, sim = small_sim
    assert sum(s.joined > s.kv_arrived for s in sim.states) >= 3  # some waited for room
    # and some overlapped in a batch: a request joined before another one finished
    by_d: dict[int, list] = {}
    for s in sim.states:
        by_d.setdefault(s.d, []).append(s)
    assert any(a.joined < b.joined < a.finish for ss in by_d.values() for a in ss for b in ss)


def _replay_decode(cfg, states):
    """Feed one decode instance the simulator's KV arrivals (key = request index), interleaved
    with due() as a real-time caller would; returns {key: {kind: event}}."""
    inst = InstanceModel(cfg, "decode")
    seen: dict[int, dict] = {}
    arrivals = sorted((s.kv_arrived, i, s) for i, s in states)
    for t, i, s in arrivals:
        for ev in inst.due(math.nextafter(t, -math.inf)):
            seen.setdefault(ev.key, {})[ev.kind] = ev
        inst.kv_arrived(t, i, s.req.input_tokens, s.req.output_tokens)
    while inst.next_due() is not None:
        for ev in inst.due(inst.next_due()):
            seen.setdefault(ev.key, {})[ev.kind] = ev
    assert inst.running == 0 and inst.waiting == 0
    return seen


def test_decode_times_equal_the_simulators(small_sim):
    cfg, sim = small_sim
    for d in range(sim.cluster.decode_ids.size):
        states = [(i, s) for i, s in enumerate(sim.states) if s.d == d]
        assert states
        seen = _replay_decode(cfg, states)
        for i, s in states:
            first, fin = seen[i][FIRST_TOKEN], seen[i][FINISHED]
            assert first.t_join == s.joined
            assert first.time == s.first_token
            assert fin.time == s.finish


def test_decode_events_come_in_time_order(small_sim):
    cfg, sim = small_sim
    inst = InstanceModel(cfg, "decode")
    states = sorted(((s.kv_arrived, i, s) for i, s in enumerate(sim.states) if s.d == 0))
    for t, i, s in states:
        inst.kv_arrived(t, i, s.req.input_tokens, s.req.output_tokens)
    events = inst.due(math.inf)
    times = [e.time for e in events]
    assert times == sorted(times) and len(events) == 2 * len(states)


def test_full_batch_makes_arrivals_wait_fifo_and_admits_them_on_departure():
    cfg = build_config()
    timing = TimingModel(cfg)
    cap = decode_capacity_tokens(cfg, timing)
    inst = InstanceModel(cfg, "decode")
    big = cap - 1000  # input + output of the first request: leaves room for 1000 tokens
    t_first = inst.kv_arrived(0.0, 1, big - 10, 10)
    assert t_first == pytest.approx(timing.decode_step_s(big - 10))
    assert inst.kv_arrived(0.001, 2, 1500, 10) is None  # does not fit: waits
    assert inst.kv_arrived(0.002, 3, 100, 10) is None  # would fit, but FIFO: waits behind 2
    assert (inst.running, inst.waiting) == (1, 2)
    evs = inst.due(inst.next_due())  # the first token of request 1
    assert [(e.kind, e.key) for e in evs] == [(FIRST_TOKEN, 1)]
    finish_1 = inst.next_due()
    evs = inst.due(finish_1)
    assert [(e.kind, e.key) for e in evs] == [(FINISHED, 1)]
    assert (inst.running, inst.waiting) == (2, 0)  # both admitted at request 1's departure
    evs = inst.due(math.inf)
    firsts = {e.key: e for e in evs if e.kind == FIRST_TOKEN}
    assert firsts[2].t_join == finish_1 == firsts[3].t_join
    # each first token comes one step (of the batch as it joined) after its join
    assert firsts[2].time == pytest.approx(finish_1 + timing.decode_step_s(1500))
    assert firsts[3].time == pytest.approx(finish_1 + timing.decode_step_s(1600))
    assert {e.key for e in evs if e.kind == FINISHED} == {2, 3}


def test_an_arrival_reported_late_is_moved_to_the_latest_applied_change():
    cfg = build_config()
    inst = InstanceModel(cfg, "decode")
    inst.kv_arrived(1.0, 1, 1000, 1)
    end = inst.next_due()
    inst.due(10.0)  # request 1 came and went
    first = inst.kv_arrived(0.5, 2, 1000, 1)  # stamped before request 1's departure
    assert first is not None and first > end


def test_roles_are_enforced():
    cfg = build_config()
    with pytest.raises(RoleError, match="role must be"):
        InstanceModel(cfg, "both")
    with pytest.raises(RoleError, match="prefill instance"):
        InstanceModel(cfg, "prefill").kv_arrived(0.0, 1, 10, 1)
    with pytest.raises(RoleError, match="decode instance"):
        InstanceModel(cfg, "decode").submit_prefill(0.0, 1, 10, 0)
    assert InstanceModel(cfg, "prefill").next_due() is None


def test_cluster_and_instance_share_the_decode_capacity():
    from scheduler.model.cluster import Cluster
    from topology.model import FatTree

    cfg = build_config(overrides=["cluster.decode_cache_fraction=0.3"])
    cl = Cluster(cfg, FatTree(cfg.topology))
    inst = InstanceModel(cfg, "decode")
    assert inst.batch.capacity_tokens == cl.decode_capacity_tokens == decode_capacity_tokens(cfg, cl.timing)
    assert cl.decode_capacity_tokens == int(cl.timing.kv_capacity_tokens * 0.7)


def test_decode_batch_offer_and_depart():
    timing = TimingModel(build_config())
    b = DecodeBatch(timing, 1000)
    assert b.offer(0.0, 1, 900, 50) is not None
    assert b.offer(0.0, 2, 100, 10) is None and b.waiting == [(2, 100, 10)]
    t, req = b.next_finish()
    assert req == 1
    admitted = b.depart(t, 1)
    assert [r for r, _ in admitted] == [2] and admitted[0][1] > t and not b.waiting


# --------------------------------------------------------------------------- config round trip
@pytest.mark.parametrize("args", [
    {}, {"model": "llama-3-70b", "overrides": ["topology.nic_gbit_s=200", "cluster.placement=by-server",
                                               "tuning.netkv_weights_s=0.1,1", "oracle.staleness_s=2"]},
])
def test_config_round_trips_through_json(args):
    cfg = build_config(**args)
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d.update(extra={}), "unknown config section"),
    (lambda d: d["timing"].update(prefill_mfux=0.5), "timing.prefill_mfux"),
    (lambda d: d["timing"].update(prefill_mfu="fast"), "timing.prefill_mfu"),
    (lambda d: d["timing"].update(prefill_mfu=2.0), "timing.prefill_mfu"),
    (lambda d: d["topology"].update(pods=0), "pods"),
    (lambda d: d["topology"].update(pods=1.5), "topology.pods"),
    (lambda d: d.update(gpu=[]), "section 'gpu'"),
])
def test_config_from_dict_rejects_bad_input(mutate, needle):
    d = build_config().to_dict()
    mutate(d)
    with pytest.raises(ConfigError, match=needle):
        config_from_dict(d)


def test_config_from_dict_fills_missing_sections_with_defaults():
    assert config_from_dict({}) == build_config()
    with pytest.raises(ConfigError, match="mapping"):
        config_from_dict([])
