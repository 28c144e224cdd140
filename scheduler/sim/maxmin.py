"""Max-min fair rates of a set of flows on directed links, by progressive filling.

:func:`max_min_rates` performs the same floating-point operations as plain progressive filling in
the same order (see :func:`_progressive_fill`), so the vectorised form changes no bit of any
result; :class:`scheduler.sim.network.FlowNetwork` calls it whenever its flow set or a capacity changes.
"""
from __future__ import annotations

import math

import numpy as np

_ROW_VIEWS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
"""Unsigned type as wide as a row of bools of that many links: nonzero iff any link is set."""

COMPACT_BELOW = 4
"""Progressive filling runs on the crossed links alone when the flows' padded path entries times
this are fewer than the fabric's links (the renumbering costs a sort of those entries; a round
then costs the crossed links, not the fabric's)."""

_EPS = 1e-9
# the ufuncs behind ndarray.min / .any, without the methods' Python-level dispatch
_min = np.minimum.reduce
_any_rows = np.logical_or.reduce
_count = np.count_nonzero


def max_min_rates(paths: np.ndarray, capacity: np.ndarray, caps: np.ndarray, pad: int) -> np.ndarray:
    """Max-min fair rates (bytes/s) of flows over directed links.

    ``paths``: (F, H) link indices padded with ``pad``; ``capacity``: per-link bytes/s (padding
    entry +inf); ``caps``: per-flow demand limit (inf = greedy). Progressive filling: raise every
    unfrozen flow's rate equally until a link saturates or a flow reaches its cap, freeze those,
    repeat."""
    if paths.shape[0] == 0:
        return np.zeros(0)
    return _progressive_fill(paths, capacity, caps, pad, _saturation_threshold(capacity, pad))


def _saturation_threshold(capacity: np.ndarray, pad: int) -> np.ndarray:
    """Remaining capacity at or below which a link is saturated: 1e-9 x max(capacity, 1); the
    padding link never is (-inf)."""
    threshold = _EPS * np.maximum(capacity, 1.0)
    threshold[pad] = -np.inf
    return threshold


def _compact(paths: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(the links ``paths`` cross and ``pad``, ``paths`` as positions in that list, the position
    of ``pad``). The flows' rows keep their order and every row its links' order."""
    flat = np.sort(paths, axis=None)
    first = np.empty(flat.size, dtype=bool)
    first[0] = True
    np.not_equal(flat[1:], flat[:-1], out=first[1:])
    used = flat[first]
    at = int(np.searchsorted(used, pad))
    if at == used.size or used[at] != pad:
        used = np.concatenate((used[:at], [pad], used[at:]))
    return used, np.searchsorted(used, paths), at


def _progressive_fill(paths: np.ndarray, capacity: np.ndarray, caps: np.ndarray, pad: int,
                      sat_threshold: np.ndarray, rounds: int | None = None) -> np.ndarray:
    """:func:`max_min_rates` for F >= 1 flows; ``sat_threshold`` from :func:`_saturation_threshold`.

    Bit-for-bit the textbook loop (raise every active rate by ``inc`` = the smallest link share
    remaining / active flows, or the smallest cap headroom; subtract ``inc`` x active flows from
    every link; freeze the flows crossing a saturated link or at their cap), with less work per
    round: every active flow has received the same increments in the same order, so their common
    rate is one scalar ``level``; link counts shrink by the flows frozen instead of being recounted;
    a link no active flow crosses (the padding one included) gets remaining +inf and count 1, which
    makes its share +inf and keeps it unsaturated without any mask (it never carries an active flow
    again). Every value that reaches a result is computed by the same operations on the same
    operands as before. Paths 1, 2, 4 or 8 links wide (:class:`FlowNetwork` pads its own to 8)
    test "crosses a saturated link" with one integer view per flow instead of a row reduction.
    When the flows cross few of the fabric's links (:data:`COMPACT_BELOW`), the filling runs on
    those links alone: a link no flow crosses only ever contributes a share of +inf, which no
    minimum picks, so every value is the same as over all links (``rounds``: the round limit of
    the whole fabric, kept)."""
    n_flows, width = paths.shape
    n_links = capacity.shape[0]
    if rounds is None:  # a whole fabric's call (a call on crossed links passes the fabric's limit)
        rounds = n_flows + n_links
        if paths.size * COMPACT_BELOW < n_links:
            # few flows on a large fabric: fill on the links they cross (and the padding link) alone
            used, local, at = _compact(paths, pad)
            return _progressive_fill(local, capacity[used], caps, at, sat_threshold[used], rounds)
    counts = np.bincount(paths.reshape(-1), minlength=n_links).astype(float)
    counts[pad] = 0.0
    idle = counts == 0.0
    remaining = np.where(idle, np.inf, capacity)
    np.maximum(counts, 1.0, out=counts)  # idle links: count 1 (counts are whole numbers)
    rates = np.zeros(n_flows)
    act = np.arange(n_flows)
    act_paths = paths
    row_view = _ROW_VIEWS.get(width) if paths.flags.c_contiguous else None
    capped = _count(np.isfinite(caps)) > 0
    if capped:
        act_caps = caps.astype(float)
        act_cap_thr = _EPS * np.maximum(np.where(np.isfinite(caps), caps, 1.0), 1.0)
    share = np.empty(n_links)
    step = np.empty(n_links)
    level = 0.0
    for _ in range(rounds):
        if act.size == 0:
            break
        np.divide(remaining, counts, out=share)
        inc = share[share.argmin()]  # the minimum (argmin: the same value, less dispatch than min)
        if capped:
            head = act_caps - level
            inc = min(inc, head[head.argmin()])
        if not math.isfinite(inc):
            raise ValueError("a flow has neither a finite path capacity nor a rate cap")
        inc = max(inc, 0.0)
        level = level + inc
        np.multiply(inc, counts, out=step)
        remaining -= step
        crossed = (remaining <= sat_threshold)[act_paths]
        if row_view is not None:
            frozen = crossed.view(row_view).reshape(-1) != 0
        else:
            frozen = _any_rows(crossed, axis=1)
        if capped:
            frozen |= act_caps - level <= act_cap_thr
        k = _count(frozen)
        if not k:
            continue
        if k == frozen.size:  # the last round: its flows get ``level`` below, nothing left to count
            break
        rates[act[frozen]] = level
        counts -= np.bincount(act_paths[frozen].reshape(-1), minlength=n_links)
        counts[pad] = 1.0
        idle = counts == 0.0
        np.copyto(remaining, np.inf, where=idle)
        np.maximum(counts, 1.0, out=counts)
        keep = ~frozen
        act, act_paths = act[keep], act_paths[keep]
        if capped:
            act_caps, act_cap_thr = act_caps[keep], act_cap_thr[keep]
    rates[act] = level  # the last round's flows (and any the round limit left active)
    return rates
