"""Tests for scheduler/model/synthetic.py: determinism, the 512-token rule, Mooncake-like statistics."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import CONVERSATION_TRACE, needs_mooncake

from scheduler.model.synthetic import SyntheticConfig, SyntheticConfigError, synthetic_trace
from scheduler.model.trace import BLOCK_TOKENS, load_trace, trace_stats


def test_same_seed_identical_different_seed_differs() -> None:
    a, b = synthetic_trace(seed=3), synthetic_trace(seed=3)
    assert a == b
    c = synthetic_trace(seed=4)
    assert [r.input_tokens for r in a] != [r.input_tokens for r in c]


def test_shape_and_block_rule() -> None:
    reqs = synthetic_trace(SyntheticConfig(n_requests=500), seed=1)
    assert len(reqs) == 500
    assert [r.req_id for r in reqs] == list(range(500))
    arrivals = [r.arrival_s for r in reqs]
    assert arrivals[0] == 0.0 and arrivals == sorted(arrivals)
    for r in reqs:
        assert len(r.hash_ids) == -(-r.input_tokens // BLOCK_TOKENS)
        assert 1 <= r.input_tokens <= 131_072 and 1 <= r.output_tokens <= 2000
        assert all(isinstance(h, int) and h >= 0 for h in r.hash_ids)


def test_follow_ups_extend_a_previous_prompt() -> None:
    reqs = synthetic_trace(SyntheticConfig(n_requests=800), seed=2)
    prompts: dict[int, tuple[int, ...]] = {}  # id of second block -> full prompt that introduced it
    follow_ups = 0
    for r in reqs:
        ids = r.hash_ids
        if len(ids) > 1 and ids[1] in prompts:
            follow_ups += 1
            # The shared part is a prefix of an earlier prompt: ids agree block by block from the start.
            earlier = prompts[ids[1]]
            k = 0
            while k < min(len(ids), len(earlier)) and ids[k] == earlier[k]:
                k += 1
            assert k >= 2 and set(ids[k:]).isdisjoint(earlier)
        for h in ids[1:2]:
            prompts.setdefault(h, ids)
    assert 0.3 < follow_ups / len(reqs) < 0.45


def test_statistics_near_conversation_targets() -> None:
    fractions = []
    for seed in range(3):
        s = trace_stats(synthetic_trace(seed=seed))
        assert s["count"] == 2000
        assert s["rate_per_s"] == pytest.approx(3.4, rel=0.08)
        assert s["input_median"] == pytest.approx(6900, rel=0.1)
        assert s["input_mean"] == pytest.approx(12000, rel=0.1)
        assert s["output_mean"] == pytest.approx(343, rel=0.08)
        fractions.append(s["reusable_block_fraction"])
    assert 0.33 < np.mean(fractions) < 0.41, fractions


def test_knobs_move_statistics() -> None:
    base = trace_stats(synthetic_trace(SyntheticConfig(n_requests=1000), seed=0))
    none = trace_stats(synthetic_trace(SyntheticConfig(n_requests=1000, follow_up_fraction=0.0,
                                                       system_prompt_fraction=0.0), seed=0))
    assert none["reusable_block_fraction"] == 0.0 < base["reusable_block_fraction"]
    fast = trace_stats(synthetic_trace(SyntheticConfig(n_requests=1000, rate_per_s=10.0), seed=0))
    assert fast["rate_per_s"] == pytest.approx(10.0, rel=0.1)


@pytest.mark.parametrize("field, value", [("n_requests", 0), ("rate_per_s", 0.0), ("input_mean", 10.0),
                                          ("follow_up_fraction", 1.5), ("conversation_window", 0),
                                          ("output_cv", 0.0), ("system_prompt_fraction", -0.1)])
def test_config_rejects_out_of_range(field: str, value: float) -> None:
    with pytest.raises(SyntheticConfigError, match=field):
        SyntheticConfig(**{field: value})


@needs_mooncake()
def test_close_to_real_conversation_trace() -> None:
    real = trace_stats(load_trace(CONVERSATION_TRACE))
    synth = trace_stats(synthetic_trace(SyntheticConfig(n_requests=6000), seed=0))
    for key, rel in [("rate_per_s", 0.05), ("input_median", 0.1), ("input_mean", 0.1), ("output_mean", 0.08)]:
        assert synth[key] == pytest.approx(real[key], rel=rel), key
    assert synth["reusable_block_fraction"] == pytest.approx(real["reusable_block_fraction"], abs=0.04)
    assert synth["input_max"] <= 131_072
