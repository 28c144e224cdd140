"""Hand-computed checks of scheduler/results/metrics.py on small record lists."""
from __future__ import annotations

import math

import numpy as np
import pytest

from scheduler.model.records import RequestRecord
from scheduler.results.metrics import SloConfig, compare, percentile, slo_attainment_curve, summarize_policy

NAN = float("nan")


def rec(policy: str = "netkv", req_id: int = 0, **kw: object) -> RequestRecord:
    """A record with plausible defaults; keyword arguments override fields."""
    fields = dict(policy=policy, req_id=req_id, arrival_s=float(req_id), input_tokens=1000, output_tokens=100,
                  prefill="g0", decode="g1", tier=1, prefill_cached_tokens=0, decode_cached_tokens=0,
                  kv_bytes=1000, queue_s=0.0, prefill_s=0.5, transfer_s=0.1, decode_wait_s=0.0,
                  first_token_s=float(req_id) + 1.0, ttft_s=1.0, tbt_mean_ms=50.0, decision_us=10.0)
    fields.update(kw)
    return RequestRecord(**fields)


def four_records() -> list[RequestRecord]:
    # ttft 1..4 s; TBT 50, 150, 50, NaN (single output token); tiers 0, 1, 3, 3; the tier-1
    # request moved no bytes (decode held the whole prefix).
    return [
        rec(req_id=0, ttft_s=1.0, tbt_mean_ms=50.0, tier=0, kv_bytes=100, transfer_s=0.1, queue_s=0.2,
            prefill_s=0.4, decision_us=10.0),
        rec(req_id=1, ttft_s=2.0, tbt_mean_ms=150.0, tier=1, kv_bytes=0, transfer_s=0.0, queue_s=0.4,
            prefill_s=0.6, decision_us=20.0),
        rec(req_id=2, ttft_s=3.0, tbt_mean_ms=50.0, tier=3, kv_bytes=300, transfer_s=0.3, queue_s=0.6,
            prefill_s=0.8, decision_us=30.0),
        rec(req_id=3, ttft_s=4.0, tbt_mean_ms=NAN, tier=3, kv_bytes=500, transfer_s=0.5, queue_s=0.8,
            prefill_s=1.0, decision_us=40.0, output_tokens=1),
    ]


# -- SloConfig / percentile ----------------------------------------------------------------------
def test_slo_defaults_and_validation() -> None:
    assert SloConfig() == SloConfig(ttft_s=2.0, tbt_ms=100.0)
    assert SloConfig(ttft_s=1.0, tbt_ms=50.0).scaled(2.0) == SloConfig(
        ttft_s=2.0, tbt_ms=100.0, definition="fixed", ttft_fixed_s=0.4, ttft_per_token_ms=0.13)
    with pytest.raises(ValueError, match="definition"):
        SloConfig(definition="vibes")
    with pytest.raises(ValueError):
        SloConfig(ttft_s=0.0)
    with pytest.raises(ValueError):
        SloConfig(tbt_ms=-1.0)
    with pytest.raises(ValueError):
        SloConfig().scaled(0.0)



def test_one_slo_class_for_the_config_and_the_metrics() -> None:
    """The ``slo`` config section is the class the metrics take: summary.json's ``config.slo`` keeps
    its fields and order, and a bad objective is a ConfigError naming the ``slo.`` parameter."""
    from scheduler.model import config
    from scheduler.model.config import ConfigError, build_config
    from scheduler.results import metrics

    assert metrics.SloConfig is config.SloConfig is SloConfig and config.SECTIONS["slo"] is SloConfig
    cfg = build_config(overrides=["slo.ttft_s=3", "slo.definition=per-request"])
    assert cfg.slo == SloConfig(ttft_s=3.0, definition="per-request")
    assert cfg.to_dict()["slo"] == {"definition": "per-request", "ttft_s": 3.0, "tbt_ms": 100.0, "ttft_fixed_s": 0.2,
                                    "ttft_per_token_ms": 0.065}
    assert list(config.config_from_dict(cfg.to_dict()).to_dict()["slo"]) == list(cfg.to_dict()["slo"])
    for item, match in (("slo.ttft_s=0", "'slo.ttft_s' must be > 0, got 0.0"),
                        ("slo.tbt_ms=inf", "'slo.tbt_ms' must be finite"),
                        ("slo.definition=vibes", "'slo.definition' must be one of fixed, ttft-only, per-request")):
        with pytest.raises(ConfigError, match=match):
            build_config(overrides=[item])

