"""The oracle service's one adapter to the scheduler: topology, roles, names and pricing.

Everything the HTTP service needs from ``scheduler.*`` and ``topology.*`` is imported here and
nowhere else in :mod:`scheduler.service`, so a change of those internals is adjusted in one file.

:class:`Pricer` builds the fat-tree and the instance roles of an experiment config (the same
``--set section.field=value`` overrides as ``netkv simulate``), resolves instance names (GPU host
names such as ``p0t1s0g2`` or worker addresses ``ip[:port]``, the addresses of
:mod:`topology.wiring`) and prices transfers with the in-process ``inflight`` oracle. That oracle
answers from the newest telemetry snapshot the service holds (static pricing when it holds none)
and counts the reservations the service holds as its committed transfers, so a reserved transfer
makes later transfers sharing its links dearer, exactly as the scheduler's own commitments do.
"""
from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import cast

import numpy as np

from scheduler.decision.oracle import InflightOracle, OracleQuery, make_oracle
from scheduler.decision.telemetry import TelemetrySnapshot, snapshot_from_json
from scheduler.model.cluster import assign_roles, instance_leaders
from scheduler.model.config import MODEL_PRESETS, ConfigError, ExperimentConfig, build_config
from topology.emulated import kind_rates_mbit
from topology.model import TIER_NAMES, FatTree, TopologyError
from topology.wiring import nic_ip, nvlink_ip

__all__ = [
    "MODEL_PRESETS", "ConfigError", "InstanceError", "Priced", "Pricer", "TelemetrySnapshot",
    "TopologyError", "build_config", "snapshot_from_json",
]

SETUP_S = 30e-6
"""Per-transfer setup latency the oracle adds (the simulator's and ``netkv bench``'s value)."""
ROUTE_CACHE_SIZE = 4096
"""Most (prefill, candidate set, down links) routes kept; past it the cache starts over, so a
long-lived service asked about many candidate sets keeps its memory bounded."""


