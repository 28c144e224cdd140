"""Aggregate metrics over per-request records: the content of ``summary.json``.

Every function here is pure (records in, plain Python numbers out) so the simulator and the
emulator backends share one definition of TTFT percentiles, SLO attainment and tier statistics.
Missing values are ``float("nan")`` inside Python; ``scheduler/results/files.py`` writes them as JSON
``null``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from scheduler.model.config import SLO_DEFINITIONS, SloConfig
from scheduler.model.records import RequestRecord
from scheduler.policies import TARGET

#: Number of network tiers: 0 same server, 1 same rack, 2 same pod, 3 cross-pod.
N_TIERS = 4

#: Metrics ``compare`` reports as relative change (percent of the baseline's value).
RELATIVE_METRICS = ("ttft_mean_s", "ttft_p99_s", "tbt_mean_ms")


def _finite(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    return arr[np.isfinite(arr)]


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100, numpy's linear interpolation) of the finite ``values``.

    NaN and infinite entries are ignored; an empty (or all-NaN) input gives ``nan`` instead of
    raising. ``q`` outside 0..100 is a programming error and raises ``ValueError``.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be within 0..100, got {q!r}")
    arr = _finite(values)
    if arr.size == 0:
        return float("nan")
    return float(np.percentile(arr, q))


def _mean(values: Iterable[float]) -> float:
    arr = _finite(values)
    return float(arr.mean()) if arr.size else float("nan")


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else x


def _meets(ttft: np.ndarray, tbt: np.ndarray, slo: SloConfig, tokens: np.ndarray | None = None,
           definition: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Boolean arrays (TTFT met, TBT met) per request under ``definition`` (default: ``slo``'s;
    ``tokens``, the prompt lengths, are needed for ``per-request``).

    A NaN TTFT (request never produced a token) misses the TTFT objective. A NaN mean TBT (a
    single output token, so there is no gap between tokens) cannot violate the TBT objective;
    under ``ttft-only`` every TBT passes.
    """
    definition = definition or slo.definition
    limits = slo.ttft_limits(tokens if tokens is not None else np.zeros(ttft.shape), definition)
    with np.errstate(invalid="ignore"):
        ttft_ok = ttft <= limits  # NaN compares False
        tbt_ok = np.isnan(tbt) | (tbt <= slo.tbt_ms) if definition != "ttft-only" else np.ones(tbt.shape, bool)
    return ttft_ok, tbt_ok


def _ttft_tbt(records: Sequence[RequestRecord]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([r.ttft_s for r in records], dtype=float),
            np.array([r.tbt_mean_ms for r in records], dtype=float))


def _tokens(records: Sequence[RequestRecord]) -> np.ndarray:
    return np.array([r.input_tokens for r in records], dtype=float)


def attainment(records: Sequence[RequestRecord], slo: SloConfig, definition: str | None = None) -> float:
    """Fraction 0..1 of ``records`` meeting the SLO under ``definition`` (default: ``slo``'s)."""
    ttft, tbt = _ttft_tbt(records)
    ok_t, ok_b = _meets(ttft, tbt, slo, _tokens(records), definition)
    return _attainment(ok_t & ok_b)


def _attainment(ok: np.ndarray) -> float:
    return float(ok.mean()) if ok.size else float("nan")


def _check_records(records: Sequence[RequestRecord]) -> None:
    policies = {r.policy for r in records}
    if len(policies) > 1:
        raise ValueError(f"records of several policies passed to one summary: {sorted(policies)}")
    for r in records:
        if not 0 <= r.tier < N_TIERS:
            raise ValueError(f"request {r.req_id} ({r.policy}) has tier {r.tier}, expected 0..{N_TIERS - 1}")


