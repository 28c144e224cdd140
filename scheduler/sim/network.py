"""Flow-level network: max-min fair sharing of directed link capacity among active flows.

Rates are recomputed by progressive filling whenever a flow starts or ends or a capacity changes;
between those instants every flow moves at a constant rate, so the simulator only needs the time
of the next completion. Per-link byte counters integrate the rates exactly like switch port
counters, so the simulator's telemetry is computed the way the Ryu controller computes it.

Speed without changing a single bit: :class:`FlowNetwork` keeps its flows' paths, demand limits,
remaining bytes and rates in arrays (rows in the flows' insertion order, the order every
order-dependent sum used before), so a recomputation, an advance and the next-completion search
are a handful of numpy calls instead of loops over the flows; :func:`max_min_rates` performs the
same floating-point operations as plain progressive filling in the same order (see there); the
rates of a flow set are memoised on the exact inputs they are a function of (flow sets recur:
the same background flows plus one transfer on one of a few hundred paths); and a batch of
changes at one instant may defer the recomputation to the last one (:meth:`FlowNetwork.hold`).
On a large fabric carrying few flows, the filling, the per-link rates and the port counters'
advance touch only the links those flows cross (the others carry nothing and would only ever add
0), so a change costs the flows in flight, not the fabric's size.
"""
from __future__ import annotations

import numpy as np

from scheduler.sim.maxmin import (  # noqa: F401 (max_min_rates re-exported)
    COMPACT_BELOW,
    _compact,
    _progressive_fill,
    _saturation_threshold,
    max_min_rates,
)


class Flow:
    """One flow of a :class:`FlowNetwork`. ``remaining`` (bytes left; inf for background flows
    without a size) and ``rate`` (bytes/s) are read from the network's arrays while the flow is
    in it, and frozen at their last values once it is removed."""

    __slots__ = ("_net", "_rate", "_remaining", "cap", "flow_id", "path", "tag")

    def __init__(self, flow_id: int, path: np.ndarray, remaining: float, cap: float, tag: object = None,
                 rate: float = 0.0) -> None:
        self.flow_id = flow_id
        self.path = path  # (MAX_HOPS,) padded link indices
        self.cap = cap  # bytes/s demand limit, inf = greedy
        self.tag = tag  # owner payload (request id, scenario flow name)
        self._net: FlowNetwork | None = None
        self._remaining = float(remaining)
        self._rate = float(rate)

    def _row(self, net: FlowNetwork) -> int:
        return net._ids.index(self.flow_id)

    @property
    def remaining(self) -> float:
        net = self._net
        return float(net._rem[self._row(net)]) if net is not None else self._remaining

    @remaining.setter
    def remaining(self, value: float) -> None:
        net = self._net
        if net is not None:
            net._rem[self._row(net)] = value
        else:
            self._remaining = float(value)

    @property
    def rate(self) -> float:
        net = self._net
        if net is None:
            return self._rate
        net._settle()
        return float(net._rate[self._row(net)])

    @rate.setter
    def rate(self, value: float) -> None:
        net = self._net
        if net is not None:
            net._rate[self._row(net)] = value
        else:
            self._rate = float(value)

    def __repr__(self) -> str:
        return (f"Flow(flow_id={self.flow_id}, path={self.path!r}, remaining={self.remaining}, cap={self.cap}, "
                f"tag={self.tag!r}, rate={self.rate})")


