"""Policy contract: pick (prefill, decode) for one request.

Every policy implements one method, :meth:`Policy.choose`, over a
:class:`~scheduler.cluster.DecisionContext` (the request, the time and lazily computed views of
the cluster: prefill queues and cache hits, decode cache hits, bytes to move, loads, and the
network cost oracle). Ties break deterministically (lowest index, or rotating with the decision count where
piling onto one instance would distort the result), so runs are reproducible.
A policy with a tunable load weight names it in ``tuned_param``; the experiment grid-searches it on
a held-out slice of the trace with the same budget for every tuned policy.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from scheduler.cluster import Decision, DecisionContext


class Policy(ABC):
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    tuned_param: ClassVar[str | None] = None
    needs_oracle: ClassVar[bool] = False

    def __init__(self, weight: float | None = None, seed: int = 0) -> None:
        self.weight = weight
        self.turn = 0  # decisions made so far (for round-robin tie-breaking)

    @abstractmethod
    def choose(self, ctx: DecisionContext) -> Decision:
        """Return the chosen prefill and decode instance (indices into the cluster's id arrays)."""

    def params(self) -> dict:
        return {self.tuned_param: self.weight} if self.tuned_param else {}
