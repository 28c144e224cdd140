"""Rate and context scaling of traces (scheduler/model/transform.py)."""
from __future__ import annotations

import dataclasses

import pytest
from helpers import CONVERSATION_TRACE, needs_mooncake

from scheduler.model.synthetic import SyntheticConfig, synthetic_trace
from scheduler.model.trace import BLOCK_TOKENS, Request, load_trace, n_blocks, reusable_block_fraction
from scheduler.model.transform import SPLIT, TransformError, context_scale, rate_scale


def shared_blocks(a: Request, b: Request) -> int:
    n = 0
    for x, y in zip(a.hash_ids, b.hash_ids):
        if x != y:
            break
        n += 1
    return n


@pytest.fixture(scope="module")
def trace():
    return synthetic_trace(dataclasses.replace(SyntheticConfig(), n_requests=400), seed=5)


def test_rate_scale_compresses_arrivals_and_keeps_everything_else(trace):
    fast = rate_scale(trace, 4.0)
    assert [r.arrival_s for r in fast] == pytest.approx([r.arrival_s / 4 for r in trace])
    assert ([dataclasses.replace(r, arrival_s=0.0) for r in fast]
            == [dataclasses.replace(r, arrival_s=0.0) for r in trace])
    slow = rate_scale(trace, 0.5)
    assert slow[-1].arrival_s == pytest.approx(2 * trace[-1].arrival_s)
    assert rate_scale(trace, 1.0) == trace
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(TransformError, match="--rate-scale"):
            rate_scale(trace, bad)


@pytest.mark.parametrize("k", [0.25, 0.5, 1.5, 2.0, 3.0, 8.0])
def test_context_scale_keeps_shared_prefixes_shared_and_nothing_more(trace, k):
    out = context_scale(trace, k, 10**9).requests
    for a, b in zip(out, trace):
        assert a.input_tokens == max(round(b.input_tokens * k), 1)
        assert len(a.hash_ids) == n_blocks(a.input_tokens)
        assert a.output_tokens == b.output_tokens and a.arrival_s == b.arrival_s
    # pairs of requests: a shared original prefix of m blocks is a shared prefix of about m x k
    # blocks, and requests that shared nothing still share nothing
    for i in range(0, len(trace) - 1, 7):
        for j in (i + 1, i + 3):
            if j >= len(trace):
                continue
            m = shared_blocks(trace[i], trace[j])
            got = shared_blocks(out[i], out[j])
            if m == 0:
                assert got == 0
            else:
                shortest = min(len(out[i].hash_ids), len(out[j].hash_ids))
                assert got >= min(int(m * k) - 1, shortest) - 1
                assert got <= min(int((m + 1) * k) + 1, shortest)


def test_context_scale_growth_is_exact_on_a_hand_case():
    # two requests sharing their first two blocks
    a = Request(0, 0.0, 3 * BLOCK_TOKENS, 10, (7, 8, 9))
    b = Request(1, 1.0, 4 * BLOCK_TOKENS, 10, (7, 8, 20, 21))
    out = context_scale([a, b], 2.0, 10**6).requests
    assert out[0].hash_ids == (7 * SPLIT, 7 * SPLIT + 1, 8 * SPLIT, 8 * SPLIT + 1, 9 * SPLIT, 9 * SPLIT + 1)
    assert shared_blocks(out[0], out[1]) == 4
    half = context_scale([a, b], 0.5, 10**6).requests
    assert half[0].hash_ids == (8, 9) and half[1].hash_ids == (8, 21)  # merged blocks named by their last
    assert shared_blocks(half[0], half[1]) == 1


def test_context_scale_caps_at_the_window_and_counts(trace):
    longest = max(r.input_tokens for r in trace)
    res = context_scale(trace, 4.0, longest)
    assert res.capped == sum(round(r.input_tokens * 4) > longest for r in trace) > 0
    assert max(r.input_tokens for r in res.requests) == longest
    for bad in (0.0, -2.0, float("nan"), SPLIT * 2.0):
        with pytest.raises(TransformError, match="--context-scale"):
            context_scale(trace, bad, 1000)


@needs_mooncake()
def test_context_scale_keeps_the_real_traces_reuse():
    real = load_trace(CONVERSATION_TRACE)[:3000]
    base = reusable_block_fraction(real)
    for k in (0.5, 2.0):
        scaled = context_scale(real, k, 10**9).requests
        assert reusable_block_fraction(scaled) == pytest.approx(base, abs=0.05)
