"""Flow-level network: max-min fair sharing of directed link capacity among active flows.

Rates are recomputed by progressive filling whenever a flow starts or ends or a capacity changes;
between those instants every flow moves at a constant rate, so the simulator only needs the time
of the next completion. Per-link byte counters integrate the rates exactly like switch port
counters, so the simulator's telemetry is computed the way the Ryu controller computes it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-9


def max_min_rates(paths: np.ndarray, capacity: np.ndarray, caps: np.ndarray, pad: int) -> np.ndarray:
    """Max-min fair rates (bytes/s) of flows over directed links.

    ``paths``: (F, H) link indices padded with ``pad``; ``capacity``: per-link bytes/s (padding
    entry +inf); ``caps``: per-flow demand limit (inf = greedy). Progressive filling: raise every
    unfrozen flow's rate equally until a link saturates or a flow reaches its cap, freeze those,
    repeat."""
    n_flows = paths.shape[0]
    rates = np.zeros(n_flows)
    if n_flows == 0:
        return rates
    n_links = capacity.shape[0]
    remaining = capacity.astype(float).copy()
    active = np.ones(n_flows, dtype=bool)
    for _ in range(n_flows + n_links):
        if not active.any():
            break
        act_paths = paths[active]
        counts = np.bincount(act_paths.reshape(-1), minlength=n_links).astype(float)
        counts[pad] = 0.0
        used = counts > 0
        link_share = np.full(n_links, np.inf)
        link_share[used] = remaining[used] / counts[used]
        inc = link_share.min() if used.any() else np.inf
        headroom = caps[active] - rates[active]
        inc = min(inc, headroom.min())
        if not np.isfinite(inc):
            raise ValueError("a flow has neither a finite path capacity nor a rate cap")
        inc = max(inc, 0.0)
        rates[active] += inc
        remaining -= inc * counts
        saturated = used & (remaining <= _EPS * np.maximum(capacity, 1.0))
        saturated[pad] = False
        capped = np.isfinite(caps) & (caps - rates <= _EPS * np.maximum(np.where(np.isfinite(caps), caps, 1.0), 1.0))
        frozen = saturated[paths].any(axis=1) | capped
        active &= ~frozen
    return rates


@dataclass
class Flow:
    flow_id: int
    path: np.ndarray  # (MAX_HOPS,) padded link indices
    remaining: float  # bytes left; inf for background flows without a size
    cap: float  # bytes/s demand limit, inf = greedy
    tag: object = None  # owner payload (request id, scenario flow name)
    rate: float = 0.0


class FlowNetwork:
    """Active flows on a fat-tree's directed links; the simulator drives time forward."""

    def __init__(self, capacity: np.ndarray, pad: int) -> None:
        self.nominal = capacity.astype(float).copy()
        self.capacity = self.nominal.copy()
        self.pad = pad
        self.flows: dict[int, Flow] = {}
        self.now = 0.0
        self.link_bytes = np.zeros_like(self.nominal)  # cumulative bytes per link (port counters)
        self.link_rate = np.zeros_like(self.nominal)
        self._next_id = 0
        self.recomputes = 0
        self.version = 0  # bumped whenever rates may have changed
        self._share_version = -1
        self._share: np.ndarray | None = None

    def advance(self, t: float) -> None:
        """Move time to ``t`` at the current rates (no completions may lie before ``t``)."""
        dt = t - self.now
        if dt < 0:
            raise ValueError(f"time went backwards: {t} < {self.now}")
        if dt > 0 and self.flows:
            self.link_bytes += self.link_rate * dt
            for f in self.flows.values():
                if f.rate:
                    f.remaining -= f.rate * dt
        self.now = t

    def add(self, path: np.ndarray, size: float, cap: float = np.inf, tag: object = None) -> int:
        fid = self._next_id
        self._next_id += 1
        self.flows[fid] = Flow(fid, path, float(size), float(cap), tag)
        self._recompute()
        return fid

    def remove(self, fid: int) -> Flow:
        f = self.flows.pop(fid)
        self._recompute()
        return f

    def set_cap(self, fid: int, cap: float) -> None:
        """Change flow ``fid``'s demand limit (bytes/s, inf = greedy)."""
        self.flows[fid].cap = float(cap)
        self._recompute()

    def set_path(self, fid: int, path: np.ndarray) -> None:
        """Move flow ``fid`` to ``path`` (rerouting), its remaining bytes unchanged."""
        self.flows[fid].path = path
        self._recompute()

    def set_paths(self, moves: dict[int, np.ndarray]) -> None:
        """Move several flows at once (one recomputation)."""
        for fid, path in moves.items():
            self.flows[fid].path = path
        self._recompute()

    def set_capacity(self, links: np.ndarray | list[int], factor: float) -> None:
        self.capacity[np.asarray(links, dtype=int)] = self.nominal[np.asarray(links, dtype=int)] * factor
        self._recompute()

    def capacity_factor(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            f = np.where(np.isfinite(self.nominal), self.capacity / self.nominal, 1.0)
        return f

    def entrant_share(self) -> np.ndarray:
        """Bytes/s a new flow would get on every link now: the level ``x`` at which
        ``x + sum(min(rate_f, x)) = capacity`` over the link's flows (a flow slower than ``x``
        keeps its rate, being bottlenecked elsewhere; faster ones would share down to ``x``).
        Equals ``max_j (capacity - S_j) / (k - j + 1)`` over the link's ``k`` rates sorted
        ascending with ``S_j`` the sum of the ``j`` smallest. Padding entry +inf; cached until
        the rates change."""
        if self._share_version == self.version and self._share is not None:
            return self._share
        share = self.capacity.astype(float).copy()
        flows = list(self.flows.values())
        if flows:
            paths = np.stack([f.path for f in flows])
            rates = np.repeat([f.rate for f in flows], paths.shape[1])
            links = paths.reshape(-1)
            keep = links != self.pad
            links, rates = links[keep], rates[keep]
            order = np.lexsort((rates, links))
            links, rates = links[order], rates[order]
            starts = np.flatnonzero(np.r_[True, links[1:] != links[:-1]])
            counts = np.diff(np.r_[starts, links.size])
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
        self._share, self._share_version = share, self.version
        return share

    def _recompute(self) -> None:
        self.recomputes += 1
        self.version += 1
        flows = list(self.flows.values())
        if not flows:
            self.link_rate[:] = 0.0
            return
        paths = np.stack([f.path for f in flows])
        caps = np.array([f.cap for f in flows])
        rates = max_min_rates(paths, self.capacity, caps, self.pad)
        for f, r in zip(flows, rates):
            f.rate = float(r)
        self.link_rate = np.bincount(paths.reshape(-1), weights=np.repeat(rates, paths.shape[1]),
                                     minlength=self.nominal.shape[0])
        self.link_rate[self.pad] = 0.0

    def next_completion(self) -> tuple[float, int] | None:
        """(time, flow id) of the earliest finishing sized flow, or None."""
        best: tuple[float, int] | None = None
        for f in self.flows.values():
            if f.rate > 0 and np.isfinite(f.remaining):
                t = self.now + max(f.remaining, 0.0) / f.rate
                if best is None or t < best[0]:
                    best = (t, f.flow_id)
        return best
