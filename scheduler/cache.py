"""Prefix caches of a group of instances: LRU over 512-token blocks keyed by trace hash_ids.

A hash id names a block *and everything before it*, so an instance's cached prefix for a request
is the number of leading hash ids it holds. A group-wide index (hash id -> bitmask of instances
holding it) answers "prefix length on every instance" in one pass over the request's blocks.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np


class PrefixCacheGroup:
    """LRU block caches of ``n`` instances, ``capacity_blocks`` each."""

    def __init__(self, n: int, capacity_blocks: int) -> None:
        if capacity_blocks < 0:
            raise ValueError(f"capacity_blocks must be >= 0, got {capacity_blocks}")
        self.n = n
        self.capacity = int(capacity_blocks)
        self._lru: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(n)]
        self._holders: dict[int, int] = {}  # hash id -> bitmask of instances
        self._bits_cache: dict[int, np.ndarray] = {}
        self._members: dict[int, np.ndarray] = {}

    def prefix_runs(self, hash_ids: tuple[int, ...] | list[int]) -> list[tuple[int, int]]:
        """The request's chain as runs of equal holder sets: ``[(holder bitmask, depths), ...]``
        from the first block on, up to the first block nobody holds.

        Because :meth:`insert` keeps every instance's content prefix-closed (holding a block
        implies holding its predecessors), the holder sets along a request's chain are nested and
        shrink with depth. So it suffices to binary-search the depths where the holder set
        changes: O(changes x log(blocks)) dictionary lookups instead of one per block."""
        get = self._holders.get
        end = len(hash_ids)
        runs: list[tuple[int, int]] = []  # (holder mask, number of consecutive depths with it)
        lo = 0
        mask = get(hash_ids[0], 0) if end else 0
        while mask:
            a, b = lo, end - 1
            while a < b:
                mid = (a + b + 1) // 2
                if get(hash_ids[mid], 0) == mask:
                    a = mid
                else:
                    b = mid - 1
            runs.append((mask, a - lo + 1))
            lo = a + 1
            mask = get(hash_ids[lo], 0) if lo < end else 0
        return runs

    def prefix_blocks(self, hash_ids: tuple[int, ...] | list[int]) -> np.ndarray:
        """Leading blocks of ``hash_ids`` cached on each instance (array of length n)."""
        return self.blocks_of_runs(self.prefix_runs(hash_ids))

    def blocks_of_runs(self, runs: list[tuple[int, int]]) -> np.ndarray:
        """:meth:`prefix_blocks` from :meth:`prefix_runs`' runs."""
        if not runs:
            return np.zeros(self.n, dtype=np.int64)
        mask, count = runs[0]
        out = self._bits(mask) * count
        for mask, count in runs[1:]:
            out += self._bits(mask) * count
        return out

    def hits(self, hash_ids: tuple[int, ...] | list[int]) -> PrefixHits:
        """:meth:`prefix_blocks` as a :class:`PrefixHits` (expanded only as far as asked)."""
        return PrefixHits(self, self.prefix_runs(hash_ids))

    def _bits(self, mask: int) -> np.ndarray:
        """0/1 int64 array of the instances in ``mask``; the same masks recur request after
        request (the holders of a popular prefix), so they are memoised until the next insert."""
        bits = self._bits_cache.get(mask)
        if bits is None:
            width = (self.n + 7) // 8
            raw = np.frombuffer(mask.to_bytes(width, "little"), dtype=np.uint8)
            bits = np.unpackbits(raw, bitorder="little")[: self.n].astype(np.int64)
            if len(self._bits_cache) > 4096:
                self._bits_cache.clear()
            self._bits_cache[mask] = bits
        return bits

    def members(self, mask: int) -> np.ndarray:
        """Indices of the instances in ``mask`` (int64 array; memoised like :meth:`_bits`)."""
        idx = self._members.get(mask)
        if idx is None:
            if mask.bit_count() <= 8:  # a conversation's few holders: no n-wide bit array
                out = []
                m = mask
                while m:
                    low = m & -m
                    out.append(low.bit_length() - 1)
                    m ^= low
                idx = np.array(out, dtype=np.int64)
            else:
                idx = np.flatnonzero(self._bits(mask))
            idx.flags.writeable = False
            if len(self._members) > 4096:
                self._members.clear()
            self._members[mask] = idx
        return idx

    def prefix_blocks_of(self, i: int, hash_ids: tuple[int, ...] | list[int]) -> int:
        lru = self._lru[i]
        k = 0
        for h in hash_ids:
            if h not in lru:
                break
            k += 1
        return k

    def insert(self, i: int, hash_ids: tuple[int, ...] | list[int]) -> None:
        """Mark the request's blocks most recently used on instance ``i``, evicting LRU blocks.

        Blocks are touched from the last to the first, so a prefix's root blocks are the most
        recently used and eviction removes a chain's tail before its head (as vLLM's prefix
        cache does): what an instance holds of a conversation stays a prefix."""
        capacity = self.capacity
        if capacity == 0:
            return
        lru = self._lru[i]
        bit = 1 << i
        holders = self._holders
        get = holders.get
        touch = lru.move_to_end
        for h in reversed(hash_ids[:capacity]):
            if h in lru:
                touch(h)
            else:
                lru[h] = None
                holders[h] = get(h, 0) | bit
        excess = len(lru) - capacity
        if excess > 0:
            pop = lru.popitem
            keep = ~bit
            for _ in range(excess):
                old = pop(last=False)[0]
                m = holders[old] & keep
                if m:
                    holders[old] = m
                else:
                    del holders[old]

    def blocks_held(self, i: int) -> int:
        return len(self._lru[i])


