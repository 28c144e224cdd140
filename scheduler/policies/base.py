"""Policy contract: pick (prefill, decode) for one request.

Every policy implements one method, :meth:`Policy.choose`, over a
:class:`~scheduler.decision.context.DecisionContext` (the request, the time, the decision's index
``ctx.turn`` and lazily computed views of the cluster: prefill queues and cache hits, decode cache
hits, bytes to move, loads, and the network cost oracle). Ties break deterministically (lowest
index, or rotating with ``ctx.turn`` where piling onto one instance would distort the result), so
runs are reproducible.

A policy is one file: a ``Policy`` subclass decorated with :func:`register` in a module of
``scheduler/policies/`` (every module there is imported by the package) or anywhere else imported
before the run. A tunable one names its weight in ``tuned_param``, its default in
``default_weight`` and its grid in ``grid``: the values themselves, or the name of a ``tuning``
constant holding them (the built-ins, so ``--set tuning.netkv_weights_s=...`` overrides theirs);
the experiment grid-searches it on a held-out slice of the trace with the same budget and rule for
every tuned policy. ``inherits`` names parameters taken from another policy's tuned weight
(topology-affinity runs on cache-load's tuned scoring). An instance carries its display ``name``
(``netkv:static``: the policy with another oracle) and, for policies that consume the network cost
oracle, its ``oracle_kind``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, TypeVar

from scheduler.decision.context import Decision, DecisionContext
from scheduler.model.config import ConfigError, TuningConfig

REGISTRY: dict[str, type[Policy]] = {}
"""Every registered policy class by its ``name`` (what ``--policies`` resolves)."""

P = TypeVar("P", bound=type["Policy"])


def register(cls: P) -> P:
    """Class decorator: make ``cls`` resolvable by its ``name`` (refuses a taken or empty name)."""
    if not cls.name or ":" in cls.name or "," in cls.name:
        raise ValueError(f"policy class {cls.__name__} needs a name without ':' or ',' (got {cls.name!r})")
    other = REGISTRY.get(cls.name)
    if other is not None and other is not cls:
        raise ValueError(f"policy name {cls.name!r} of {cls.__module__}.{cls.__qualname__} is taken by "
                         f"{other.__module__}.{other.__qualname__}")
    if cls.tuned_param is not None and cls.grid is None:
        raise ValueError(f"policy {cls.name!r} tunes {cls.tuned_param!r} but gives no grid")
    REGISTRY[cls.name] = cls
    return cls


class Policy(ABC):
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    tuned_param: ClassVar[str | None] = None
    default_weight: ClassVar[float | None] = None
    grid: ClassVar[tuple[float, ...] | str | None] = None
    """The weight grid: its values, or the name of the ``tuning`` constant holding them."""
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

    @classmethod
    def grid_values(cls, tuning: TuningConfig) -> tuple[float, ...]:
        """The weight grid this experiment tunes ``tuned_param`` over."""
        if isinstance(cls.grid, str):
            if not hasattr(tuning, cls.grid):
                raise ConfigError(f"policy {cls.name!r}: grid names tuning.{cls.grid}, which is not a constant")
            return tuple(getattr(tuning, cls.grid))
        return tuple(cls.grid or ())

    @abstractmethod
    def choose(self, ctx: DecisionContext) -> Decision:
        """Return the chosen prefill and decode instance (indices into the cluster's id arrays)."""

    def params(self) -> dict:
        """The parameters this instance decides with (defaults filled in), for summary.json."""
        out: dict[str, float | str | None] = {self.tuned_param: self.weight} if self.tuned_param else {}
        out.update(self.inherited)
        if self.oracle_kind:
            out["oracle"] = self.oracle_kind
        return out
