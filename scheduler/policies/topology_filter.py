"""Dynamo's topology-domain constraint in its ``preferred`` mode (and llm-d's topology filter).

NVIDIA Dynamo's experimental topology-aware KV transfer lets workers publish their topology
domains and restricts the decode choice to the prefill worker's domain when a worker there exists
(``preferred``; ``required`` fails otherwise); llm-d's router has the equivalent filter. Here the
domain is the nearest tier holding any decode instance (same server, else same rack, else same
pod, else everywhere); among those, cache-load's decode score with cache-load's tuned load
weight decides. No weight of its own to tune."""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from scheduler.decision.context import Decision, DecisionContext
from scheduler.policies.base import Policy, register
from scheduler.policies.cache_load import CacheLoad, best_prefill, decode_score


@register
class TopologyFilter(Policy):
    name = "topology-filter"
    description = "cache-load restricted to the nearest tier holding a decode instance (Dynamo 'preferred')"
    inherits: ClassVar[dict[str, str]] = {"load_weight": CacheLoad.name}

    def choose(self, ctx: DecisionContext) -> Decision:
        p = best_prefill(ctx, ctx.turn)
        score = decode_score(ctx, self.inherited.get("load_weight", CacheLoad.default_weight))
        score = np.where(ctx.nearest_tier(p), score, np.inf)
        return Decision(p, int(score.argmin()))