class FlowNetwork:
    """Active flows on a fat-tree's directed links; the simulator drives time forward."""

    MEMO_BYTES = 64 << 20
    """Memory the memo of flow sets and their rates may take (see :meth:`_compute_rates`); it
    holds at most 4096 flow sets, fewer on large fabrics, and restarts when full."""

    def __init__(self, capacity: np.ndarray, pad: int) -> None:
        self.nominal = capacity.astype(float).copy()
        self.capacity = self.nominal.copy()
        self.pad = pad
        self.flows: dict[int, Flow] = {}
        self.now = 0.0
        self.link_bytes = np.zeros_like(self.nominal)  # cumulative bytes per link (port counters)
        self._link_rate: np.ndarray | None = np.zeros_like(self.nominal)  # None: build from _busy
        # the links the flows cross and their rates (None: not listed, any link may carry a rate)
        self._busy: np.ndarray | None = np.zeros(0, dtype=np.int64)
        self._busy_rate = np.zeros(0)
        self._held = False  # recomputations deferred (see hold)
        self._dirty = False  # a deferred recomputation is pending
        self._next_id = 0
        self.recomputes = 0
        self.version = 0  # bumped whenever rates may have changed
        self._share_version = -1
        self._share: np.ndarray | None = None
        # flow arrays, one row per flow in insertion order (the order of ``flows``)
        self._ids: list[int] = []
        self._n = 0
        self._paths = np.empty((0, 0), dtype=np.int64)  # (rows, 8) link indices, padded; sized by the first flow
        self._width = self._wide = 0
        self._caps = np.empty(0)
        self._rem = np.empty(0)
        self._rate = np.empty(0)
        self._cap_keys: dict[bytes, int] = {}  # capacity vector -> small id (part of the memo key)
        self._memo: dict[tuple, list] = {}
        self._entry: list | None = None  # memo entry of the current flows
        self.memo_hits = 0
        self._memo_size = int(min(4096, max(16, self.MEMO_BYTES // (24 * self.nominal.shape[0]))))
        self._capacity_changed()

    def _capacity_changed(self) -> None:
        self._cap_key = self._cap_keys.setdefault(self.capacity.tobytes(), len(self._cap_keys))
        self._sat_threshold = _saturation_threshold(self.capacity, self.pad)
        with np.errstate(invalid="ignore", divide="ignore"):
            self._factor = np.where(np.isfinite(self.nominal), self.capacity / self.nominal, 1.0)

    def advance(self, t: float) -> None:
        """Move time to ``t`` at the current rates (no completions may lie before ``t``)."""
        dt = t - self.now
        if dt < 0:
            raise ValueError(f"time went backwards: {t} < {self.now}")
        if dt > 0 and self._n:
            self._settle()
            busy = self._busy
            if busy is None:
                assert self._link_rate is not None
                self.link_bytes += self._link_rate * dt
            else:  # the other links' rates are 0: adding 0 x dt would leave their counters as they are
                self.link_bytes[busy] += self._busy_rate * dt
            n = self._n
            self._rem[:n] -= self._rate[:n] * dt  # a flow at rate 0 keeps its bytes exactly
        self.now = t

    def _grow(self, width: int) -> None:
        if self._paths.shape[0] == 0:
            self._width = width
            # rows padded to 8 links (the padding link) when they fit: see _progressive_fill
            self._wide = 8 if width <= 8 else width
        size = max(16, 2 * self._n)
        paths = np.full((size, self._wide), self.pad, dtype=np.int64)
        caps, rem, rate = np.zeros(size), np.zeros(size), np.zeros(size)
        n = self._n
        if n:
            paths[:n] = self._paths[:n]
            caps[:n], rem[:n], rate[:n] = self._caps[:n], self._rem[:n], self._rate[:n]
        self._paths, self._caps, self._rem, self._rate = paths, caps, rem, rate

    def add(self, path: np.ndarray, size: float, cap: float = np.inf, tag: object = None) -> int:
        fid = self._next_id
        self._next_id += 1
        flow = Flow(fid, path, float(size), float(cap), tag)
        if self._n == self._paths.shape[0]:
            self._grow(np.shape(path)[0])
        if np.shape(path) != (self._width,):
            raise ValueError(f"path of shape {np.shape(path)}, the network's paths have ({self._width},)")
        n = self._n
        self._paths[n, :self._width] = path
        self._caps[n], self._rem[n], self._rate[n] = flow.cap, flow._remaining, 0.0
        self._n = n + 1
        self._ids.append(fid)
        flow._net = self
        self.flows[fid] = flow
        self._recompute()
        return fid

    def remove(self, fid: int) -> Flow:
        f = self.flows.pop(fid)
        k = self._ids.index(fid)
        f._remaining, f._rate = float(self._rem[k]), float(self._rate[k])
        f._net = None
        n = self._n
        if k < n - 1:  # close the gap: later flows keep their order
            self._paths[k:n - 1] = self._paths[k + 1:n]
            self._caps[k:n - 1] = self._caps[k + 1:n]
            self._rem[k:n - 1] = self._rem[k + 1:n]
            self._rate[k:n - 1] = self._rate[k + 1:n]
        del self._ids[k]
        self._n = n - 1
        self._recompute()
        return f

    def set_cap(self, fid: int, cap: float) -> None:
        """Change flow ``fid``'s demand limit (bytes/s, inf = greedy)."""
        f = self.flows[fid]
        f.cap = float(cap)
        self._caps[self._ids.index(fid)] = f.cap
        self._recompute()

    def set_paths(self, moves: dict[int, np.ndarray]) -> None:
        """Move several flows at once (one recomputation)."""
        for fid, path in moves.items():
            self.flows[fid].path = path
            self._paths[self._ids.index(fid), :self._width] = path
        self._recompute()

    def set_capacity(self, links: np.ndarray | list[int], factor: float) -> None:
        self.capacity[np.asarray(links, dtype=int)] = self.nominal[np.asarray(links, dtype=int)] * factor
        self._capacity_changed()
        self._recompute()

    def capacity_factor(self) -> np.ndarray:
        """Available fraction of nominal capacity per link (a fresh array; padding 1)."""
        return self._factor.copy()

    def entrant_share(self) -> np.ndarray:
        """Bytes/s a new flow would get on every link now: the level ``x`` at which
        ``x + sum(min(rate_f, x)) = capacity`` over the link's flows (a flow slower than ``x``
        keeps its rate, being bottlenecked elsewhere; faster ones would share down to ``x``).
        Equals ``max_j (capacity - S_j) / (k - j + 1)`` over the link's ``k`` rates sorted
        ascending with ``S_j`` the sum of the ``j`` smallest. Padding entry +inf; cached until
        the rates change."""
        if self._share_version == self.version and self._share is not None:
            return self._share
        self._settle()
        entry = self._entry
        if entry is not None and entry[2] is not None:  # these flows' shares, computed before
            self._share, self._share_version = entry[2], self.version
            return entry[2]
        share = self.capacity.astype(float).copy()
        n = self._n
        if n:
            paths = self._paths[:n]
            rates = np.repeat(self._rate[:n], paths.shape[1])
            links = paths.reshape(-1)
            keep = links != self.pad
            links, rates = links[keep], rates[keep]
            order = np.lexsort((rates, links))
            links, rates = links[order], rates[order]
            first = np.empty(links.size, dtype=bool)
            first[0] = True
            np.not_equal(links[1:], links[:-1], out=first[1:])
            starts = first.nonzero()[0]
            counts = np.diff(starts, append=links.size)
            group = np.repeat(np.arange(starts.size), counts)
            pos = np.arange(links.size) - starts[group]  # j: flows slower than this one on the link
            csum = np.cumsum(rates)
            before = csum - rates - (csum[starts] - rates[starts])[group]  # S_j
            cap = self.capacity[links]
            x = (cap - before) / (counts[group] - pos + 1)
            best = np.maximum.reduceat(x, starts)
            total = np.add.reduceat(rates, starts)
            ulinks = links[starts]
            share[ulinks] = np.maximum(np.maximum(best, self.capacity[ulinks] - total), 0.0)
        share[self.pad] = np.inf
        share.flags.writeable = False  # shared: the perfect oracle keys its tables on the object
        if entry is not None:
            entry[2] = share
        self._share, self._share_version = share, self.version
        return share

    @property
    def link_rate(self) -> np.ndarray:
        """Bytes/s crossing each link now (padding 0)."""
        self._settle()
        if self._link_rate is None:  # listed per crossed link only: the full array, once per flow set
            link_rate = np.zeros_like(self.nominal)
            link_rate[self._busy] = self._busy_rate
            link_rate.flags.writeable = False
            self._link_rate = link_rate
            if self._entry is not None:
                self._entry[1] = link_rate
        return self._link_rate

    def hold(self) -> None:
        """Defer rate recomputations until :meth:`release` (or until something reads the rates):
        a batch of changes at one instant then costs one recomputation, with the rates the last
        change alone would give (they depend only on the flows, not on how they got there)."""
        self._held = True

    def release(self) -> None:
        """End :meth:`hold`, recomputing the rates if a change is pending."""
        self._held = False
        self._settle()

    def _settle(self) -> None:
        if self._dirty:
            self._dirty = False
            self._compute_rates()

    def _recompute(self) -> None:
        self.version += 1
        if self._held:
            self._dirty = True
            return
        self._dirty = False
        self._compute_rates()

    def _compute_rates(self) -> None:
        """Rates and per-link rates of the current flows. They are a function of the flows' paths
        and caps in order and of the link capacities alone, and the same flow sets recur (the
        background flows plus one transfer over one of a few hundred paths), so they are memoised
        on exactly those inputs: a hit returns what the computation gave the first time."""
        self.recomputes += 1
        n = self._n
        if not n:
            self._link_rate = np.zeros_like(self.nominal)
            self._busy, self._busy_rate = np.zeros(0, dtype=np.int64), np.zeros(0)
            self._entry = None
            return
        paths = self._paths[:n]
        caps = self._caps[:n]
        key = (paths.tobytes(), caps.tobytes(), self._cap_key)
        entry = self._memo.get(key)
        if entry is None:
            n_links = self.nominal.shape[0]
            busy: np.ndarray | None = None
            busy_rate: np.ndarray | None = None
            link_rate: np.ndarray | None = None
            if paths.size * COMPACT_BELOW < n_links:  # few flows on a large fabric: their links alone
                used, local, at = _compact(paths, self.pad)
                rates = _progressive_fill(local, self.capacity[used], caps, at, self._sat_threshold[used],
                                          n + n_links)
                per_used = np.bincount(local.reshape(-1), weights=np.repeat(rates, paths.shape[1]),
                                       minlength=used.size)
                busy = np.concatenate((used[:at], used[at + 1:]))
                busy_rate = np.concatenate((per_used[:at], per_used[at + 1:]))
            else:
                rates = _progressive_fill(paths, self.capacity, caps, self.pad, self._sat_threshold)
                link_rate = np.bincount(paths.reshape(-1), weights=np.repeat(rates, paths.shape[1]),
                                        minlength=n_links)
                link_rate[self.pad] = 0.0
                link_rate.flags.writeable = False
            rates.flags.writeable = False
            if len(self._memo) >= self._memo_size:
                self._memo.clear()
            # [1]: per-link rates (built on demand from [3] and [4], the crossed links and their
            # rates, when those are listed); [2]: entrant shares, on demand
            entry = self._memo[key] = [rates, link_rate, None, busy, busy_rate]
        else:
            self.memo_hits += 1
        self._rate[:n] = entry[0]
        self._link_rate = entry[1]
        self._busy, self._busy_rate = entry[3], entry[4]
        self._entry = entry

    def next_completion(self) -> tuple[float, int] | None:
        """(time, flow id) of the earliest finishing sized flow, or None (ties: the earlier added)."""
        n = self._n
        if not n:
            return None
        self._settle()
        rate, rem = self._rate[:n], self._rem[:n]
        moving = ((rate > 0) & (rem < np.inf)).nonzero()[0]
        if not moving.size:
            return None
        t = self.now + np.maximum(rem[moving], 0.0) / rate[moving]
        j = int(t.argmin())
        return float(t[j]), self._ids[int(moving[j])]

