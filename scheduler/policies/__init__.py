"""The policy registry, resolved by name from the CLI.

Every module of this package is imported here, so a policy is one file: a ``Policy`` subclass
decorated with :func:`~scheduler.policies.base.register` (see :mod:`scheduler.policies.base`).

A policy spec is ``NAME`` or, for a policy that consumes the network cost oracle, ``NAME:ORACLE``
(``netkv:static``, ``netkv:perfect``, ...): the same decision rule with another kind of network
information, which is how the ablations isolate what live telemetry buys.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path

from scheduler.decision.oracle import ORACLES
from scheduler.policies.base import REGISTRY, Policy, register

BUILTIN_ORDER = ("round_robin", "least_loaded", "cache_load", "topology_filter", "topology_affinity", "netkv")
"""Modules imported first, so listings name the built-ins from the simplest to NetKV."""
for _name in BUILTIN_ORDER + tuple(sorted(m.name for m in pkgutil.iter_modules(__path__))):
    if _name != "base":
        importlib.import_module(f"{__name__}.{_name}")

__all__ = ["DEFAULT_POLICIES", "REGISTRY", "TARGET", "Policy", "PolicyFile", "PolicySpec", "UnknownPolicyError",
           "load_policy_file", "parse_spec", "register", "resolve"]
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


@dataclass(frozen=True)
class PolicyFile:
    """A policy file loaded with ``--policy-module``: where it is, its text, what it registered."""

    path: str
    text: str
    policies: tuple[str, ...]
    module: str = ""  # its name in sys.modules

    def describe(self) -> dict:
        """For ``summary.json`` (``config.policy_modules``)."""
        return {"path": self.path, "sha256": hashlib.sha256(self.text.encode()).hexdigest(),
                "policies": list(self.policies)}


_LOADED: dict[str, PolicyFile] = {}


def load_policy_file(path: str | Path) -> PolicyFile:
    """Import a Python file of policies: ``FILE`` registers what its ``@register`` decorators do,
    ``FILE:CLASS`` that class (registered here if the file does not; ``--policy-module``). The
    class must keep the policy contract (a :class:`Policy` subclass with a name and ``choose``,
    a grid if it tunes a weight). Loading the same file twice imports it once. Errors name the
    file (and the line of a syntax error): a missing file, one that fails to import, a class that
    is missing or breaks the contract, a file that registers no new policy."""
    where = f"--policy-module {path}"
    file_part, sep, cls_name = str(path).rpartition(":")
    if not (sep and file_part and cls_name.isidentifier()):
        file_part, cls_name = str(path), ""
    loaded = _import_file(Path(file_part).expanduser(), where)
    if not cls_name:
        if not loaded.policies:
            raise UnknownPolicyError(f"{where}: registers no new policy (decorate a Policy subclass with "
                                     f"@register from scheduler.policies, or name the class: FILE:CLASS; "
                                     f"docs/EXTENDING.md)")
        return loaded
    cls = getattr(sys.modules[loaded.module], cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise UnknownPolicyError(f"{where}: the file defines no Policy subclass {cls_name!r}")
    if inspect.isabstract(cls):
        raise UnknownPolicyError(f"{where}: {cls_name} does not implement choose(ctx) (the policy contract: "
                                 f"scheduler/policies/base.py)")
    if REGISTRY.get(cls.name) is not cls:
        try:
            register(cls)
        except ValueError as exc:
            raise UnknownPolicyError(f"{where}: {exc}") from None
    return PolicyFile(loaded.path, loaded.text, (cls.name,), loaded.module)


def _import_file(p: Path, where: str) -> PolicyFile:
    """Import ``p`` once as a module of its own; the policies its import registered."""
    if not p.is_file():
        raise UnknownPolicyError(f"{where}: no such file")
    key = str(p.resolve())
    if key in _LOADED:
        return _LOADED[key]
    text = p.read_text(encoding="utf-8", errors="replace")
    before = set(REGISTRY)
    name = f"netkv_policy_file_{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise UnknownPolicyError(f"{where}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # importable by name: process pools pickle its classes by reference
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        for n in set(REGISTRY) - before:
            REGISTRY.pop(n)
        if isinstance(exc, SyntaxError):
            raise UnknownPolicyError(f"{where}: line {exc.lineno}: {exc.msg}") from None
        if not isinstance(exc, Exception):  # Ctrl-C, SystemExit: not the file's error to report
            raise
        raise UnknownPolicyError(f"{where}: importing it failed: {type(exc).__name__}: {exc}") from None
    _LOADED[key] = loaded = PolicyFile(key, text, tuple(n for n in REGISTRY if n not in before), name)
    return loaded
