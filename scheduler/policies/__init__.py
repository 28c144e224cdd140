"""Explicit policy registry, resolved by name from the CLI."""
from __future__ import annotations

from scheduler.policies.base import Policy
from scheduler.policies.cache_load import CacheLoad
from scheduler.policies.least_loaded import LeastLoaded
from scheduler.policies.netkv import NetKV
from scheduler.policies.round_robin import RoundRobin

REGISTRY: dict[str, type[Policy]] = {cls.name: cls for cls in (RoundRobin, LeastLoaded, CacheLoad, NetKV)}
DEFAULT_POLICIES = ("round-robin", "least-loaded", "cache-load", "netkv")


class UnknownPolicyError(ValueError):
    pass


def resolve(names: str | list[str]) -> list[type[Policy]]:
    """Policy classes for a comma-separated list (or list) of names; errors list the known names."""
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    if not items:
        raise UnknownPolicyError("--policies is empty (known: " + ", ".join(REGISTRY) + ")")
    out = []
    for n in items:
        if n not in REGISTRY:
            raise UnknownPolicyError(f"unknown policy {n!r} in --policies (known: {', '.join(REGISTRY)})")
        if REGISTRY[n] not in out:
            out.append(REGISTRY[n])
    return out