class InstanceError(ValueError):
    """A name that is not an instance of the role asked for; ``field`` is where the request put it."""

    def __init__(self, field: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Priced:
    """Prices of one query: seconds, tier and bottleneck link name (None: nothing moves) per candidate."""

    seconds: list[float]
    tiers: list[int]
    bottleneck: list[str | None]


@dataclass(frozen=True)
class _Route:
    """One (prefill, candidate set): its key, candidate array (read-only), candidate arrays per
    tensor-parallel rank, tiers, and the paths per rank by down-link set (filled on demand)."""

    key: tuple
    dsts: np.ndarray
    rank_dsts: list[np.ndarray]
    tiers: list[int]
    paths: dict[frozenset[int], list[np.ndarray]]


class _Holder:
    """The oracle's snapshot source: whatever snapshot the service holds now (None: static)."""

    def __init__(self) -> None:
        self.snapshot: TelemetrySnapshot | None = None

    def at(self, time_s: float) -> TelemetrySnapshot | None:
        return self.snapshot


class Pricer:
    """Prices KV transfers between the instances of one experiment config (see the module doc).

    Not thread-safe: the service calls it from one event loop. Times are unix seconds, the clock
    of the controller's telemetry and of Prometheus samples."""

    def __init__(self, cfg: ExperimentConfig, capacity_scale: float = 1.0) -> None:
        if not capacity_scale > 0:
            raise ConfigError(f"capacity scale must be > 0, got {capacity_scale}")
        self.cfg = cfg
        self.tree = tree = FatTree(cfg.topology)
        self.tp = cfg.cluster.tp
        roles = assign_roles(tree, cfg.cluster.placement, cfg.cluster.prefill_fraction,
                             cfg.cluster.reserved_servers_per_pod, self.tp)
        self.prefill = [int(g) for g in instance_leaders(roles.prefill, self.tp)]
        self.decode = [int(g) for g in instance_leaders(roles.decode, self.tp)]
        self._role = dict.fromkeys(self.prefill, "prefill") | dict.fromkeys(self.decode, "decode")
        self._names: dict[str, int] = {}
        for g in range(tree.n_gpus):
            self._names[tree.gpu_name(g)] = g
            self._names[nic_ip(tree, g)] = g
            self._names[nvlink_ip(tree, g)] = g
        rates = kind_rates_mbit(tree, capacity_scale)
        self.nominal_bps = {tree.link_name(i): rates[tree.link_kind(i)] * 1e6 for i in range(tree.n_links)}
        """Capacity in bits/s each link has when up (scaled for an emulated fabric)."""
        self.link_names = [tree.link_name(i) for i in range(tree.n_links)]
        self._by_role: dict[str, dict[str, int]] = {"prefill": {}, "decode": {}}
        for name, g in self._names.items():  # the fast path of resolve(): a valid name of that role
            if g in self._role:
                self._by_role[self._role[g]][name] = g
        self._routes: dict[tuple, _Route] = {}
        self._bottleneck_for: tuple[np.ndarray, frozenset[int]] | None = None  # (inv, down) of _bottleneck_memo
        self._bottleneck_memo: dict[tuple, list[str | None]] = {}
        self._holder = _Holder()
        oracle = make_oracle("inflight", tree, self._holder, 0.0, cfg.oracle.min_available_fraction, SETUP_S,
                             saturated_link_flows=cfg.oracle.saturated_link_flows)
        assert isinstance(oracle, InflightOracle)
        self.oracle = oracle
        self._next_key = 0
        self._reserved: dict[int, tuple[int, np.ndarray, float, float]] = {}  # key -> (src, dsts, start, end)

    # ------------------------------------------------------------------ names
    def resolve(self, name: str, role: str, field: tuple[str | int, ...]) -> int:
        """GPU index of instance ``name`` (host name, ``ip`` or ``ip:port``) whose role is ``role``."""
        g = self._by_role[role].get(name)
        if g is not None:
            return g
        key = name
        host, sep, port = name.rpartition(":")
        if sep and port.isdigit():
            key = host
        g = self._names.get(key)
        if g is None:
            shape = "a GPU host name such as p0t1s0g2 or a worker address such as 10.0.0.1:9470"
            try:
                ipaddress.ip_address(key)
                why = "no GPU of this fabric has that address"
            except ValueError:
                why = f"expected {shape}"
            raise InstanceError(field, f"unknown instance {name!r}: {why}")
        if self._role.get(g) != role:
            what = self._role.get(g, "serving nothing (reserved) or not an instance leader")
            raise InstanceError(field, f"{name!r} ({self.tree.gpu_name(g)}) is not a {role} instance "
                                       f"(its role: {what})")
        return g

    def resolve_all(self, names: list[str], role: str, field: str) -> list[int]:
        """GPU index of each of ``names`` (as :meth:`resolve`; an error names ``(field, i)``)."""
        known = self._by_role[role]
        try:
            return [known[name] for name in names]
        except KeyError:
            return [self.resolve(name, role, (field, i)) for i, name in enumerate(names)]

    def kv_bytes(self, tokens: list[int], model: str | None, field: tuple[str | int, ...]) -> list[int]:
        """KV bytes of ``tokens`` of ``model`` (default: the config's model)."""
        if model is None:
            per = self.cfg.model.kv_bytes_per_token
        elif model in MODEL_PRESETS:
            per = MODEL_PRESETS[model].kv_bytes_per_token
        else:
            raise InstanceError(field, f"unknown model {model!r} (presets: {', '.join(MODEL_PRESETS)})")
        return [int(t) * per for t in tokens]

    # ------------------------------------------------------------------ telemetry
    def set_snapshot(self, snap: TelemetrySnapshot | None) -> None:
        """The snapshot later prices answer from (None: static pricing on nominal capacities)."""
        self._holder.snapshot = snap

    def snapshot_from_payload(self, payload: dict) -> TelemetrySnapshot:
        """A controller REST telemetry payload (DESIGN.md schema) as a snapshot of this fabric."""
        return snapshot_from_json(self.tree, payload, self.nominal_bps)

    def snapshot_from_links(self, time_s: float, rates: dict[str, float], capacity: dict[str, float],
                            up: dict[str, bool]) -> TelemetrySnapshot:
        """A snapshot from per link transmit rates and capacities (bytes/s) and up flags, keyed by
        link name (links absent: idle at nominal capacity). Raises TopologyError on unknown names."""
        n = self.tree.n_links
        util = np.zeros(n + 1)
        factor = np.ones(n + 1)
        index = self.tree.link_index
        for name in set(rates) | set(capacity) | set(up):
            u, _, v = name.partition("->")
            i = index.get((u, v))
            if i is None:
                raise TopologyError(f"unknown link {name!r} (names look like 'p0t0->p0a1')")
            cap = capacity.get(name, self.nominal_bps[name] / 8.0)
            nominal = self.nominal_bps[name] / 8.0
            factor[i] = 0.0 if not up.get(name, True) else min(1.0, max(0.0, cap / nominal))
            rate = rates.get(name, 0.0)
            if cap > 0 and math.isfinite(rate):
                util[i] = min(1.0, max(0.0, rate / cap))
        return TelemetrySnapshot(time_s, util, factor)

    # ------------------------------------------------------------------ pricing
    def price(self, src: int, dsts: list[int], nbytes: list[int], now: float, start: float) -> Priced:
        """Seconds to move ``nbytes[i]`` from ``src`` to ``dsts[i]`` starting at ``start``, with tiers
        and the bottleneck link per candidate (the hop with the least bandwidth left for it)."""
        route = self._route(src, dsts)
        b = np.asarray(nbytes, dtype=float)
        self._expire(now)
        query = OracleQuery(src, route.dsts, b, now, start=start)
        if self.tp == 1:
            seconds = self.oracle.cost(query)
        else:
            seconds = self.oracle.striped_cost(query, route.rank_dsts)
        links = self._bottlenecks(route, start)
        return Priced(seconds.tolist(), route.tiers,
                      [None if nb <= 0 else link for link, nb in zip(links, nbytes)])

    def _route(self, src: int, dsts: list[int]) -> _Route:
        """The candidate array, its per-rank arrays and tiers of one (prefill, candidate set): built
        once, and the same array objects each time, so the oracle's own per-source tables hit on
        identity."""
        key = (src, tuple(dsts))
        route = self._routes.get(key)
        if route is None:
            if len(self._routes) >= ROUTE_CACHE_SIZE:
                self._routes.clear()
            d = np.asarray(dsts, dtype=np.int64)
            d.flags.writeable = False
            route = self._routes[key] = _Route(key, d, [d + r for r in range(self.tp)],
                                               self.tree.tiers(src, d).tolist(), {})
        return route

    def _bottlenecks(self, route: _Route, start: float) -> list[str | None]:
        """Per candidate the link with the most seconds per byte on its path (over the ranks of a
        striped transfer), the link share of the reservations moving at ``start`` counted.

        The routes depend on (prefill, candidates, down links) only and are kept in ``route``;
        without reservations moving at ``start`` the answer depends on the snapshot too, and is
        memoised until the snapshot (its seconds per byte and down set) changes."""
        snap = self._holder.snapshot
        inv, down = self.oracle.seconds_per_byte(snap)
        later = self.oracle.moving_at(start)
        if later:
            sharers = np.bincount(np.concatenate(later), minlength=inv.shape[0]).astype(float)
            sharers[-1] = 0.0
            return self._worst_links(route, inv * (1.0 + sharers), down)
        if self._bottleneck_for is None or self._bottleneck_for[0] is not inv or self._bottleneck_for[1] != down:
            self._bottleneck_for = (inv, down)
            self._bottleneck_memo = {}
        hit = self._bottleneck_memo.get(route.key)
        if hit is None:
            if len(self._bottleneck_memo) >= ROUTE_CACHE_SIZE:
                self._bottleneck_memo.clear()
            hit = self._bottleneck_memo[route.key] = self._worst_links(route, inv, down)
        return hit

    def _worst_links(self, route: _Route, inv: np.ndarray, down: frozenset[int]) -> list[str | None]:
        """Per candidate of ``route`` the name of its link with the largest ``inv`` (None: no link)."""
        paths = route.paths.get(down)
        if paths is None:
            if len(route.paths) >= 16:  # many failure sets: keep the route small
                route.paths.clear()
            src = route.key[0]
            paths = route.paths[down] = [self.tree.paths(src + r, route.dsts + r, down=down) for r in range(self.tp)]
        d = route.dsts
        best_inv = np.full(d.shape, -1.0)
        best_link = np.full(d.shape, self.tree.pad, dtype=np.int64)
        rows = np.arange(d.size)
        for rank_paths in paths:
            hop = inv[rank_paths].argmax(axis=1)
            links = rank_paths[rows, hop]
            worst = inv[links]
            better = worst > best_inv
            best_inv[better] = worst[better]
            best_link[better] = links[better]
        pad = self.tree.pad
        indices = cast(list[int], best_link.tolist())
        return [None if link == pad else self.link_names[link] for link in indices]

    # ------------------------------------------------------------------ reservations
    def reserve(self, src: int, dst: int, nbytes: int, start: float, end: float) -> int:
        """Hold a transfer of ``nbytes`` from ``src`` to ``dst`` over ``[start, end)`` as the oracle's
        committed transfer; returns its key."""
        key = self._next_key
        self._next_key += 1
        self.oracle.commit(src, dst, start, end, nbytes=float(nbytes), key=key, tp=self.tp)
        self._reserved[key] = (src, np.array([dst]), start, end)
        return key

    def release(self, key: int, now: float) -> bool:
        """End reservation ``key`` now; False when it is not held (unknown or expired)."""
        self._expire(now)
        if self._reserved.pop(key, None) is None:
            return False
        self.oracle.done(key, now)
        return True

    def held(self, now: float) -> int:
        """Reservations held at ``now``."""
        self._expire(now)
        return len(self._reserved)

    def _expire(self, now: float) -> None:
        for key in [k for k, v in self._reserved.items() if v[3] <= now]:
            del self._reserved[key]
            self.oracle.done(key, now)

    # ------------------------------------------------------------------ description
    def topology(self) -> dict:
        """Instances by host name and worker address, tiers, links and capacities."""
        tree = self.tree

        def entry(g: int) -> dict:
            return {"host": tree.gpu_name(g), "gpu": g, "nic_ip": nic_ip(tree, g),
                    "nvlink_ip": nvlink_ip(tree, g), "ranks": [tree.gpu_name(g + r) for r in range(self.tp)]}

        return {
            "gpus": tree.n_gpus,
            "tp": self.tp,
            "model": self.cfg.model.name,
            "kv_bytes_per_token": self.cfg.model.kv_bytes_per_token,
            "instances": {"prefill": [entry(g) for g in self.prefill], "decode": [entry(g) for g in self.decode]},
            "tiers": list(TIER_NAMES),
            "links": [{"name": self.link_names[i], "kind": tree.link_kind(i),
                       "capacity_bytes_per_second": float(tree.capacity[i]),
                       "nominal_bps": self.nominal_bps[self.link_names[i]]} for i in range(tree.n_links)],
        }


def load_pricer(overrides: list[str] | None = None, model: str = "llama-3-8b",
                capacity_scale: float = 1.0) -> Pricer:
    """A :class:`Pricer` for the experiment config of ``model`` with ``--set`` ``overrides``."""
    return Pricer(build_config(model, overrides=overrides), capacity_scale)
