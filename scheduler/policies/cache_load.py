"""Tuned cache+load-aware scheduler (Mooncake Conductor-like), blind to the network.

Prefill: minimum estimated TTFT = queued prefill time + prefill compute given the instance's prefix
cache hit. Decode: minimum of (fraction of the prompt's KV the candidate lacks) + weight x (its load
fraction); the weight is tuned by grid search like netkv's."""
from __future__ import annotations

import numpy as np

from scheduler.cluster import Decision, DecisionContext
from scheduler.policies.base import Policy


def best_prefill(ctx: DecisionContext) -> int:
    return int(np.argmin(ctx.prefill_estimate_s))


class CacheLoad(Policy):
    name = "cache-load"
    description = "prefill by min(queue + cached prefill); decode by decode-side cache hit + load (tuned weight)"
    tuned_param = "load_weight"

    def choose(self, ctx: DecisionContext) -> Decision:
        p = best_prefill(ctx)
        miss = 1.0 - ctx.decode_cached_tokens / max(ctx.request.input_tokens, 1)
        w = 1.0 if self.weight is None else self.weight
        return Decision(p, int(np.argmin(miss + w * ctx.decode_load)))