def summarize_policy(records: list[RequestRecord], slo: SloConfig) -> dict:
    """Summary statistics of one policy's records (all with the same ``policy`` field).

    Keys (times in seconds unless the name says ms/us; NaN when there is no data):

    - ``requests``: number of records.
    - ``ttft_mean_s``, ``ttft_p50_s``, ``ttft_p90_s``, ``ttft_p99_s``: time to first token.
    - ``slo_attainment``: fraction 0..1 of requests meeting the SLO under ``slo.definition``
      (``slo_definition``); ``slo_attainment_by_definition``: the same under each of
      :data:`SLO_DEFINITIONS`; ``ttft_slo_attainment`` / ``tbt_slo_attainment``: the fixed TTFT
      and TBT objectives alone. A NaN TTFT misses; a NaN TBT (one output token) meets the TBT
      objective.
    - ``slo_ttft_s``, ``slo_tbt_ms``: the fixed objectives.
    - ``tbt_mean_ms``: mean over requests of each request's mean time between tokens;
      ``tbt_p99_ms``: the 99th percentile *over requests* of their mean TBT (not a percentile of
      individual token gaps, which the records do not hold).
    - ``transfer_mean_s``, ``transfer_p99_s``: KV transfer time over all requests (zero-byte
      transfers count as 0 s, so this is the transfer share of TTFT).
    - ``queue_mean_s``, ``prefill_mean_s``, ``decode_wait_mean_s``: the other TTFT components.
    - ``kv_bytes_moved``: total KV bytes moved (int).
    - ``transfers``: requests that moved at least one KV byte.
    - ``tier_histogram``: list of 4 ints, transfers (``kv_bytes > 0``) per tier 0..3.
    - ``transfer_mean_s_by_tier``: list of 4, mean transfer time of those transfers per tier,
      ``None`` for a tier without transfers.
    - ``decision_us_p50``, ``decision_us_p99``: scheduler decision latency in microseconds.
    - ``failure``: KV transfers that stood still on a failed link (``stalled_s > 0``):
      ``transfers`` (count), ``fraction`` (of all transfers), ``stalled_mean_s`` and
      ``stalled_max_s`` (time they stood still, over those transfers), ``ttft_mean_s`` (their
      mean TTFT; NaN without any).

    Raises ``ValueError`` for mixed policies or a tier outside 0..3.
    """
    _check_records(records)
    ttft = [r.ttft_s for r in records]
    tbt = [r.tbt_mean_ms for r in records]
    transfer = [r.transfer_s for r in records]
    decision = [r.decision_us for r in records]
    ttft_ok, tbt_ok = _meets(*_ttft_tbt(records), slo, definition="fixed")
    by_definition = {d: attainment(records, slo, d) for d in SLO_DEFINITIONS}

    hist = [0] * N_TIERS
    by_tier: list[list[float]] = [[] for _ in range(N_TIERS)]
    for r in records:
        if r.kv_bytes > 0:
            hist[r.tier] += 1
            by_tier[r.tier].append(r.transfer_s)

    stalled = [r for r in records if r.stalled_s > 0]
    failure = {
        "transfers": len(stalled),
        "fraction": len(stalled) / max(sum(hist), 1),
        "stalled_mean_s": _mean(r.stalled_s for r in stalled),
        "stalled_max_s": max((r.stalled_s for r in stalled), default=float("nan")),
        "ttft_mean_s": _mean(r.ttft_s for r in stalled),
    }
    return {
        "requests": len(records),
        "ttft_mean_s": _mean(ttft),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p90_s": percentile(ttft, 90),
        "ttft_p99_s": percentile(ttft, 99),
        "slo_attainment": by_definition[slo.definition],
        "slo_definition": slo.definition,
        "slo_attainment_by_definition": by_definition,
        "ttft_slo_attainment": _attainment(ttft_ok),
        "tbt_slo_attainment": _attainment(tbt_ok),
        "slo_ttft_s": slo.ttft_s,
        "slo_tbt_ms": slo.tbt_ms,
        "tbt_mean_ms": _mean(tbt),
        "tbt_p99_ms": percentile(tbt, 99),
        "transfer_mean_s": _mean(transfer),
        "transfer_p99_s": percentile(transfer, 99),
        "queue_mean_s": _mean(r.queue_s for r in records),
        "prefill_mean_s": _mean(r.prefill_s for r in records),
        "decode_wait_mean_s": _mean(r.decode_wait_s for r in records),
        "kv_bytes_moved": int(sum(int(r.kv_bytes) for r in records)),
        "transfers": sum(hist),
        "tier_histogram": hist,
        "transfer_mean_s_by_tier": [_none_if_nan(_mean(t)) for t in by_tier],
        "decision_us_p50": percentile(decision, 50),
        "decision_us_p99": percentile(decision, 99),
        "failure": failure,
    }