class PrefixHits:
    """Leading blocks of one prompt cached on every instance of a group, as the holder runs of
    :meth:`PrefixCacheGroup.prefix_runs`, expanded on demand: into the dense array
    (:meth:`dense`, equal to :meth:`PrefixCacheGroup.prefix_blocks`), or into :meth:`layers`:
    the runs' holder sets are nested, so the instances fall into a few layers of equal hit
    length (often every instance holds the system prompt and one the conversation), which lets
    a decision compute one value per layer instead of one per instance."""

    __slots__ = ("group", "runs", "_dense", "_layers")

    def __init__(self, group: PrefixCacheGroup, runs: list[tuple[int, int]]) -> None:
        self.group = group
        self.runs = runs
        self._dense: np.ndarray | None = None
        self._layers: tuple | None | bool = False  # False: not computed yet

    def layers(self) -> tuple[int, list[tuple[np.ndarray, int]]] | None:
        """``(base, [(instances, blocks), ...])``: every instance holds ``base`` blocks except
        those of the listed groups, each group (an index array) a subset of the one before and
        holding ``blocks``; writing the groups in order over an array filled with ``base`` gives
        :meth:`dense`. None if the runs are not nested (never, while :meth:`PrefixCacheGroup.insert`
        keeps every cache prefix-closed)."""
        if self._layers is False:
            full = (1 << self.group.n) - 1
            runs = self.runs
            base = k = 0
            while k < len(runs) and runs[k][0] == full:  # held everywhere: part of the base
                base += runs[k][1]
                k += 1
            groups: list[tuple[np.ndarray, int]] | None = []
            blocks, prev = base, full
            for mask, count in runs[k:]:
                if mask & ~prev:
                    groups = None
                    break
                blocks += count
                groups.append((self.group.members(mask), blocks))
                prev = mask
            self._layers = None if groups is None else (base, groups)
        return self._layers

    def dense(self) -> np.ndarray:
        """Blocks per instance (int64 array of length n); computed once."""
        if self._dense is None:
            self._dense = self.group.blocks_of_runs(self.runs)
        return self._dense

    def at(self, i: int) -> int:
        """Blocks cached on instance ``i``."""
        if self._dense is not None:
            return int(self._dense[i])
        return sum(count for m, count in self.runs if m >> i & 1)
