"""The network cost oracle: what does moving B bytes from prefill p to each decode candidate cost now.

Contract (stated once, every implementation keeps it):
- ``cost(query)`` returns seconds, one value per candidate, aligned with ``query.dsts``;
- lower is better; values are >= 0; +inf means unreachable (a link on the path is down);
- more bytes or more congestion never cost less; on an idle fat-tree (same-server traffic on NVLink)
  a higher tier is never cheaper. On a rail fabric tiers are placement labels that do not order
  cost (``RailFabric.rail_tiers`` do): the oracle prices the route, whatever its label;
- zero bytes cost nothing (no transfer is started), whatever the path.
Implementations are vectorised over candidates with numpy (O(|D|) per query); one class a kind.

Kinds (:data:`ORACLES`, built by :func:`make_oracle`), from least to most information:
- ``static``: topology only (nominal capacities and routes), what a static scorer knows.
- ``telemetry``: the controller's port-counter snapshot (with ``oracle.staleness_s``): available
  bandwidth per link, links reported down (priced on the routes the controller moves to).
- ``inflight``: ``telemetry`` plus the KV transfers this scheduler has committed that the snapshot
  cannot show yet (decided after it was taken): each shares its links with the new transfer.
- ``perfect``: the simulator's true state at the decision instant (routes, capacities, max-min
  rates): no router has it; it bounds what better telemetry could buy.
- ``predictive``: ``inflight``'s information priced from the transfer's expected start to its
  finish against the committed transfers' expected windows.

Saturated links (live kinds): :func:`free_fraction` gives a new flow ``max(capacity - load,
capacity / (n + 1))``, a fair share against ``n = oracle.saturated_link_flows`` elastic flows.

Cost tables: every built-in oracle prices a query as ``latency + bytes x inverse bottleneck
bandwidth`` per candidate; :meth:`NetworkOracle.table` returns those two vectors. Under
deterministic routing they depend on the source, the candidates and the oracle's state, not on
the bytes, so each source's table is built once per state and reused, bit for bit.
"""
from __future__ import annotations

import bisect
import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from topology.model import FatTree

SATURATED_LINK_FLOWS = 6.0
"""Default of ``oracle.saturated_link_flows``: the flows a telemetry oracle assumes share a busy
link (see :func:`free_fraction`; scheduler/model/config.py gives the reasoning for the value)."""


def free_fraction(load_fraction: np.ndarray, flows: float, floor: float) -> np.ndarray:
    """Fraction of each link's capacity a new flow gets when the link carries ``load_fraction`` of
    its capacity in at most ``flows`` other flows: ``max(1 - load, 1 / (flows + 1), floor)``.

    Why: under max-min sharing an entrant gets the capacity the flows leave unused, or its fair
    share against those that use more than it, whichever is larger; with ``flows`` flows that
    share is at least ``1 / (flows + 1)`` (exactly, when they are equal and all saturate the
    link). The price is continuous in the load, unchanged below ``flows / (flows + 1)`` of the
    capacity, and a saturated link costs ``flows + 1`` times the idle price instead of ``1 /
    floor``; ``flows = 1 / floor - 1`` gives the floor alone."""
    free = np.maximum(1.0 - np.clip(load_fraction, 0.0, 1.0), 1.0 / (flows + 1.0))
    return np.maximum(free, floor)


class UnknownOracleError(ValueError):
    """An oracle kind that does not exist, or one a backend cannot provide; the message says which."""


class OracleQuery(NamedTuple):
    """One question to the oracle (a NamedTuple: built on every decision, so it must be cheap)."""

    src: int  # prefill GPU index
    dsts: np.ndarray  # candidate decode GPU indices
    nbytes: np.ndarray | None  # bytes each candidate needs moved (None: only a table is asked for)
    now: float  # seconds since run start
    flow_key: int | None = None  # the transfer's flow key (only matters with ECMP routing)
    start: float | None = None  # when the transfer is expected to start (default: now)


class SnapshotSource(Protocol):
    """Where telemetry comes from: the simulator's sampler or the controller's REST client."""

    def at(self, time_s: float):  # -> TelemetrySnapshot | None
        ...


class GroundTruth(Protocol):
    """The simulated network's true state (the ``perfect`` oracle's source)."""

    def routing_down(self) -> frozenset[int]:
        """Links the routing currently avoids."""
        ...

    def entrant_share(self) -> np.ndarray:
        """Bytes/s a new flow would get on every link now (length n_links + 1, padding +inf)."""
        ...