def slo_attainment_curve(records: list[RequestRecord], slo: SloConfig, scales: Iterable[float],
                         definition: str | None = None) -> list[float]:
    """SLO attainment (0..1) under ``definition`` (default: ``slo``'s) with every objective
    multiplied by each of ``scales``.

    One value per scale, in order; NaN for every scale when ``records`` is empty.
    """
    ttft, tbt = _ttft_tbt(records)
    tokens = _tokens(records)
    out: list[float] = []
    for s in scales:
        scaled = slo.scaled(float(s))
        if ttft.size == 0:
            out.append(float("nan"))
            continue
        ttft_ok, tbt_ok = _meets(ttft, tbt, scaled, tokens, definition)
        out.append(_attainment(ttft_ok & tbt_ok))
    return out


def _relative_pct(target: float, base: float) -> float:
    if not (math.isfinite(target) and math.isfinite(base)) or base == 0:
        return float("nan")
    return 100.0 * (target - base) / base


def _num(summary: Mapping, key: str) -> float:
    v = summary.get(key)
    return float("nan") if v is None else float(v)


def compare(policies: dict[str, dict], target: str = TARGET) -> dict[str, dict]:
    """How ``target`` compares with every other policy, keyed by the other policy's name.

    ``policies`` maps policy name to a ``summarize_policy`` output. Each value holds:

    - ``ttft_mean_pct``, ``ttft_p99_pct``, ``tbt_mean_pct``: relative change in percent,
      ``100 * (target - baseline) / baseline`` (negative = target is faster);
    - ``slo_attainment_pp``: difference in percentage points, ``100 * (target - baseline)``
      (positive = target meets the SLO more often);
    - ``tbt_mean_delta_ms``: absolute difference of mean TBT in ms (target - baseline), the
      "TBT overhead" the paper bounds by 0.5 ms.

    A value is NaN when either side is missing/NaN (or the baseline is 0 for a relative change).
    Returns ``{}`` when ``target`` is not among ``policies``.
    """
    if target not in policies:
        return {}
    t = policies[target]
    out: dict[str, dict] = {}
    for name, base in policies.items():
        if name == target:
            continue
        row = {f"{key.rsplit('_', 1)[0]}_pct": _relative_pct(_num(t, key), _num(base, key)) for key in RELATIVE_METRICS}
        ta, ba = _num(t, "slo_attainment"), _num(base, "slo_attainment")
        row["slo_attainment_pp"] = 100.0 * (ta - ba) if math.isfinite(ta) and math.isfinite(ba) else float("nan")
        tt, bt = _num(t, "tbt_mean_ms"), _num(base, "tbt_mean_ms")
        row["tbt_mean_delta_ms"] = tt - bt if math.isfinite(tt) and math.isfinite(bt) else float("nan")
        out[name] = row
    return out


ABLATION = (("netkv:static", "static topology oracle"), ("netkv:inflight", "telemetry + own in-flight transfers"),
            ("netkv:perfect", "perfect information"), ("topology-affinity", "llm-d's static topology scorer"),
            ("topology-filter", "Dynamo's preferred topology domain"), ("cache-load", "network-blind"))
"""Policies the ablation compares NetKV with live telemetry against, and what each isolates."""


def ablation(policies: dict[str, dict], target: str = TARGET) -> dict:
    """What live network information buys: ``target`` (NetKV on the live oracle) against the same
    greedy on other oracles and against the field's static topology scorers.

    ``vs``: per present policy of :data:`ABLATION`, the mean-TTFT change of ``target`` in percent
    (negative = live is faster) and the absolute mean-TTFT difference in ms.
    ``captured``: the share of perfect information's gain over the static oracle that live
    telemetry realises, ``(static - live) / (static - perfect)``; NaN when perfect information
    gains nothing over static (under 0.1% of static's mean TTFT), or either is missing.
    Returns ``{}`` without ``target``."""
    if target not in policies:
        return {}
    live = _num(policies[target], "ttft_mean_s")
    out: dict = {"target": target, "vs": {}}
    for name, what in ABLATION:
        if name in policies:
            base = _num(policies[name], "ttft_mean_s")
            out["vs"][name] = {"what": what, "ttft_mean_pct": _relative_pct(live, base),
                               "ttft_mean_delta_ms": 1e3 * (live - base)}
    static = _num(policies.get("netkv:static", {}), "ttft_mean_s")
    perfect = _num(policies.get("netkv:perfect", {}), "ttft_mean_s")
    gain = static - perfect
    out["captured"] = (static - live) / gain if math.isfinite(gain) and gain > 1e-3 * static else float("nan")
    return out
