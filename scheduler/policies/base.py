"""Policy contract: pick (prefill, decode) for one request.

Every policy implements one method, :meth:`Policy.choose`, over a
:class:`~scheduler.cluster.DecisionContext` (the request, the time and lazily computed views of
the cluster: prefill queues and cache hits, decode cache hits, bytes to move, loads, and the
network cost oracle). Ties break deterministically (lowest index, or rotating with the decision count where
piling onto one instance would distort the result), so runs are reproducible.
A policy with a tunable load weight names it in ``tuned_param`` (default ``default_weight``, grid
``grid`` = the ``tuning`` constant holding it); the experiment grid-searches it on a held-out slice
of the trace with the same budget and rule for every tuned policy. ``inherits`` names parameters
taken from another policy's tuned weight (topology-affinity runs on cache-load's tuned scoring).
An instance carries its display ``name`` (``netkv:static``: the policy with another oracle) and,
for policies that consume the network cost oracle, its ``oracle_kind``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from scheduler.cluster import Decision, DecisionContext


class Policy(ABC):
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    tuned_param: ClassVar[str | None] = None
    default_weight: ClassVar[float | None] = None
    grid: ClassVar[str | None] = None  # name of the tuning constant holding the weight grid
    inherits: ClassVar[dict[str, str]] = {}  # parameter -> policy whose tuned weight it takes
    needs_oracle: ClassVar[bool] = False

    def __init__(self, weight: float | None = None, seed: int = 0, name: str | None = None,
                 oracle_kind: str | None = None, **inherited: float) -> None:
        unknown = set(inherited) - set(self.inherits)
        if unknown:
            raise TypeError(f"{type(self).__name__} takes no parameter(s) {sorted(unknown)}")
        self.weight = self.default_weight if weight is None else float(weight)
        self.inherited = {k: float(v) for k, v in inherited.items() if v is not None}
        self.name = name or type(self).name  # type: ignore[misc]  # display name of this instance
        self.oracle_kind = oracle_kind if self.needs_oracle else None
        self.turn = 0  # decisions made so far (for round-robin tie-breaking)

    @abstractmethod
    def choose(self, ctx: DecisionContext) -> Decision:
        """Return the chosen prefill and decode instance (indices into the cluster's id arrays)."""

    def params(self) -> dict:
        """The parameters this instance decides with (defaults filled in), for summary.json."""
        out = {self.tuned_param: self.weight} if self.tuned_param else {}
        out.update(self.inherited)
        if self.oracle_kind:
            out["oracle"] = self.oracle_kind
        return out