class NetworkOracle(ABC):
    name: str = "oracle"
    tracks_commitments: bool = False
    """True when :meth:`commit` matters (the backend then reports every committed transfer)."""

    def __init__(self, tree: FatTree, setup_s: float = 30e-6) -> None:
        self.tree = tree
        self.setup_s = setup_s
        self._latency = tree.latency_s
        self._paths: dict[tuple[int, frozenset[int]], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._inv_static: np.ndarray | None = None

    def paths(self, query: OracleQuery, down: frozenset[int] = frozenset()) -> tuple[np.ndarray, np.ndarray]:
        """(paths, latency + setup per candidate) on the routes that avoid ``down``. Deterministic
        routing makes both static per (src, candidate set, down links), so they are computed once
        and cached; ECMP paths depend on the flow."""
        if self.tree.config.routing != "dst":
            paths = self.tree.paths(query.src, query.dsts, query.flow_key, down)
            return paths, self._latency[paths].sum(axis=1) + self.setup_s
        key = (query.src, down)
        hit = self._paths.get(key)
        # the candidate array is the cluster's decode list, the same object decision after
        # decision: identity is checked first, contents only when a caller passes another array
        if hit is None or (hit[0] is not query.dsts and not np.array_equal(hit[0], query.dsts)):
            if len(self._paths) > 4096:  # many failure sets over a long run: keep memory bounded
                self._paths.clear()
            paths = self.tree.paths(query.src, query.dsts, down=down)
            hit = self._paths[key] = (query.dsts, paths, self._latency[paths].sum(axis=1) + self.setup_s)
        return hit[1], hit[2]

    def cost(self, query: OracleQuery) -> np.ndarray:
        """Seconds to move ``query.nbytes[i]`` from ``query.src`` to ``query.dsts[i]`` now: the
        :meth:`table`'s latency + bytes x seconds per byte. An oracle without a table overrides it."""
        table = self.table(query)
        if table is None:
            raise NotImplementedError(f"{type(self).__name__} has no cost table: it must override cost()")
        latency, inv_bottleneck = table
        return self._finish(latency, np.asarray(query.nbytes, dtype=float), inv_bottleneck)

    @abstractmethod
    def table(self, query: OracleQuery) -> tuple[np.ndarray, np.ndarray] | None:
        """(latency + setup, seconds per byte of the bottleneck) per candidate of ``query`` (its
        ``nbytes`` are not read), such that :meth:`cost` is ``_finish(latency, nbytes, that)``;
        None when the oracle has no such form (it then overrides :meth:`cost`). Asking for a
        table has the same effects on the oracle's state as asking for a cost. The arrays may be
        cached and shared: never modify them."""

    def _cached_table(self, cache: dict, query: OracleQuery, down: frozenset[int],
                      inv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The table of ``query`` for seconds per byte ``inv`` per link on the routes avoiding
        ``down``, memoised in ``cache`` (which the caller empties when ``inv`` or ``down``
        change) under deterministic routing; ECMP paths depend on the flow, so no memo then."""
        if self.tree.config.routing != "dst":
            paths, latency = self.paths(query, down)
            return latency, inv[paths].max(axis=1)
        hit = cache.get(query.src)
        if hit is None or (hit[0] is not query.dsts and not np.array_equal(hit[0], query.dsts)):
            paths, latency = self.paths(query, down)
            bottleneck = inv[paths].max(axis=1)
            bottleneck.flags.writeable = False  # shared by every decision from this source
            hit = cache[query.src] = (query.dsts, latency, bottleneck)
        return hit[1], hit[2]

    def striped_cost(self, query: OracleQuery, rank_dsts: list[np.ndarray]) -> np.ndarray:
        """Seconds to move a KV cache striped over ``tp = len(rank_dsts)`` ranks: rank r of the
        source instance (GPU ``query.src + r``) sends ``nbytes / tp`` to rank r of every candidate
        (``rank_dsts[r]``), in parallel over the ranks' own NICs, and the transfer ends when the
        last shard lands: the maximum over ranks of each rank's :meth:`cost`. Shards of one
        transfer that share a fabric link are priced as if each had it alone. ``cost(query)`` at
        tp = 1."""
        tp = len(rank_dsts)
        if tp == 1:
            return self.cost(query)
        shard = np.asarray(query.nbytes, dtype=float) / tp
        worst = self.cost(query._replace(dsts=rank_dsts[0], nbytes=shard))
        for r in range(1, tp):
            worst = np.maximum(worst, self.cost(query._replace(src=query.src + r, dsts=rank_dsts[r], nbytes=shard)))
        return worst

    def commit(self, src: int, dst: int, start: float, end: float,  # noqa: B027  # a hook, no-op by default
               flow_key: int | None = None, nbytes: float = 0.0, key: int | None = None, tp: int = 1) -> None:
        """The scheduler committed transfer ``key`` of ``nbytes`` from ``src`` to ``dst``, expected
        over ``[start, end)`` (seconds since run start); with ``tp`` > 1 striped, rank r from
        ``src + r`` to ``dst + r``. Oracles that do not track commitments ignore it (and
        :meth:`done`)."""

    def done(self, key: int, t: float) -> None:  # noqa: B027  # a hook, no-op by default
        """Transfer ``key`` (see :meth:`commit`) finished at ``t``."""

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
    """Topology only: latency + bytes / nominal bottleneck capacity on the nominal routes. No live
    congestion, no failures."""

    name = "static"

    def __init__(self, tree: FatTree, setup_s: float = 30e-6) -> None:
        super().__init__(tree, setup_s)
        self._tables: dict = {}

    def table(self, query: OracleQuery) -> tuple[np.ndarray, np.ndarray]:
        if self._inv_static is None:
            self._inv_static = self._inverse(self.tree.capacity)
        return self._cached_table(self._tables, query, frozenset(), self._inv_static)


def down_links(snap) -> frozenset[int]:
    """Links a telemetry snapshot reports down (capacity factor 0), as the routing avoids them."""
    if snap is None:
        return frozenset()
    factor = snap.capacity_factor[:-1]
    if factor.min() > 0:
        return frozenset()
    return frozenset(int(i) for i in np.flatnonzero(factor <= 0))


class TelemetryOracle(NetworkOracle):
    """Latency per hop + bytes / available bandwidth of the path bottleneck from a utilisation
    snapshot. Available = capacity x capacity_factor x :func:`free_fraction` of the utilisation:
    a new flow on a saturated link still receives a fair share against ``saturated_link_flows``
    elastic flows already there (at least ``min_available_fraction`` of the capacity).
    Links the snapshot reports down are priced on the routes that avoid them (the controller's
    rerouting); a candidate with no surviving route costs +inf. Without any snapshot yet it
    answers like :class:`StaticTierOracle`, and so it does while the newest snapshot it may use is
    older than ``fallback_age_s`` (telemetry stopped: the controller is down), counting those
    decisions (``stale_decisions``) and the spells (``stale_spells``) until telemetry returns."""

    name = "telemetry"

    def __init__(self, tree: FatTree, source: SnapshotSource, min_available_fraction: float = 0.1,
                 setup_s: float = 30e-6, staleness_s: float = 0.0, fallback_age_s: float | None = None,
                 saturated_link_flows: float = SATURATED_LINK_FLOWS) -> None:
        super().__init__(tree, setup_s)
        if not saturated_link_flows > 0:
            raise ValueError(f"saturated_link_flows must be > 0, got {saturated_link_flows}")
        self.flows = float(saturated_link_flows)
        if not staleness_s >= 0:
            raise ValueError(f"staleness_s must be >= 0, got {staleness_s}")
        if fallback_age_s is not None and not fallback_age_s > 0:
            raise ValueError(f"fallback_age_s must be > 0 or None, got {fallback_age_s}")
        self.fallback_age_s = fallback_age_s
        self.stale_decisions = 0
        self.stale_spells: list[list[float]] = []  # [first, last] decision time of each spell
        self._stale = False
        self.source = source
        self.floor = min_available_fraction
        self.staleness_s = staleness_s
        self._for = None
        self._inv: np.ndarray | None = None
        self._down: frozenset[int] = frozenset()
        self._tables: dict = {}  # source -> (candidates, latency, seconds per byte) under ``_for``

    def snapshot_time(self, now: float) -> float:
        """Time of the newest snapshot the oracle may use at ``now``: ``now - staleness_s``."""
        return now - self.staleness_s

    def snapshot(self, now: float):
        """The snapshot the oracle answers from at ``now``: the newest at ``now - staleness_s``, or
        None (static pricing) when there is none or it is older than ``fallback_age_s``."""
        t = self.snapshot_time(now)
        snap = self.source.at(t)
        if snap is None or self.fallback_age_s is None or t - snap.time_s <= self.fallback_age_s:
            self._stale = False
            return snap
        self.stale_decisions += 1
        if not self._stale:
            self.stale_spells.append([now, now])
            self._stale = True
        self.stale_spells[-1][1] = now
        return None

    def available(self, snap) -> np.ndarray:
        """Available bytes/s per link under ``snap``."""
        if snap is None:
            return self.tree.capacity
        return self.tree.capacity * snap.capacity_factor * free_fraction(snap.utilisation, self.flows, self.floor)

    def _refresh(self, snap) -> np.ndarray:
        """Seconds per byte of every link (returned) and the down set, computed once per snapshot."""
        inv = self._inv
        if self._for is not snap or inv is None:
            inv = self._inv = self._inverse(self.available(snap))
            self._down = down_links(snap)
            self._for = snap
            self._tables = {}
        return inv

    def seconds_per_byte(self, snap) -> tuple[np.ndarray, frozenset[int]]:
        """1 / available bandwidth per link under ``snap`` and its down set, computed once per
        snapshot: what the oracle service names a candidate's bottleneck link from."""
        return self._refresh(snap), self._down

    def table(self, query: OracleQuery) -> tuple[np.ndarray, np.ndarray]:
        """Cached per source for the snapshot in use (a new snapshot, with its down set, starts
        new tables)."""
        inv = self._refresh(self.snapshot(query.now))
        return self._cached_table(self._tables, query, self._down, inv)


@dataclass(slots=True)
class Commitment:
    """One transfer in :class:`InflightOracle`'s ledger: when the scheduler expects it to move,
    its links (every shard's, for a striped transfer) and its rate per shard."""

    start: float
    end: float
    path: np.ndarray
    rate: float  # bytes/s on each of its links
    done_at: float = math.inf  # when the backend reported its last byte (inf: not yet)


class InflightOracle(TelemetryOracle):
    """:class:`TelemetryOracle` corrected by what the scheduler knows of its own transfers.

    Port counters cannot tell one KV transfer from many background flows, and they lag: a link
    busy with the scheduler's own transfer looks as congested as one shared with four tenant
    flows, and a transfer committed a moment ago does not show at all. This oracle keeps a ledger
    of every transfer the scheduler committed (expected start and end, path, bytes) and
    (1) subtracts from each link's measured load the rate of its own transfers the snapshot saw
    (moving at the snapshot's time), leaving the background; (2) splits what the background leaves
    free among the new transfer and its own transfers still expected to move when the new one
    starts: available = free / (1 + own transfers), ``free`` the :func:`free_fraction` of the
    capacity the background leaves.
    Finished transfers leave the ledger when the backend reports them (:meth:`done`), or at their
    expected end."""

    name = "inflight"
    tracks_commitments = True

    def __init__(self, tree: FatTree, source: SnapshotSource, min_available_fraction: float = 0.1,
                 setup_s: float = 30e-6, staleness_s: float = 0.0, fallback_age_s: float | None = None,
                 saturated_link_flows: float = SATURATED_LINK_FLOWS) -> None:
        super().__init__(tree, source, min_available_fraction, setup_s, staleness_s, fallback_age_s,
                         saturated_link_flows)
        self._ledger: dict[int, Commitment] = {}

    def commit(self, src: int, dst: int, start: float, end: float, flow_key: int | None = None,
               nbytes: float = 0.0, key: int | None = None, tp: int = 1) -> None:
        if tp == 1:
            path = self.tree.route(src, dst, flow_key, self._down)
            rate = nbytes / max(end - start, 1e-9)
        else:  # one entry for the striped transfer: its shards' paths, each at its shard's rate
            path = np.concatenate([self.tree.route(src + r, dst + r, flow_key, self._down) for r in range(tp)])
            rate = nbytes / tp / max(end - start, 1e-9)
        self._ledger[len(self._ledger) if key is None else key] = Commitment(start, end, path, rate)

    def done(self, key: int, t: float) -> None:
        """Transfer ``key`` finished at ``t`` (its last byte arrived)."""
        entry = self._ledger.get(key)
        if entry is not None:
            entry.done_at = t

    def moving_at(self, start: float) -> list[np.ndarray]:
        """The links of every committed transfer expected to be moving at ``start`` (one array
        per transfer): what shares a new transfer's path then."""
        return [e.path for e in self._ledger.values() if e.start <= start < e.end]

    def _prune(self, now: float) -> None:
        """Forget transfers done before the oldest snapshot the oracle may still read."""
        horizon = now - self.staleness_s - 2.0
        for k in [k for k, e in self._ledger.items() if min(e.end, e.done_at) < horizon and e.done_at <= now]:
            del self._ledger[k]

    def _background(self, snap, seen: list[Commitment], n: int) -> tuple[np.ndarray, np.ndarray]:
        """(capacity, background load) per link, bytes/s: what ``snap`` measured less the rate of
        our own transfers it shows (``seen``); no snapshot: nominal capacity, no load."""
        cap = self.tree.capacity * (snap.capacity_factor if snap is not None else 1.0)
        util = np.clip(snap.utilisation, 0.0, 1.0) if snap is not None else np.zeros(n)
        own = np.zeros(n)
        for e in seen:
            np.add.at(own, e.path, e.rate)
        own[-1] = 0.0
        with np.errstate(invalid="ignore"):  # the padding link: 0 x inf
            background = np.maximum(util * cap - own, 0.0)
        background[-1] = 0.0  # the padding link carries nothing and costs nothing
        return cap, background

    def _free(self, cap: np.ndarray, background: np.ndarray) -> np.ndarray:
        """Bytes/s the background leaves a new flow per link: :func:`free_fraction`'s rule in
        bytes/s, ``max(capacity - background, capacity / (flows + 1), floor x capacity)``."""
        return np.maximum(np.maximum(cap - background, cap / (self.flows + 1.0)), self.floor * cap)

    def table(self, query: OracleQuery) -> tuple[np.ndarray, np.ndarray]:
        """The snapshot's cached table when none of the scheduler's own transfers counts, else
        one built for this query."""
        snap = self.snapshot(query.now)
        snapshot_inv = inv = self._refresh(snap)
        now = query.now
        start = now if query.start is None else query.start
        self._prune(now)
        if self._ledger:
            n = inv.shape[0]
            seen_t = snap.time_s if snap is not None else -np.inf
            seen = [e for e in self._ledger.values() if e.start <= seen_t < min(e.end, e.done_at)]
            later = [e.path for e in self._ledger.values() if e.start <= start < e.end and e.done_at > now]
            if seen or later:
                cap, background = self._background(snap, seen, n)
                free = self._free(cap, background)
                sharers = np.bincount(np.concatenate(later), minlength=n).astype(float) if later else np.zeros(n)
                sharers[-1] = 0.0
                inv = self._inverse(free / (1.0 + sharers))
        if inv is snapshot_inv:
            return self._cached_table(self._tables, query, self._down, inv)
        paths, latency = self.paths(query, self._down)
        return latency, inv[paths].max(axis=1)


_BY_END = operator.attrgetter("end")

FEW_PENDING = 8
"""Pending commitments up to which :class:`PredictiveOracle` integrates in Python floats instead
of numpy arrays (:meth:`PredictiveOracle._integrate_few`; the same prices): below it a numpy
call's fixed cost exceeds the arithmetic it vectorises."""

PLAN_CACHE_MAX = 64
"""Pending sets whose :class:`_Plan` :class:`PredictiveOracle` keeps (a decision's queries share
one or a few; consecutive decisions often see the same set again)."""


def _same(a: tuple, b: tuple | None) -> bool:
    """Whether two of :class:`PredictiveOracle`'s state keys are equal: ``(ledger version, ledger
    size, snapshot, its seconds per byte[, now])``, the snapshot and the array by identity."""
    return b is not None and a[:2] == b[:2] and a[2] is b[2] and a[3] is b[3] and a[4:] == b[4:]


class _Plan:
    """What a set of pending commitments makes of the fabric, built once per set and shared by
    every query that sees that set (every candidate source of a decision, while no commitment
    changes): the sorted breakpoints ``grid`` (their starts and ends), each crossed link's row in
    ``per_link`` (``compact``, -1: no pending commitment crosses it), and per row the seconds per
    byte of the link in each interval of the grid (column 0: before the first breakpoint, column
    c: from ``grid[c - 1]``; a last row of zeros for the links no pending commitment crosses).
    ``by_src`` caches per source its affected candidates and their seconds per byte per interval."""

    __slots__ = ("by_src", "compact", "grid", "inv", "pending", "per_link")

    def __init__(self, pending: list[Commitment], inv: np.ndarray, pad: int) -> None:
        self.pending = pending  # kept: the plan is found by their ids
        self.inv = inv
        self.grid = sorted({t for e in pending for t in (e.start, e.end)})
        paths = [e.path for e in pending]
        links = np.unique(np.concatenate(paths) if len(paths) > 1 else paths[0])
        if links.size and links[-1] == pad:  # the padding link is the highest index
            links = links[:-1]
        self.compact = compact = np.full(inv.shape[0], -1, dtype=np.int64)
        compact[links] = np.arange(links.size)
        counts = np.zeros((links.size + 1, len(self.grid) + 1), dtype=np.int64)
        for e in pending:
            # active from the interval its start opens to the one its end closes
            a = bisect.bisect_right(self.grid, e.start)
            b = bisect.bisect_right(self.grid, e.end)
            np.add.at(counts[:, a:b], compact[e.path], 1)
        self.per_link = np.append(inv[links], 0.0)[:, None] * (1.0 + counts)
        self.by_src: dict[int, tuple[np.ndarray, ...]] = {}

    def rows(self, src: int, paths: np.ndarray,
             base: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(candidates whose path crosses a pending commitment's link, their seconds per byte per
        grid interval (the bottleneck: the shared links' or ``base``, the path's own), the rate
        that gives (0 where nothing gets through), their positions 0..k-1), cached per source for
        the same path table."""
        hit = self.by_src.get(src)
        if hit is None or hit[0] is not paths:
            hops = self.compact[paths]
            rows = np.flatnonzero(hops.max(axis=1) >= 0)
            with np.errstate(invalid="ignore"):  # inf x 1 stays inf; no 0 x inf here
                step = np.maximum(self.per_link[hops[rows]].max(axis=1), base[rows][:, None])
            rate = 1.0 / step  # 0 where nothing gets through (step +inf)
            hit = self.by_src[src] = (paths, rows, step, rate, np.arange(rows.size))
        return hit[1], hit[2], hit[3], hit[4]


PERSISTENCE_S: float | None = None
"""The oracle's default persistence (None: off; ``oracle.persistence_s`` = 0 in a config): how
long :class:`PredictiveOracle` trusts the snapshot's background for a transfer expected to start
later (see :func:`background_weight`).
Off by default, by measurement (docs/mechanisms.md, "NetKV's p99 tail"): 1 s (a couple of the
controller's polls) shortens decode-flap's tail transfers, whose background swaps every 15 s,
but loses up to 2.5% mean TTFT in rolling, whose background persists; no one value suits both,
and one port-counter snapshot does not tell which background a link has."""


def background_weight(lead_s: float, persistence_s: float | None) -> float:
    """Weight of the snapshot's background for a transfer starting ``lead_s`` after the snapshot:
    1 up to ``persistence_s``, then ``exp(-(lead_s - persistence_s) / persistence_s)``.

    Why: a link's load stays correlated with what a snapshot saw for about the background's
    persistence time; well beyond it the snapshot says nothing about that link, and the price a
    router can give without information is the idle one (:class:`StaticTierOracle`'s). Held at 1
    first, so transfers starting soon keep the live price exactly; the exponential is the
    correlation of a background whose changes arrive at random, one per ``persistence_s`` on
    average. None: always 1 (the live price whatever the lead)."""
    if persistence_s is None or lead_s <= persistence_s:
        return 1.0
    return math.exp(-(lead_s - persistence_s) / persistence_s)


class PredictiveOracle(InflightOracle):
    """:class:`InflightOracle`'s ledger and background, priced over the transfer's future.

    A decision is taken a prefill before its transfer starts; at long contexts the transfers
    committed in between, not the ones moving now, are the fabric's load. This oracle prices each
    candidate's transfer from its expected start (``query.start``, the prefill's expected end) to
    its expected finish against the background (the snapshot's load minus the scheduler's own
    transfers it shows, as :class:`InflightOracle`) and the committed transfers not yet done,
    each over its own expected window ``[start, end)``: on a link shared with ``n`` of them, the
    new transfer gets ``free / (1 + n)`` while they move and the whole of ``free`` before they
    start and after they end (``free``: what the background leaves, :meth:`InflightOracle._free`). The
    rate is piecewise constant between the commitments' starts and ends, so the finish time of
    ``B`` bytes is where the integral of the bottleneck rate reaches ``B``: more bytes never
    finish sooner, a committed transfer raises a later price only on the links it shares and only
    while the windows overlap, and with nothing committed it is the telemetry price.

    With ``persistence_s`` set, the background (only it: the commitments are the scheduler's own
    and stay exact) is scaled by :func:`background_weight` of the transfer's expected start's lead
    over the snapshot, so a transfer expected to start long after the snapshot is priced toward
    the idle fabric instead of congestion that will have moved on by then.

    Cost: the commitments not done are kept sorted by expected end per ledger state, snapshot
    and decision time, so a query's pending set (those ending after its start) is a suffix found
    by bisection; the rates that set gives every crossed link over time (:class:`_Plan`) are built
    once per set, and the affected candidates' rates once per source, so the decision's other
    queries reuse them. The candidates whose path crosses no link of a pending commitment keep
    the cached snapshot table (O(|D|) with a gather of the path links to find them); each of the
    ``k`` others is priced over the ``m <= 2 x pending`` breakpoints, O(k x hops x m).
    :meth:`table` answers only when nothing is pending (the price is then linear in the bytes);
    otherwise :meth:`cost` integrates."""

    name = "predictive"

    def __init__(self, tree: FatTree, source: SnapshotSource, min_available_fraction: float = 0.1,
                 setup_s: float = 30e-6, staleness_s: float = 0.0, fallback_age_s: float | None = None,
                 saturated_link_flows: float = SATURATED_LINK_FLOWS,
                 persistence_s: float | None = PERSISTENCE_S) -> None:
        super().__init__(tree, source, min_available_fraction, setup_s, staleness_s, fallback_age_s,
                         saturated_link_flows)
        if persistence_s is not None and not persistence_s > 0:
            raise ValueError(f"persistence_s must be > 0 or None, got {persistence_s}")
        self.persistence_s = persistence_s
        # (cap, background) per link of the state's snapshot and seen commitments, by (snapshot,
        # seen ids); and the last blended seconds per byte: (live seconds per byte, weight, blend)
        self._parts: tuple | None = None
        self._blend: tuple | None = None
        self._version = 0  # bumped on every commit and done: the ledger's state (with its size)
        self._state_key: tuple | None = None  # (version, ledger size, snapshot, its inv, now); None: empty ledger
        self._state_inv: np.ndarray | None = None
        # the background-corrected seconds per byte and what it was computed from: (snapshot, its
        # inv, the seen commitments (kept, so their ids stay theirs), their ids)
        self._bg_from: tuple | None = None
        self._found: tuple[OracleQuery, np.ndarray, int] | None = None  # table()'s answer, for cost()
        self._live: list[Commitment] = []  # not done at the state's time, by expected end
        self._seen: list[Commitment] = []  # those the state's snapshot shows moving
        self._ends: list[float] = []
        self._hops: dict[int, tuple] = {}  # per source: (path table, its links as lists, link index)
        self._plans: dict[tuple[int, tuple[int, ...]], _Plan] = {}  # by the ids of their inv and pending set

    def _state(self, query: OracleQuery) -> tuple[np.ndarray, int]:
        """(seconds per byte of every link left free by the background, where the pending
        commitments (not done, expected to end after the query's start) begin in ``_live``).
        Prunes the ledger like :meth:`InflightOracle.table`."""
        snap = self.snapshot(query.now)
        inv = self._refresh(snap)
        now = query.now
        start = now if query.start is None else query.start
        self._prune(now)
        if not self._ledger:
            self._state_key = None
            return self._blended(snap, [], inv, start), 0
        key = (self._version, len(self._ledger), snap, inv, now)
        if not _same(key, self._state_key):
            self._state_key = key
            seen_t = snap.time_s if snap is not None else -np.inf
            seen = [e for e in self._ledger.values() if e.start <= seen_t < min(e.end, e.done_at)]
            if not seen:
                self._state_inv = inv
            else:
                ids = tuple(map(id, seen))
                was = self._bg_from
                if was is None or was[0] is not snap or was[1] is not inv or was[3] != ids:
                    cap, background = self._background(snap, seen, inv.shape[0])
                    self._state_inv = self._inverse(self._free(cap, background))
                    self._bg_from = (snap, inv, seen, ids, self._state_inv)
                else:
                    self._state_inv = was[4]
            self._live = sorted((e for e in self._ledger.values() if e.done_at > now), key=_BY_END)
            self._ends = [e.end for e in self._live]
            self._seen = seen
        assert self._state_inv is not None
        return self._blended(snap, self._seen, self._state_inv, start), bisect.bisect_right(self._ends, start)

    def _blended(self, snap, seen: list[Commitment], live: np.ndarray, start: float) -> np.ndarray:
        """Seconds per byte of every link with the background weighted by
        :func:`background_weight` of ``start``'s lead over ``snap``: ``live`` itself (the same
        array) at weight 1, else recomputed from the snapshot's capacity and background less our
        own transfers it saw (``seen``), kept while the query asks the same again."""
        if snap is None:
            return live
        w = background_weight(start - snap.time_s, self.persistence_s)
        if w == 1.0:
            return live
        was = self._blend
        if was is not None and was[0] is live and was[1] == w:
            return was[2]
        ids = tuple(map(id, seen))
        parts = self._parts
        if parts is None or parts[0] is not snap or parts[2] != ids:
            parts = self._parts = (snap, seen, ids, *self._background(snap, seen, live.shape[0]))
        cap, background = parts[3], parts[4]
        blend = self._inverse(self._free(cap, w * background))
        self._blend = (live, w, blend)
        return blend

    def _pending(self, query: OracleQuery) -> tuple[np.ndarray, list[Commitment]]:
        """(seconds per byte of every link left free by the background, the commitments not done
        whose expected window ends after the query's start)."""
        inv, first = self._state(query)
        return inv, (self._live[first:] if self._state_key is not None else [])

    # NetworkOracle.table's contract allows None; the telemetry kinds never answer it, this one
    # does whenever a pending commitment makes the price non-linear in the bytes
    def table(self, query: OracleQuery) -> tuple[np.ndarray, np.ndarray] | None:  # type: ignore[override]
        """The linear table when no pending commitment exists (the snapshot's, cached, when the
        background needs no correction either); None otherwise (:meth:`cost` integrates, reusing
        what this call found when it prices the same query next)."""
        inv, first = self._state(query)
        if self._state_key is not None and first < len(self._live):
            self._found = (query, inv, first)
            return None
        if inv is self._inv:
            return self._cached_table(self._tables, query, self._down, inv)
        paths, latency = self.paths(query, self._down)
        return latency, inv[paths].max(axis=1)

    def commit(self, src: int, dst: int, start: float, end: float, flow_key: int | None = None,
               nbytes: float = 0.0, key: int | None = None, tp: int = 1) -> None:
        self._version += 1
        self._found = None
        super().commit(src, dst, start, end, flow_key, nbytes, key, tp)

    def done(self, key: int, t: float) -> None:
        self._version += 1
        self._found = None
        super().done(key, t)

    def cost(self, query: OracleQuery) -> np.ndarray:
        found, self._found = self._found, None
        if found is not None and (found[0].src, found[0].now, found[0].start, found[0].flow_key) == (
                query.src, query.now, query.start, query.flow_key) and found[0].dsts is query.dsts:
            inv, first = found[1], found[2]
        else:
            inv, first = self._state(query)
        any_pending = self._state_key is not None and first < len(self._live)
        nbytes = np.asarray(query.nbytes, dtype=float)
        if inv is self._inv:
            latency, base = self._cached_table(self._tables, query, self._down, inv)
        else:
            paths, latency = self.paths(query, self._down)
            base = inv[paths].max(axis=1)
        out = self._finish(latency, nbytes, base)
        if not any_pending:
            return out
        pending = self._live[first:]
        start = query.now if query.start is None else query.start
        if len(pending) <= FEW_PENDING:
            self._integrate_few(pending, inv, query.src, self.paths(query, self._down)[0], base, nbytes,
                                latency, start, out)
            return out
        ids = tuple(map(id, pending))
        plan = self._plans.get((id(inv), ids))  # a plan keeps its inv: the id stays that array's
        if plan is None or plan.inv is not inv:
            if len(self._plans) >= PLAN_CACHE_MAX:
                self._plans.clear()
            plan = self._plans[(id(inv), ids)] = _Plan(pending, inv, self.tree.pad)
        rows, step, rate, k = plan.rows(query.src, self.paths(query, self._down)[0], base)
        if rows.size == 0:
            return out
        want = nbytes[rows]
        # the intervals after the start: [start, grid[c]), [grid[c], grid[c + 1]), ...
        c = bisect.bisect_right(plan.grid, start)
        bounds = np.array([start, *plan.grid[c:]])
        moving = want > 0
        if moving.all():
            step, rate = step[:, c:], rate[:, c:]
        else:
            rows, want, step, rate = rows[moving], want[moving], step[moving, c:], rate[moving, c:]
            if rows.size == 0:
                return out
            k = k[: rows.size]
        moved = np.zeros(step.shape)  # bytes moved before each interval starts
        np.cumsum(rate[:, :-1] * np.diff(bounds)[None, :], axis=1, out=moved[:, 1:])
        j = (moved < want[:, None]).sum(axis=1) - 1
        with np.errstate(invalid="ignore"):
            finish = bounds[j] + (want - moved[k, j]) * step[k, j]
        out[rows] = latency[rows] + (finish - start)
        return out

    def _hop_lists(self, src: int, paths: np.ndarray) -> tuple[list[list[int]], dict[int, list[int]]]:
        """(each candidate's path links as a list, the candidates crossing each link), cached per
        source for the same path table."""
        hit = self._hops.get(src)
        if hit is None or hit[0] is not paths:
            pad = self.tree.pad
            hops = [[link for link in row if link != pad] for row in paths.tolist()]
            index: dict[int, list[int]] = {}
            for i, row in enumerate(hops):
                for link in dict.fromkeys(row):
                    index.setdefault(link, []).append(i)
            hit = self._hops[src] = (paths, hops, index)
        return hit[1], hit[2]

    def _integrate_few(self, pending: list[Commitment], inv: np.ndarray, src: int, paths: np.ndarray,
                       base: np.ndarray, nbytes: np.ndarray, latency: np.ndarray, start: float,
                       out: np.ndarray) -> None:
        """:meth:`cost`'s integration for a few pending commitments, in Python floats: with a
        handful of intervals and affected candidates a numpy call's overhead exceeds its work.
        The same IEEE operations in the same order as the :class:`_Plan` path (each interval's
        seconds per byte the maximum of the path's own and ``inv x (1 + sharers)`` of each
        shared link, bytes accumulated interval by interval), so every price is the same to the
        last bit; writes the affected candidates' prices into ``out``."""
        pad = self.tree.pad
        grid = sorted({t for e in pending for t in (e.start, e.end)})
        width = len(grid) + 1
        counts: dict[int, list[int]] = {}  # sharers per interval of every link a pending one crosses
        for e in pending:
            a = bisect.bisect_right(grid, e.start)
            b = bisect.bisect_right(grid, e.end)
            for link in e.path.tolist():
                if link != pad:
                    row = counts.get(link)
                    if row is None:
                        row = counts[link] = [0] * width
                    for c in range(a, b):
                        row[c] += 1
        hops, index = self._hop_lists(src, paths)
        affected: set[int] = set()
        for link in counts:
            crossing = index.get(link)
            if crossing:
                affected.update(crossing)
        if not affected:
            return
        c0 = bisect.bisect_right(grid, start)
        bounds = [start, *grid[c0:]]
        last = len(bounds) - 1
        per_link = {link: (float(inv[link]), row) for link, row in counts.items()}
        for i in affected:
            want = float(nbytes[i])
            if not want > 0:
                continue
            own = float(base[i])
            shared = [per_link[link] for link in hops[i] if link in per_link]
            moved = 0.0  # bytes moved before interval j starts
            j = 0
            while True:
                step = own
                for v, row in shared:
                    x = v * (1.0 + row[c0 + j])
                    if x > step:
                        step = x
                if j < last:
                    after = moved + (1.0 / step if step else math.inf) * (bounds[j + 1] - bounds[j])
                    if after < want:
                        moved, j = after, j + 1
                        continue
                finish = bounds[j] + (want - moved) * step
                break
            out[i] = float(latency[i]) + (finish - start)


class PerfectOracle(NetworkOracle):
    """The simulator's ground truth at the decision instant: the routes in force, and per link the
    rate a new flow would get under max-min sharing if no other flow's bottleneck moved
    (:meth:`scheduler.sim.network.FlowNetwork.entrant_share`). An upper bound on what telemetry can
    tell, not on performance: it knows the present, not the transfers still to come."""

    name = "perfect"

    def __init__(self, tree: FatTree, truth: GroundTruth, setup_s: float = 30e-6) -> None:
        super().__init__(tree, setup_s)
        self.truth = truth
        self._share_for: np.ndarray | None = None  # the entrant_share() array the tables price
        self._down_for: frozenset[int] | None = None
        self._inv: np.ndarray | None = None
        self._tables: dict = {}

    def table(self, query: OracleQuery) -> tuple[np.ndarray, np.ndarray]:
        """Cached per source until the truth's routes or shares change (a new ``entrant_share()``
        array object: :class:`scheduler.sim.network.FlowNetwork` returns the same one until its rates
        change, and a ground truth must never modify one it has returned)."""
        down = self.truth.routing_down()
        share = self.truth.entrant_share()
        inv = self._inv
        if share is not self._share_for or inv is None:
            inv = self._inv = self._inverse(share)
            self._share_for = share
            self._tables = {}
        if down != self._down_for:
            self._down_for = down
            self._tables = {}
        return self._cached_table(self._tables, query, down, inv)


OracleFactory = Callable[..., NetworkOracle]
"""Builds one kind: ``(tree, source, truth, staleness_s, min_available_fraction, setup_s,
fallback_age_s, saturated_link_flows, persistence_s) -> NetworkOracle`` (keyword arguments),
raising :class:`UnknownOracleError` when the backend lacks what the kind reads."""


def _telemetry_kind(cls: type[TelemetryOracle], reads_persistence: bool = False) -> OracleFactory:
    """The factory of a telemetry-fed kind; ``reads_persistence``: its constructor takes ``persistence_s``."""
    def build(tree, source, truth, staleness_s, min_available_fraction, setup_s, fallback_age_s,
              saturated_link_flows, persistence_s=PERSISTENCE_S):
        if source is None:
            raise UnknownOracleError(f"oracle {cls.name!r} needs a telemetry source")
        extra = {"persistence_s": persistence_s} if reads_persistence else {}
        return cls(tree, source, min_available_fraction, setup_s, staleness_s, fallback_age_s, saturated_link_flows,
                   **extra)
    return build


def _static(tree, source, truth, staleness_s, min_available_fraction, setup_s, fallback_age_s,
            saturated_link_flows, persistence_s=PERSISTENCE_S) -> NetworkOracle:
    return StaticTierOracle(tree, setup_s)


def _perfect(tree, source, truth, staleness_s, min_available_fraction, setup_s, fallback_age_s,
             saturated_link_flows, persistence_s=PERSISTENCE_S) -> NetworkOracle:
    if truth is None:
        raise UnknownOracleError("oracle 'perfect' reads the simulator's true network state; "
                                 "this backend has none (a real fabric shows itself only through telemetry)")
    return PerfectOracle(tree, truth, setup_s)


ORACLE_REGISTRY: dict[str, OracleFactory] = {
    "static": _static,
    "telemetry": _telemetry_kind(TelemetryOracle),
    "inflight": _telemetry_kind(InflightOracle),
    "perfect": _perfect,
    "predictive": _telemetry_kind(PredictiveOracle, reads_persistence=True),
}
"""Every oracle kind by name (what ``NAME:ORACLE`` resolves): from least to most information, then
``predictive`` (inflight's information, priced over the transfer's future)."""
ORACLES = tuple(ORACLE_REGISTRY)


def make_oracle(kind: str, tree: FatTree, source: SnapshotSource | None, staleness_s: float,
                min_available_fraction: float, setup_s: float, truth: GroundTruth | None = None,
                fallback_age_s: float | None = None,
                saturated_link_flows: float = SATURATED_LINK_FLOWS,
                persistence_s: float | None = PERSISTENCE_S) -> NetworkOracle:
    """Oracle by name (one of :data:`ORACLES`). ``telemetry`` and ``inflight`` need a snapshot
    source (and fall back to static pricing on snapshots older than ``fallback_age_s``),
    ``predictive`` too (``persistence_s``: :func:`background_weight`; other kinds ignore it),
    ``perfect`` the simulator's ground truth; a backend without it gets
    :class:`UnknownOracleError` naming what is missing."""
    build = ORACLE_REGISTRY.get(kind)
    if build is None:
        raise UnknownOracleError(f"unknown oracle {kind!r} (known: {', '.join(ORACLES)})")
    return build(tree=tree, source=source, truth=truth, staleness_s=staleness_s,
                 min_available_fraction=min_available_fraction, setup_s=setup_s, fallback_age_s=fallback_age_s,
                 saturated_link_flows=saturated_link_flows, persistence_s=persistence_s)
