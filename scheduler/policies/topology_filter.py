"""Dynamo's topology-domain constraint in its ``preferred`` mode (and llm-d's topology filter).

NVIDIA Dynamo's experimental topology-aware KV transfer lets workers publish their topology
domains and restricts the decode choice to the prefill worker's domain when a worker there exists
(``preferred``; ``required`` fails otherwise); llm-d's router has the equivalent filter. Here the
domain is the nearest tier holding any decode instance (same server, else same rack, else same
pod, else everywhere); among those, cache-load's decode score with cache-load's tuned load
weight decides. No weight of its own to tune."""
from __future__ import annotations

import numpy as np

from scheduler.model.cluster import Decision, DecisionContext
from scheduler.policies.base import Policy, register
from scheduler.policies.cache_load import CacheLoad, best_prefill, decode_score


@register
class TopologyFilter(Policy):
    name = "topology-filter"
    description = "cache-load restricted to the nearest tier holding a decode instance (Dynamo 'preferred')"
    inherits = {"load_weight": CacheLoad.name}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._domain: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # p -> (tiers, nearest-tier mask)

    def domain(self, ctx: DecisionContext, p: int) -> np.ndarray:
        """Mask of the decode candidates in the nearest tier from prefill instance ``p`` that
        holds any (static per cluster, memoised against the cluster's tier array)."""
        tiers = ctx.decode_tiers(p)
        hit = self._domain.get(p)
        if hit is None or hit[0] is not tiers:
            hit = self._domain[p] = (tiers, tiers == tiers.min())
        return hit[1]

    def choose(self, ctx: DecisionContext) -> Decision:
        p = best_prefill(ctx, ctx.turn)
        score = decode_score(ctx, self.inherited.get("load_weight", CacheLoad.default_weight))
        score = np.where(self.domain(ctx, p), score, np.inf)
        return Decision(p, int(score.argmin()))
