"""Round-robin over prefill and decode instances independently (the paper's first baseline).

Each list is cycled in registration order, which in a real deployment carries no topology
information; the order is a seeded permutation so that the two cycles do not line up with the
fat-tree's numbering by accident (with the default mixed placement, cycling both lists in GPU
order would pair every prefill with its same-server decode neighbour: a hidden topology oracle)."""
from __future__ import annotations

import numpy as np

from scheduler.decision.context import Decision, DecisionContext
from scheduler.policies.base import Policy, register


@register
class RoundRobin(Policy):
    name = "round-robin"
    description = "cycle through prefill and decode instances; ignores load, caches and network"

    def __init__(self, weight: float | None = None, seed: int = 0, **kwargs) -> None:
        super().__init__(weight, seed, **kwargs)
        self._seed = seed
        self._order: tuple[np.ndarray, np.ndarray] | None = None

    def choose(self, ctx: DecisionContext) -> Decision:
        if self._order is None:
            rng = np.random.default_rng(self._seed)
            self._order = (rng.permutation(ctx.n_prefill), rng.permutation(ctx.n_decode))
        i = ctx.turn - 1  # this run's decisions so far
        p_order, d_order = self._order
        return Decision(int(p_order[i % p_order.size]), int(d_order[i % d_order.size]))
