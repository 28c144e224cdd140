"""Tensor-parallel instances (``cluster.tp``): capacity, compute, striped KV transfers, validity."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import NETKV_BIN, Fixed

from scheduler.decision.oracle import OracleQuery, StaticTierOracle
from scheduler.model.cluster import Cluster, assign_roles
from scheduler.model.config import ConfigError, build_config
from scheduler.model.decode import decode_capacity_tokens
from scheduler.model.timing import TimingModel
from scheduler.model.trace import Request, n_blocks
from scheduler.sim.simulator import Simulator
from scheduler.study.experiment import prepare
from topology.model import GBIT, FatTree

ROOT = Path(__file__).resolve().parents[2]
KVPT_8B = 131072  # Llama-3-8B: 2 x 32 layers x 8 KV heads x 128 x 2 bytes
KVPT_70B = 327680  # Llama-3-70B: 2 x 80 x 8 x 128 x 2




def req(i: int, t: float, tokens: int, out: int = 20) -> Request:
    return Request(i, t, tokens, out, tuple(range(1, 1 + n_blocks(tokens))))


# ----------------------------------------------------------------------------- defaults and capacity
def test_default_tp_per_preset_holds_a_whole_context_request():
    """The preset defaults: 1 for the 8B model, 4 for 70B on H100s, 2 on H200s; at each the decode
    running share holds one request of the whole context window, at half the tp it does not."""
    assert build_config().cluster.tp == 1
    assert build_config("llama-3-70b", "h100-sxm").cluster.tp == 4
    assert build_config("llama-3-70b").cluster.tp == 2  # the 70B preset's default GPU is the H200
    for model, gpu in (("llama-3-70b", "h100-sxm"), ("llama-3-70b", "h200")):
        cfg = build_config(model, gpu)
        ctx = cfg.model.max_context_tokens
        assert decode_capacity_tokens(cfg, TimingModel(cfg)) >= ctx
        half = build_config(model, gpu, [f"cluster.tp={cfg.cluster.tp // 2}"])
        assert decode_capacity_tokens(half, TimingModel(half)) < ctx
    assert build_config("llama-3-70b", "h100-sxm", ["cluster.tp=2"]).cluster.tp == 2  # the override wins


def test_tp4_instance_weights_kv_and_compute_by_hand():
    """Llama-3-70B fp8 on 4 H100s: 70.6 GB / 4 = 17.65 GB of weights per GPU; KV capacity =
    4 x (80 GB x 0.9 - 17.65 GB) / 320 KiB = 663,452 tokens (one H100 alone: 4,272)."""
    cfg = build_config("llama-3-70b", "h100-sxm")
    t = TimingModel(cfg)
    assert t.weight_bytes_per_gpu == pytest.approx(17.65e9)
    assert t.kv_capacity_tokens == int(4 * (72e9 - 17.65e9) // KVPT_70B) == 663452
    one = TimingModel(build_config("llama-3-70b", "h100-sxm", ["cluster.tp=1"]))
    assert one.kv_capacity_tokens == 4272
    # compute, memory traffic and the KV write split over 4 GPUs at tp_efficiency 0.9: speedup 3.6
    tm = cfg.timing
    flops = 2 * 70.6e9 * 8000 + 4.0 * 80 * 64 * 128 * 8000 * 4000
    kv_save = 8000 * KVPT_70B / 1e9 * tm.prefill_kv_save_s_per_gb / 3.6
    assert t.prefill_s(8000) == pytest.approx(flops / (989e12 * tm.prefill_mfu * 3.6) + kv_save
                                              + tm.prefill_overhead_s, rel=1e-12)
    assert t.prefill_s(8000) < one.prefill_s(8000) / 3
    step = (70.6e9 + 10000 * KVPT_70B) / (3.35e12 * tm.decode_hbm_efficiency * 3.6) + tm.decode_step_overhead_s
    assert t.decode_step_s(10000) == pytest.approx(step, rel=1e-12)
    ideal = TimingModel(build_config("llama-3-70b", "h100-sxm", ["timing.tp_efficiency=1.0"]))
    assert ideal.decode_step_s(0) - tm.decode_step_overhead_s == pytest.approx(
        70.6e9 / (3.35e12 * tm.decode_hbm_efficiency * 4), rel=1e-12)


def test_instances_are_tp_consecutive_gpus_of_one_server_named_by_their_leader():
    cfg = build_config("llama-3-70b", "h100-sxm")  # by-rack, 64 GPUs, one reserved server per pod
    tree = FatTree(cfg.topology)
    cl = Cluster(cfg, tree)
    assert cl.prefill_ids.size == 8 and cl.decode_ids.size == 4  # 32 and 16 GPUs in groups of 4
    assert set(cl.prefill_ids % 4) == {0} and set(cl.decode_ids % 4) == {0}
    d = cl.describe()
    assert d["tp"] == 4 and d["kv_capacity_tokens_per_instance"] == 663452
    assert d["instances"]["decode"][0] == "p0t1s0g0+p0t1s0g1+p0t1s0g2+p0t1s0g3"
    assert d["layout"]["p0t0s0"] == "PPPP" and d["layout"]["p0t1s1"] == "RRRR"
    assert d["decode_running_capacity_tokens"] == 663452 // 2


def test_mixed_placement_gives_each_instance_one_role():
    tree = FatTree()
    roles = assign_roles(tree, "mixed", 0.5, 0, tp=2)
    assert list(roles.prefill[:4]) == [0, 1, 4, 5] and list(roles.decode[:4]) == [2, 3, 6, 7]
    with pytest.raises(ConfigError, match=r"cluster.tp=4 \(1 instance\(s\) per server\).*leaves no"):
        assign_roles(tree, "mixed", 0.5, 0, tp=4)


# ----------------------------------------------------------------------------- validity
@pytest.mark.parametrize("tp", [3, 8, 0])
def test_tp_must_divide_the_servers_gpus(tp):
    with pytest.raises(ConfigError, match=rf"'cluster.tp' must divide topology.gpus_per_server=4.*1, 2, 4, got {tp}"):
        build_config(overrides=[f"cluster.tp={tp}"])
    # the 70B default (4) on two-GPU servers: the same error, naming what to set
    with pytest.raises(ConfigError, match="gpus_per_server=2"):
        build_config("llama-3-70b", "h100-sxm", ["topology.gpus_per_server=2"])


def test_weights_that_do_not_fit_name_model_gpu_tp_and_suggest_a_tp():
    # 70B in bf16 (141.2 GB) on one H100 (72 GB usable): 2 GPUs hold 70.6 GB each
    with pytest.raises(ConfigError) as err:
        build_config("llama-3-70b", "h100-sxm", ["model.weight_bytes_per_param=2", "cluster.tp=1"])
    msg = str(err.value)
    for needle in ("llama-3-70b", "h100-sxm", "cluster.tp=1", "141.2 GB", "72.0 GB usable", "--set cluster.tp=2"):
        assert needle in msg, (needle, msg)
    build_config("llama-3-70b", "h100-sxm", ["model.weight_bytes_per_param=2", "cluster.tp=2"])
    with pytest.raises(ConfigError, match="no tp up to a server's 4 GPUs fits"):
        build_config("llama-3-70b", "h100-sxm", ["gpu.memory_gb=10"])


def test_a_request_that_can_never_fit_its_decode_instance_is_counted_and_skipped():
    """70B on one H100 holds 4,272 KV tokens: longer requests are skipped, not admitted."""
    cfg = build_config("llama-3-70b", "h100-sxm", ["cluster.tp=1"])
    exp, info = prepare(cfg, None, "idle", "round-robin", 60, 0, tune=False)
    exp_all, _ = prepare(build_config("llama-3-70b", "h100-sxm"), None, "idle", "round-robin", 60, 0, tune=False)
    too_long = [r.req_id for r in exp_all.requests if r.input_tokens + r.output_tokens > 4272]
    assert too_long and info["skipped_too_long"] == len(too_long)
    assert info["decode_kv_capacity_tokens"] == 4272
    assert info["skipped_too_long_req_ids"] == too_long[:10]
    assert len(exp.requests) == 60 - len(too_long) == info["evaluated"]["count"]
    assert all(r.input_tokens + r.output_tokens <= 4272 for r in exp.requests + exp.tune_requests)
    assert info["tuning_slice"]["skipped_too_long"] > 0
    # handed one anyway, the simulator refuses it instead of admitting it over the memory
    with pytest.raises(ConfigError, match=f"request {too_long[0]} needs"):
        Simulator(cfg, [r for r in exp_all.requests if r.req_id == too_long[0]], Fixed(0, 16))


def test_cli_warns_and_records_the_skipped_requests(tmp_path):
    out = tmp_path / "r"
    res = subprocess.run([NETKV_BIN, "simulate", "--model", "llama-3-70b",
                          "--gpu", "h100-sxm", "--set", "cluster.tp=1", "--policies", "round-robin", "--no-tune",
                          "--max-requests", "30", "--no-progress", "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "WARNING:" in res.stderr and "4272-token KV capacity" in res.stderr and "cluster.tp=1" in res.stderr
    summary = json.loads((out / "summary.json").read_text())
    skipped = summary["config"]["trace"]["skipped_too_long"]
    assert skipped > 0 and summary["policies"]["round-robin"]["requests"] == 30 - skipped


# ----------------------------------------------------------------------------- striped transfers
def _lone(cfg, p_gpu: int, d_gpu: int, tokens: int = 6000):
    (rec,) = Simulator(cfg, [req(0, 0.5, tokens)], Fixed(p_gpu, d_gpu)).run()
    return rec


def test_striped_transfer_on_an_idle_fabric_by_hand():
    """tp=2, instance p0t0s0g0+g1 to p0t1s0g0+g1 (same pod): each rank sends half the bytes over
    its own NIC, on disjoint paths (different NICs, different aggregation switches), so the
    transfer takes half the bytes over one NIC's 400 Gb/s plus one path's latency."""
    cfg = build_config(overrides=["cluster.tp=2"])
    tree = FatTree(cfg.topology)
    src, dst = 0, 8  # p0t0s0g0, p0t1s0g0
    paths = [set(map(int, tree.path(src + r, dst + r))) for r in range(2)]
    assert not paths[0] & paths[1]  # both NICs and two different fabric routes are used
    nbytes = 6000 * KVPT_8B
    rec = _lone(cfg, src, dst)
    lat = [tree.latency_s[list(p)].sum() for p in paths]
    want = nbytes / 2 / (400 * GBIT) + max(lat) + cfg.timing.transfer_setup_s
    assert rec.kv_bytes == nbytes and rec.tier == 2
    assert rec.transfer_s == pytest.approx(want, rel=1e-9)
    one = _lone(build_config(), src, dst)  # tp=1: the whole cache over one NIC
    assert one.transfer_s == pytest.approx(nbytes / (400 * GBIT) + lat[0] + cfg.timing.transfer_setup_s, rel=1e-9)
    assert rec.transfer_s < 0.51 * one.transfer_s


def test_striped_transfer_inside_a_server_uses_each_ranks_nvlink():
    """mixed placement, tp=2: prefill g0+g1, decode g2+g3 of one server; rank r sends half over
    NVLink (3.6 Tb/s) from g_r to g_(2+r)."""
    cfg = build_config(overrides=["cluster.tp=2", "cluster.placement=mixed"])
    tree = FatTree(cfg.topology)
    rec = _lone(cfg, 0, 2)
    assert rec.tier == 0
    lat = tree.latency_s[tree.path(0, 2)].sum()
    want = 6000 * KVPT_8B / 2 / (3600 * GBIT) + lat + cfg.timing.transfer_setup_s
    assert rec.transfer_s == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("tp,d_gpu", [(2, 8), (2, 24), (4, 8), (4, 56)])  # same pod, other pods
def test_oracles_striped_cost_equals_the_simulated_idle_time(tp, d_gpu):
    """The static oracle prices a striped transfer as the slowest rank's shard; on an idle fabric
    that is what the simulator's flows take (at tp=4 ranks 0 and 2 share 800 Gb/s ToR uplinks,
    which two 400 Gb/s shards fill exactly)."""
    cfg = build_config(overrides=[f"cluster.tp={tp}"])
    tree = FatTree(cfg.topology)
    cl = Cluster(cfg, tree)
    nbytes = 6000 * KVPT_8B
    oracle = StaticTierOracle(tree, cfg.timing.transfer_setup_s)
    q = OracleQuery(0, cl.decode_ids, np.full(cl.decode_ids.size, float(nbytes)), 0.0)
    cost = oracle.striped_cost(q, cl.decode_rank_ids)
    k = int(np.flatnonzero(cl.decode_ids == d_gpu)[0])
    assert cost[k] == pytest.approx(_lone(cfg, 0, d_gpu).transfer_s, rel=1e-9)
    # each rank's shard priced alone, the maximum taken
    per_rank = [oracle.cost(q._replace(src=r, dsts=cl.decode_rank_ids[r], nbytes=q.nbytes / tp))[k]
                for r in range(tp)]
    assert cost[k] == max(per_rank)


def test_striped_cost_at_tp1_is_the_plain_cost():
    tree = FatTree()
    oracle = StaticTierOracle(tree)
    dsts = np.array([1, 5, 9, 63])
    q = OracleQuery(0, dsts, np.array([1e6, 0.0, 3e8, 5e9]), 0.0)
    assert np.array_equal(oracle.striped_cost(q, [dsts]), oracle.cost(q))


def test_tp_runs_end_to_end_and_striping_shortens_transfers():
    """A 70B window on H100s at tp=4 (the default) and tp=2 under a congestion scenario: every
    request finishes, and the four-way stripe moves the same bytes faster than the two-way one."""
    recs = {}
    for tp in (2, 4):
        cfg = build_config("llama-3-70b", "h100-sxm", [f"cluster.tp={tp}"])
        exp, _ = prepare(cfg, None, "decode-flap", "netkv:inflight", 80, 0, tune=False)
        sim = Simulator(cfg, exp.requests, exp.policies[0].make(0.1, 0, "inflight"), exp.actions())
        recs[tp] = sim.run()
        assert len(recs[tp]) == 80 and all(np.isfinite(r.ttft_s) for r in recs[tp])
    per_byte = {tp: sum(r.transfer_s for r in rs) / sum(r.kv_bytes for r in rs) for tp, rs in recs.items()}
    assert per_byte[4] < per_byte[2]


# ----------------------------------------------------------------------------- emulator
def test_emulate_refuses_tp_above_one():
    from scheduler.emulate.emulable import EmulationUnsupportedError, check_emulable

    exp, _ = prepare(build_config(overrides=["cluster.tp=2"]), None, "idle", "cache-load,netkv", 40, 0, tune=False)
    with pytest.raises(EmulationUnsupportedError, match=r"cluster\.tp=2: an instance spans 2 GPUs"):
        check_emulable(exp, 0.01, 1.0)
    exp1, _ = prepare(build_config(), None, "idle", "cache-load,netkv", 40, 0, tune=False)
    check_emulable(exp1, 0.01, 1.0)


def test_cli_emulate_exits_2_on_tp_above_one_before_any_fabric_work(tmp_path):
    out = tmp_path / "never"
    res = subprocess.run([NETKV_BIN, "emulate", "--set", "cluster.tp=2",
                          "--scale", "0.01", "--max-requests", "20", "--no-progress", "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "cluster.tp=2" in res.stderr and "netkv simulate" in res.stderr
    assert "Traceback" not in res.stderr and not out.exists()
