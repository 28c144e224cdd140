"""llm-d's static topology-affinity scorer on top of cache-load's scoring (reference section 4).

llm-d's router (PR #2299) scores a P/D decode candidate by the locality label it shares with the
prefill pod: host 1.0, rack 0.2, zone 0.05, region 0.02 on a fixed curve, combined by weight with
its other scorers; no bytes, no live congestion. Here the tiers map to those labels (same server =
host, same rack = rack, same pod = zone, cross-pod = region) and the score is subtracted, weighted,
from cache-load's decode score (lower is better), so topology affinity is the only difference to
cache-load. The affinity weight is tuned on the same grid budget and rule as every other policy;
the load weight is cache-load's tuned one (a baseline that gets cache-load's tuning for free)."""
from __future__ import annotations

from typing import ClassVar

from scheduler.decision.context import Decision, DecisionContext
from scheduler.policies.base import Policy, register
from scheduler.policies.cache_load import CacheLoad, best_prefill, decode_score

TIER_SCORES = (1.0, 0.2, 0.05, 0.02)
"""llm-d's topology-affinity curve (host, rack, zone, region), indexed by our tier 0..3."""


@register
class TopologyAffinity(Policy):
    name = "topology-affinity"
    description = "cache-load + llm-d's static tier score (host 1 / rack 0.2 / zone 0.05 / region 0.02, tuned weight)"
    tuned_param = "affinity_weight"
    default_weight = 1.0
    grid = "affinity_weights"
    inherits: ClassVar[dict[str, str]] = {"load_weight": CacheLoad.name}
    weight: float  # a tuned policy always has one (its default_weight)

    def choose(self, ctx: DecisionContext) -> Decision:
        p = best_prefill(ctx, ctx.turn)
        load_weight = self.inherited.get("load_weight", CacheLoad.default_weight)
        bonus = ctx.tier_weights(p, TIER_SCORES, self.weight)
        return Decision(p, int((decode_score(ctx, load_weight) - bonus).argmin()))