def test_slo_definitions_on_a_hand_case() -> None:
    """fixed: TTFT <= 2 s and TBT <= 100 ms; ttft-only: TTFT alone; per-request: TTFT <= 0.2 s +
    0.065 ms x prompt tokens (a 10k-token prompt: 0.85 s) and TBT."""
    from scheduler.results.metrics import attainment, summarize_policy

    def r(i, tokens, ttft, tbt):
        return rec(req_id=i, input_tokens=tokens, ttft_s=ttft, tbt_mean_ms=tbt)

    recs = [r(0, 10_000, 0.8, 50.0),    # meets all three
            r(1, 10_000, 0.9, 50.0),    # misses only per-request (limit 0.85 s)
            r(2, 40_000, 1.5, 50.0),    # per-request limit 2.8 s: meets all
            r(3, 1_000, 1.0, 150.0),    # TBT too slow: only ttft-only
            r(4, 60_000, 3.0, 50.0)]    # misses fixed (> 2 s), meets per-request (4.1 s)
    slo = SloConfig()
    assert attainment(recs, slo, "fixed") == pytest.approx(3 / 5)
    assert attainment(recs, slo, "ttft-only") == pytest.approx(4 / 5)
    assert attainment(recs, slo, "per-request") == pytest.approx(3 / 5)
    assert slo.ttft_limits(np.array([10_000]), "per-request")[0] == pytest.approx(0.85)
    s = summarize_policy(recs, SloConfig(definition="per-request"))
    assert s["slo_definition"] == "per-request" and s["slo_attainment"] == pytest.approx(3 / 5)
    assert s["slo_attainment_by_definition"] == {"fixed": pytest.approx(0.6), "ttft-only": pytest.approx(0.8),
                                                 "per-request": pytest.approx(0.6)}


def test_percentile_hand_values() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)  # linear: index 2.7
    assert percentile([4.0, 1.0, NAN, 3.0, 2.0], 50) == 2.5  # NaN ignored, order irrelevant
    assert percentile((x for x in [5.0]), 99) == 5.0  # any iterable


def test_percentile_empty_is_nan_not_error() -> None:
    assert math.isnan(percentile([], 50))
    assert math.isnan(percentile([NAN, NAN], 99))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


# -- summarize_policy ----------------------------------------------------------------------------
def test_summarize_policy_hand_computed() -> None:
    s = summarize_policy(four_records(), SloConfig(ttft_s=2.5, tbt_ms=100.0))
    assert s["requests"] == 4
    assert s["ttft_mean_s"] == pytest.approx(2.5)
    assert s["ttft_p50_s"] == pytest.approx(2.5)
    assert s["ttft_p90_s"] == pytest.approx(3.7)
    assert s["ttft_p99_s"] == pytest.approx(3.97)
    # TTFT met: 1, 2 s; TBT met: 50, 50 and NaN (one token); both: only request 0.
    assert s["ttft_slo_attainment"] == pytest.approx(0.5)
    assert s["tbt_slo_attainment"] == pytest.approx(0.75)
    assert s["slo_attainment"] == pytest.approx(0.25)
    assert (s["slo_ttft_s"], s["slo_tbt_ms"]) == (2.5, 100.0)
    assert s["tbt_mean_ms"] == pytest.approx((50 + 150 + 50) / 3)
    assert s["tbt_p99_ms"] == pytest.approx(148.0)  # over [50, 50, 150]: index 1.98
    assert s["transfer_mean_s"] == pytest.approx(0.9 / 4)
    assert s["transfer_p99_s"] == pytest.approx(0.3 + 0.97 * 0.2)
    assert s["queue_mean_s"] == pytest.approx(0.5)
    assert s["prefill_mean_s"] == pytest.approx(0.7)
    assert s["decode_wait_mean_s"] == 0.0
    assert s["kv_bytes_moved"] == 900 and isinstance(s["kv_bytes_moved"], int)
    assert s["transfers"] == 3
    assert s["tier_histogram"] == [1, 0, 0, 2]
    by_tier = s["transfer_mean_s_by_tier"]
    assert by_tier[0] == pytest.approx(0.1) and by_tier[3] == pytest.approx(0.4)
    assert by_tier[1] is None and by_tier[2] is None
    assert s["decision_us_p50"] == pytest.approx(25.0)
    assert s["decision_us_p99"] == pytest.approx(39.7)


def test_nan_ttft_misses_the_slo() -> None:
    s = summarize_policy([rec(ttft_s=NAN), rec(req_id=1, ttft_s=0.5)], SloConfig())
    assert s["slo_attainment"] == 0.5
    assert s["ttft_mean_s"] == 0.5  # NaN ignored by the statistics


