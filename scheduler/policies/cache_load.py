"""Tuned cache+load-aware scheduler (Mooncake Conductor-like), blind to the network.

Prefill: minimum estimated TTFT = queued prefill time + prefill compute given the instance's prefix
cache hit. Decode: minimum of (fraction of the prompt's KV the candidate lacks) + weight x (its load
fraction); the weight is tuned by grid search like netkv's."""
from __future__ import annotations

import numpy as np

from scheduler.decision.context import Decision, DecisionContext
from scheduler.policies.base import Policy, register

TIE_TOLERANCE_S = 1e-6
"""Estimates closer than this are ties (idle instances with no cache hit all estimate the same)."""


def best_prefill(ctx: DecisionContext, turn: int) -> int:
    """Minimum estimated TTFT (queue + prefill given the instance's cache hit); ties rotate with
    ``turn`` (like a router breaking ties round-robin), so an idle cluster does not pile every
    request onto the lowest-numbered instance and its links."""
    est = ctx.prefill_estimate_s
    best = int(est.argmin())
    ties = (est <= est.item(best) + TIE_TOLERANCE_S).nonzero()[0]
    if ties.size == 1:  # no tie, the minimum alone
        return best
    return int(ties[turn % ties.size])


@register
class CacheLoad(Policy):
    name = "cache-load"
    description = "prefill by min(queue + cached prefill); decode by decode-side cache hit + load (tuned weight)"
    tuned_param = "load_weight"
    default_weight = 1.0
    grid = "cache_load_weights"
    weight: float  # a tuned policy always has one (its default_weight)

    def choose(self, ctx: DecisionContext) -> Decision:
        p = best_prefill(ctx, ctx.turn)
        return Decision(p, int(decode_score(ctx, self.weight).argmin()))


def decode_score(ctx: DecisionContext, load_weight: float) -> np.ndarray:
    """cache-load's decode score, lower is better: the fraction of the prompt's KV a candidate
    lacks (0..1) + ``load_weight`` x its load fraction."""
    return ctx.decode_miss + load_weight * ctx.decode_load
