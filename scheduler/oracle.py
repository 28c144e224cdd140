"""The network cost oracle: what does moving B bytes from prefill p to each decode candidate cost now.

Contract (stated once, every implementation keeps it):
- ``cost(query)`` returns seconds, one value per candidate, aligned with ``query.dsts``;
- lower is better; values are >= 0; +inf means unreachable (a link on the path is down);
- more bytes or more congestion never cost less; on an idle fabric a higher tier is never cheaper;
- zero bytes cost nothing (no transfer is started), whatever the path.
Implementations are vectorised over candidates with numpy: O(|D|) per query.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple, Protocol

import numpy as np

from topology.model import FatTree


class OracleQuery(NamedTuple):
    """One question to the oracle (a NamedTuple: built on every decision, so it must be cheap)."""

    src: int  # prefill GPU index
    dsts: np.ndarray  # candidate decode GPU indices
    nbytes: np.ndarray  # bytes each candidate needs moved (depends on its cached prefix)
    now: float  # seconds since run start
    flow_key: int | None = None  # the transfer's flow key (only matters with ECMP routing)


class SnapshotSource(Protocol):
    """Where telemetry comes from: the simulator's sampler or the controller's REST client."""

    def at(self, time_s: float):  # -> TelemetrySnapshot | None
        ...


class NetworkOracle(ABC):
    name: str = "oracle"

    def __init__(self, tree: FatTree, setup_s: float = 30e-6) -> None:
        self.tree = tree
        self.setup_s = setup_s
        self._latency = tree.latency_s
        self._paths: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._inv_static: np.ndarray | None = None

    def paths(self, query: OracleQuery) -> tuple[np.ndarray, np.ndarray]:
        """(paths, latency + setup per candidate). Deterministic routing makes both static per
        (src, candidate set), so they are computed once and cached; ECMP paths depend on the flow."""
        if self.tree.config.routing != "dst":
            paths = self.tree.paths(query.src, query.dsts, query.flow_key)
            return paths, self._latency[paths].sum(axis=1) + self.setup_s
        hit = self._paths.get(query.src)
        # the candidate array is the cluster's decode list, the same object decision after
        # decision: identity is checked first, contents only when a caller passes another array
        if hit is None or (hit[0] is not query.dsts and not np.array_equal(hit[0], query.dsts)):
            paths = self.tree.paths(query.src, query.dsts)
            hit = self._paths[query.src] = (query.dsts, paths, self._latency[paths].sum(axis=1) + self.setup_s)
        return hit[1], hit[2]

    @abstractmethod
    def cost(self, query: OracleQuery) -> np.ndarray:
        """Seconds to move ``query.nbytes[i]`` from ``query.src`` to ``query.dsts[i]`` now."""

    @staticmethod
    def _finish(latency: np.ndarray, nbytes: np.ndarray, inv_bottleneck: np.ndarray) -> np.ndarray:
        """latency + bytes x (1 / bottleneck bandwidth); zero bytes cost 0 even on a dead path."""
        moving = nbytes > 0
        t = np.zeros(nbytes.shape)
        np.multiply(nbytes, inv_bottleneck, out=t, where=moving)  # skips 0 x inf on dead paths
        np.add(t, latency, out=t, where=moving)
        return t

    @staticmethod
    def _inverse(avail: np.ndarray) -> np.ndarray:
        """Seconds per byte of each link (+inf where nothing gets through)."""
        inv = np.full(avail.shape, np.inf)
        np.divide(1.0, avail, out=inv, where=avail > 0)
        return inv


class StaticTierOracle(NetworkOracle):
    """Topology only: latency + bytes / nominal bottleneck capacity. No live congestion."""

    name = "static"

    def cost(self, query: OracleQuery) -> np.ndarray:
        paths, latency = self.paths(query)
        if self._inv_static is None:
            self._inv_static = self._inverse(self.tree.capacity)
        return self._finish(latency, np.asarray(query.nbytes, dtype=float), self._inv_static[paths].max(axis=1))


class TelemetryOracle(NetworkOracle):
    """Latency per hop + bytes / available bandwidth of the path bottleneck from a utilisation
    snapshot. Available = capacity x capacity_factor x max(1 - utilisation, min_available_fraction):
    a new flow on a saturated link still receives a fair share against the flows already there.
    Without any snapshot yet it answers like :class:`StaticTierOracle`."""

    name = "telemetry"

    def __init__(self, tree: FatTree, source: SnapshotSource, min_available_fraction: float = 0.1,
                 setup_s: float = 30e-6) -> None:
        super().__init__(tree, setup_s)
        self.source = source
        self.floor = min_available_fraction
        self._inv_for = None
        self._inv: np.ndarray | None = None

    def snapshot_time(self, now: float) -> float:
        return now

    def available(self, snap) -> np.ndarray:
        """Available bytes/s per link under ``snap``."""
        if snap is None:
            return self.tree.capacity
        free = np.maximum(1.0 - np.clip(snap.utilisation, 0.0, 1.0), self.floor)
        return self.tree.capacity * snap.capacity_factor * free

    def seconds_per_byte(self, snap) -> np.ndarray:
        """1 / available bandwidth per link, computed once per snapshot."""
        if self._inv_for is not snap or self._inv is None:
            self._inv = self._inverse(self.available(snap))
            self._inv_for = snap
        return self._inv

    def cost(self, query: OracleQuery) -> np.ndarray:
        paths, latency = self.paths(query)
        inv = self.seconds_per_byte(self.source.at(self.snapshot_time(query.now)))
        return self._finish(latency, np.asarray(query.nbytes, dtype=float), inv[paths].max(axis=1))


class StaleTelemetryOracle(TelemetryOracle):
    """A :class:`TelemetryOracle` that answers from the snapshot of ``now - staleness_s``."""

    name = "stale-telemetry"

    def __init__(self, tree: FatTree, source: SnapshotSource, staleness_s: float,
                 min_available_fraction: float = 0.1, setup_s: float = 30e-6) -> None:
        super().__init__(tree, source, min_available_fraction, setup_s)
        if staleness_s < 0:
            raise ValueError(f"staleness_s must be >= 0, got {staleness_s}")
        self.staleness_s = staleness_s

    def snapshot_time(self, now: float) -> float:
        return now - self.staleness_s


def make_oracle(kind: str, tree: FatTree, source: SnapshotSource | None, staleness_s: float,
                min_available_fraction: float, setup_s: float) -> NetworkOracle:
    """Oracle by name: ``static`` or ``telemetry`` (with the staleness wrapper when staleness > 0)."""
    if kind == "static" or source is None:
        return StaticTierOracle(tree, setup_s)
    if kind != "telemetry":
        raise ValueError(f"unknown oracle {kind!r} (known: static, telemetry)")
    if staleness_s > 0:
        return StaleTelemetryOracle(tree, source, staleness_s, min_available_fraction, setup_s)
    return TelemetryOracle(tree, source, min_available_fraction, setup_s)