def test_summarize_empty() -> None:
    s = summarize_policy([], SloConfig())
    assert s["requests"] == 0 and s["kv_bytes_moved"] == 0 and s["transfers"] == 0
    assert s["tier_histogram"] == [0, 0, 0, 0]
    assert s["transfer_mean_s_by_tier"] == [None, None, None, None]
    for key in ("ttft_mean_s", "ttft_p99_s", "slo_attainment", "tbt_p99_ms", "decision_us_p99"):
        assert math.isnan(s[key]), key


def test_summarize_rejects_mixed_policies_and_bad_tier() -> None:
    with pytest.raises(ValueError, match="several policies"):
        summarize_policy([rec("netkv"), rec("round_robin")], SloConfig())
    with pytest.raises(ValueError, match="tier 4"):
        summarize_policy([rec(tier=4)], SloConfig())


# -- slo_attainment_curve ------------------------------------------------------------------------
def test_slo_attainment_curve() -> None:
    records = four_records()
    slo = SloConfig(ttft_s=2.5, tbt_ms=100.0)
    curve = slo_attainment_curve(records, slo, [0.3, 0.5, 1.0, 1.6, 2.0])
    # 0.3x: TTFT <= 0.75 -> none. 0.5x: TTFT <= 1.25, TBT <= 50 -> request 0. 1x: request 0.
    # 1.6x: TTFT <= 4, TBT <= 160 -> all four. 2x: all four.
    assert curve == pytest.approx([0.0, 0.25, 0.25, 1.0, 1.0])
    assert curve[2] == summarize_policy(records, slo)["slo_attainment"]
    assert all(math.isnan(v) for v in slo_attainment_curve([], slo, [0.5, 1.0]))
    with pytest.raises(ValueError):
        slo_attainment_curve(records, slo, [0.0])


# -- compare -------------------------------------------------------------------------------------
def _summary(ttft_mean: float, ttft_p99: float, tbt: float, att: float) -> dict:
    return {"ttft_mean_s": ttft_mean, "ttft_p99_s": ttft_p99, "tbt_mean_ms": tbt, "slo_attainment": att}


def test_compare_signs_and_units() -> None:
    policies = {
        "round_robin": _summary(2.0, 8.0, 40.0, 0.70),
        "netkv": _summary(1.5, 10.0, 40.2, 0.90),
        "cache_load": _summary(1.0, 10.0, 40.2, 0.95),
    }
    out = compare(policies)
    assert set(out) == {"round_robin", "cache_load"}
    rr = out["round_robin"]
    assert rr["ttft_mean_pct"] == pytest.approx(-25.0)  # netkv faster: negative
    assert rr["ttft_p99_pct"] == pytest.approx(25.0)  # netkv slower in the tail: positive
    assert rr["tbt_mean_pct"] == pytest.approx(0.5)  # relative %
    assert rr["tbt_mean_delta_ms"] == pytest.approx(0.2)  # absolute ms
    assert rr["slo_attainment_pp"] == pytest.approx(20.0)  # percentage points
    cl = out["cache_load"]
    assert cl["ttft_mean_pct"] == pytest.approx(50.0)
    assert cl["ttft_p99_pct"] == pytest.approx(0.0)
    assert cl["slo_attainment_pp"] == pytest.approx(-5.0)


def test_compare_other_target_missing_values_and_absent_target() -> None:
    policies = {"a": _summary(1.0, 1.0, 0.0, NAN), "b": _summary(3.0, 2.0, 10.0, 0.5)}
    out = compare(policies, target="b")
    assert out["a"]["ttft_mean_pct"] == pytest.approx(200.0)
    assert math.isnan(out["a"]["tbt_mean_pct"])  # baseline 0: no relative change
    assert out["a"]["tbt_mean_delta_ms"] == pytest.approx(10.0)
    assert math.isnan(out["a"]["slo_attainment_pp"])
    assert compare(policies) == {}  # no "netkv"
    assert compare({"netkv": _summary(1.0, 1.0, 1.0, 1.0)}) == {}


def test_compare_on_real_summaries() -> None:
    slo = SloConfig(ttft_s=2.5, tbt_ms=100.0)
    slow = [rec("rr", i, ttft_s=4.0 * r.ttft_s, tbt_mean_ms=r.tbt_mean_ms) for i, r in enumerate(four_records())]
    policies = {"rr": summarize_policy(slow, slo), "netkv": summarize_policy(four_records(), slo)}
    out = compare(policies)["rr"]
    assert out["ttft_mean_pct"] == pytest.approx(-75.0)
    assert out["ttft_p99_pct"] == pytest.approx(-75.0)
    assert out["slo_attainment_pp"] == pytest.approx(25.0)  # rr (TTFT >= 4 s) meets no request
