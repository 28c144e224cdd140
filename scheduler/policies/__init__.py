"""The policy registry, resolved by name from the CLI.

Every module of this package is imported here, so a policy is one file: a ``Policy`` subclass
decorated with :func:`~scheduler.policies.base.register` (see :mod:`scheduler.policies.base`).

A policy spec is ``NAME`` or, for a policy that consumes the network cost oracle, ``NAME:ORACLE``
(``netkv:static``, ``netkv:perfect``, ...): the same decision rule with another kind of network
information, which is how the ablations isolate what live telemetry buys.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

from scheduler.oracle import ORACLES
from scheduler.policies.base import REGISTRY, Policy, register

BUILTIN_ORDER = ("round_robin", "least_loaded", "cache_load", "topology_filter", "topology_affinity", "netkv")
"""Modules imported first, so listings name the built-ins from the simplest to NetKV."""
for _name in BUILTIN_ORDER + tuple(sorted(m.name for m in pkgutil.iter_modules(__path__))):
    if _name != "base":
        importlib.import_module(f"{__name__}.{_name}")

__all__ = ["DEFAULT_POLICIES", "REGISTRY", "TARGET", "Policy", "PolicySpec", "UnknownPolicyError", "parse_spec",
           "register", "resolve"]
DEFAULT_POLICIES = ("round-robin", "least-loaded", "cache-load", "topology-affinity", "netkv:static", "netkv",
                    "netkv:perfect")
"""What ``simulate`` compares by default: the field's baselines, and NetKV with static topology,
live telemetry and perfect information (the ablation)."""
TARGET = "netkv"
"""The policy every other one is compared against."""


class UnknownPolicyError(ValueError):
    pass


@dataclass(frozen=True)
class PolicySpec:
    """One policy of an experiment: its class and, for oracle consumers, the oracle it uses
    (None: the experiment's ``oracle.kind``)."""

    cls: type[Policy]
    oracle: str | None = None

    @property
    def name(self) -> str:
        return f"{self.cls.name}:{self.oracle}" if self.oracle else self.cls.name

    @property
    def tuned_param(self) -> str | None:
        return self.cls.tuned_param

    def make(self, weight: float | None = None, seed: int = 0, default_oracle: str = "telemetry",
             **inherited: float) -> Policy:
        return self.cls(weight=weight, seed=seed, name=self.name,
                        oracle_kind=self.oracle or default_oracle, **inherited)


def parse_spec(item: str) -> PolicySpec:
    name, sep, oracle = item.strip().partition(":")
    if name not in REGISTRY:
        raise UnknownPolicyError(f"unknown policy {name!r} in --policies (known: {', '.join(REGISTRY)}; "
                                 f"oracle consumers also as NAME:ORACLE, e.g. netkv:static)")
    cls = REGISTRY[name]
    if not sep:
        return PolicySpec(cls)
    if not cls.needs_oracle:
        raise UnknownPolicyError(f"policy {name!r} in --policies {item!r} does not use the network cost oracle, "
                                 f"so it takes no ':ORACLE' (oracle consumers: "
                                 f"{', '.join(n for n, c in REGISTRY.items() if c.needs_oracle)})")
    if oracle not in ORACLES:
        raise UnknownPolicyError(f"unknown oracle {oracle!r} in --policies {item!r} (known: {', '.join(ORACLES)})")
    return PolicySpec(cls, oracle)


def resolve(names: str | list[str]) -> list[PolicySpec]:
    """Policy specs for a comma-separated list (or list) of names; errors list the known names."""
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    if not items:
        raise UnknownPolicyError("--policies is empty (known: " + ", ".join(REGISTRY) + ")")
    out: list[PolicySpec] = []
    for n in items:
        spec = parse_spec(n)
        if spec.name not in [o.name for o in out]:
            out.append(spec)
    return out
