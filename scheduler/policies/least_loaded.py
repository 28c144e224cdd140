"""Least-loaded (DistServe-like): shortest prefill queue, least-loaded decode instance."""
from __future__ import annotations

import numpy as np

from scheduler.decision.context import Decision, DecisionContext
from scheduler.policies.base import Policy, register


@register
class LeastLoaded(Policy):
    name = "least-loaded"
    description = "shortest prefill queue (seconds of queued work), least-loaded decode (assigned tokens)"

    def choose(self, ctx: DecisionContext) -> Decision:
        return Decision(int(np.argmin(ctx.prefill_queue_s)), int(np.argmin(ctx.decode_load)))
