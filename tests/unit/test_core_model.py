"""Core model: KV size per token, prefill/decode timing, configuration overrides, prefix caches."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import CONVERSATION_TRACE, needs_mooncake

from scheduler.model.cache import PrefixCacheGroup
from scheduler.model.config import MODEL_PRESETS, ConfigError, build_config, describe_constants
from scheduler.model.synthetic import SyntheticConfig, synthetic_trace
from scheduler.model.timing import TimingModel
from scheduler.model.trace import load_trace


# ----------------------------------------------------------------------------- KV size
@pytest.mark.parametrize("model,bytes_per_token", [
    ("llama-3-8b", 131072),
    ("llama-3-70b", 327680),
    ("llama-2-7b", 524288),
    ("qwen2.5-7b", 57344),
])
def test_kv_bytes_per_token_matches_reference_table(model, bytes_per_token):
    assert MODEL_PRESETS[model].kv_bytes_per_token == bytes_per_token
    cfg = build_config(model)
    assert cfg.model.kv_bytes_per_token == bytes_per_token
    timing = TimingModel(cfg)
    assert timing.kv_bytes_per_token == bytes_per_token
    # an 8k-token prompt: 1.0 GiB for Llama-3-8B, 2.5 GiB for 70B, 4 GiB for Llama-2-7B
    assert timing.kv_bytes(8192) == 8192 * bytes_per_token


def test_kv_bytes_recorded_in_config_dict():
    d = build_config("llama-3-70b").to_dict()
    assert d["model"]["kv_bytes_per_token"] == 327680
    assert d["gpu"]["name"] == "h200"  # default GPU of the 70B preset (fits its fp8 weights)


# ----------------------------------------------------------------------------- timing
@pytest.fixture(scope="module")
def timing() -> TimingModel:
    return TimingModel(build_config())


def test_prefill_time_grows_with_tokens(timing):
    sizes = [1, 64, 512, 1024, 2048, 4096, 8192, 16384, 32768, 131072]
    times = [timing.prefill_s(n) for n in sizes]
    assert all(b >= a for a, b in zip(times, times[1:])), times
    assert times[-1] > times[4] > 0
    # long prompts are compute bound: more than linear growth from attention
    assert timing.prefill_s(32768) > 2 * timing.prefill_s(16384) * 0.99


def test_prefill_time_shrinks_with_cached_tokens(timing):
    n = 16384
    cached = [0, 512, 2048, 8192, 12288, 16000, 16384, 20000]
    times = [timing.prefill_s(n, c) for c in cached]
    assert all(b <= a for a, b in zip(times, times[1:])), times
    assert times[3] < times[0]
    # everything cached: only the fixed overhead remains
    assert timing.prefill_s(n, n) == pytest.approx(build_config().timing.prefill_overhead_s)
    assert timing.prefill_s(n, n) > 0


@pytest.mark.parametrize("n", [1, 300, 512, 4000, 9000, 65536])
def test_prefill_array_equals_scalar(timing, n):
    cached = np.array([0, 1, 256, 512, n // 2, n - 1, n, n + 100])
    arr = timing.prefill_s_array(n, cached)
    assert arr.shape == cached.shape
    expected = [timing.prefill_s(n, int(c)) for c in cached]
    assert np.allclose(arr, expected, rtol=1e-12, atol=0)


def test_decode_step_grows_with_context(timing):
    ctx = [0, 1000, 10_000, 100_000, 400_000]
    steps = [timing.decode_step_s(c) for c in ctx]
    assert all(b > a for a, b in zip(steps, steps[1:])), steps
    # memory bound: an 8B bf16 model on H100 reads ~16 GB per step -> a few ms, not seconds
    assert 0.001 < steps[0] < 0.05


def test_bigger_gpu_decodes_faster():
    h100 = TimingModel(build_config("llama-3-8b", "h100-sxm"))
    h200 = TimingModel(build_config("llama-3-8b", "h200"))
    assert h200.decode_step_s(10_000) < h100.decode_step_s(10_000)
    assert h200.kv_capacity_tokens > h100.kv_capacity_tokens > 0


# ----------------------------------------------------------------------------- build_config
def test_build_config_overrides_apply():
    cfg = build_config(overrides=[
        "topology.nic_gbit_s=200", "topology.routing=ecmp", "timing.prefill_mfu=0.4",
        "tuning.tune_requests=50", "tuning.cache_load_weights=0,1,2.5", "slo.ttft_s=3",
    ])
    assert cfg.topology.nic_gbit_s == 200.0
    assert cfg.topology.routing == "ecmp"
    assert cfg.timing.prefill_mfu == 0.4
    assert cfg.tuning.tune_requests == 50 and isinstance(cfg.tuning.tune_requests, int)
    assert cfg.tuning.cache_load_weights == (0.0, 1.0, 2.5)
    assert cfg.slo.ttft_s == 3.0
    # untouched defaults stay
    assert cfg.topology.pods == 4


def test_overrides_change_timing():
    slow = TimingModel(build_config(overrides=["timing.prefill_mfu=0.25"]))
    fast = TimingModel(build_config(overrides=["timing.prefill_mfu=0.5"]))
    assert slow.prefill_s(16384) > fast.prefill_s(16384)


@pytest.mark.parametrize("override,needle", [
    ("nosuch.field=1", "nosuch"),
    ("topology.nosuch=1", "nosuch"),
    ("topology.pods=abc", "pods"),
    ("topology.pods=0", "pods"),
    ("topology.cores=3", "cores"),
    ("topology.routing=spray", "routing"),
    ("model.layers=0", "model.layers"),
    ("timing.prefill_mfu=1.5", "timing.prefill_mfu"),
    ("cluster.placement=random", "cluster.placement"),
    ("cluster.prefill_fraction=2", "cluster.prefill_fraction"),
    ("oracle.staleness_s=-1", "oracle.staleness_s"),
    ("oracle.persistence_s=-1", "oracle.persistence_s"),
    ("oracle.persistence_s=nan", "oracle.persistence_s"),
    ("slo.ttft_s=0", "slo.ttft_s"),
    ("topology.nic_gbit_s", "topology.nic_gbit_s"),  # no '='
    ("nic_gbit_s=200", "nic_gbit_s"),  # no section
])
def test_build_config_errors_name_the_parameter(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        build_config(overrides=[override])


def test_unknown_presets_rejected():
    with pytest.raises(ConfigError, match="gpt-5"):
        build_config("gpt-5")
    with pytest.raises(ConfigError, match="a100"):
        build_config("llama-3-8b", "a100")


def test_model_too_big_for_gpu():
    # 70B in fp8 fits one H200 but not one 40 GB GPU; in bf16 (141 GB) not even one H200 (tests of
    # tensor-parallel instances, which split the weights: tests/integration/test_tp.py)
    build_config("llama-3-70b", overrides=["cluster.tp=1"])
    with pytest.raises(ConfigError, match="do not fit"):
        build_config("llama-3-70b", overrides=["gpu.memory_gb=40", "cluster.tp=1"])
    with pytest.raises(ConfigError, match="llama-3-70b"):
        build_config("llama-3-70b", overrides=["model.weight_bytes_per_param=2", "cluster.tp=1"])


def test_describe_constants_lists_every_section():
    names = [n for n, _, _ in describe_constants()]
    assert "topology.nic_gbit_s" in names
    assert "oracle.staleness_s" in names
    assert len(names) == len(set(names))
    missing_help = [n for n, _, h in describe_constants() if not h.strip()]
    assert missing_help == []


# ----------------------------------------------------------------------------- prefix cache
def test_prefix_lengths_basic():
    c = PrefixCacheGroup(3, 100)
    c.insert(0, [1, 2, 3, 4])
    c.insert(1, [1, 2])
    c.insert(2, [9])
    assert c.prefix_blocks([1, 2, 3, 4, 5]).tolist() == [4, 2, 0]
    assert c.prefix_blocks([1, 2, 7]).tolist() == [2, 2, 0]
    assert c.prefix_blocks([9, 10]).tolist() == [0, 0, 1]
    assert c.prefix_blocks([]).tolist() == [0, 0, 0]
    assert [c.prefix_blocks_of(i, [1, 2, 3, 4, 5]) for i in range(3)] == [4, 2, 0]
    assert [c.blocks_held(i) for i in range(3)] == [4, 2, 1]


def test_lru_eviction_keeps_prefixes_tail_before_root():
    c = PrefixCacheGroup(1, 4)
    a, b, cc, d = [1, 2, 3], [1, 5], [1, 6], [7]
    c.insert(0, a)
    c.insert(0, b)  # holds 1,2,3,5 (full)
    assert c.prefix_blocks_of(0, a) == 3 and c.prefix_blocks_of(0, b) == 2
    c.insert(0, cc)  # must evict a's tail (3), not its root
    assert c.blocks_held(0) == 4
    assert c.prefix_blocks_of(0, a) == 2
    assert c.prefix_blocks_of(0, b) == 2 and c.prefix_blocks_of(0, cc) == 2
    c.insert(0, d)  # evicts 2 next: the root 1, touched most recently, survives
    assert c.prefix_blocks_of(0, a) == 1
    assert c.prefix_blocks([1, 2, 3]).tolist() == [1]
    assert c.prefix_blocks_of(0, d) == 1
    assert c.blocks_held(0) == 4


def test_request_longer_than_capacity_keeps_its_head():
    c = PrefixCacheGroup(2, 3)
    c.insert(1, [10, 11, 12, 13, 14])
    assert c.prefix_blocks([10, 11, 12, 13, 14]).tolist() == [0, 3]
    assert c.blocks_held(1) == 3


def test_capacity_zero_caches_nothing():
    c = PrefixCacheGroup(4, 0)
    for i in range(4):
        c.insert(i, [1, 2, 3])
    assert c.prefix_blocks([1, 2, 3]).tolist() == [0, 0, 0, 0]
    assert all(c.blocks_held(i) == 0 for i in range(4))
    with pytest.raises(ValueError):
        PrefixCacheGroup(2, -1)


def test_many_instances_bitmask_width():
    """More than 8 instances: the holder bitmask spans several bytes."""
    c = PrefixCacheGroup(20, 50)
    c.insert(17, [1, 2, 3])
    c.insert(3, [1, 2])
    c.insert(19, [1])
    got = c.prefix_blocks([1, 2, 3, 4])
    want = np.zeros(20, dtype=int)
    want[17], want[3], want[19] = 3, 2, 1
    assert got.tolist() == want.tolist()


def _cross_check(requests, n: int, capacity: int, seed: int) -> int:
    """Replay requests into random instances; before each insert compare the group-wide answer
    with the per-instance scan. Returns the number of non-zero hits checked."""
    rng = np.random.default_rng(seed)
    c = PrefixCacheGroup(n, capacity)
    hits = 0
    for r in requests:
        fast = c.prefix_blocks(r.hash_ids)
        slow = [c.prefix_blocks_of(i, r.hash_ids) for i in range(n)]
        assert fast.tolist() == slow, f"request {r.req_id}: {fast.tolist()} != {slow}"
        hits += int(np.count_nonzero(fast))
        c.insert(int(rng.integers(n)), r.hash_ids)
        assert all(c.blocks_held(i) <= capacity for i in range(n))
    return hits


@pytest.mark.parametrize("seed,n,capacity", [(0, 4, 60), (1, 12, 300), (2, 32, 2000)])
def test_prefix_blocks_matches_scan_on_synthetic_traces(seed, n, capacity):
    reqs = synthetic_trace(dataclasses.replace(SyntheticConfig(), n_requests=3000), seed=seed)
    assert _cross_check(reqs, n, capacity, seed) > 0


@needs_mooncake()
@pytest.mark.parametrize("n,capacity", [(8, 150), (24, 1500)])
def test_prefix_blocks_matches_scan_on_real_trace(n, capacity):
    reqs = load_trace(CONVERSATION_TRACE)[:6000]
    assert _cross_check(reqs, n, capacity, seed=n) > 0


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("override", ["topology.hop_latency_us=nan", "topology.nvlink_latency_us=nan"])
def test_nan_latency_rejected(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[1]):
        build_config(overrides=[override])


def test_negative_tune_requests_rejected():
    with pytest.raises(ConfigError, match="tune_requests"):
        build_config(overrides=["tuning.tune_requests=-5"])


@pytest.mark.parametrize("override", ["timing.transfer_setup_s=-1", "timing.prefill_overhead_s=-1",
                                      "timing.decode_step_overhead_s=-1"])
def test_negative_timing_overheads_rejected(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[1]):
        build_config(overrides=[override])
