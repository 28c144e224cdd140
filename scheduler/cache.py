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

    def prefix_blocks(self, hash_ids: tuple[int, ...] | list[int]) -> np.ndarray:
        """Leading blocks of ``hash_ids`` cached on each instance (array of length n).

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
        if not runs:
            return np.zeros(self.n, dtype=np.int64)
        mask, count = runs[0]
        out = self._bits(mask) * count
        for mask, count in runs[1:]:
            out += self._bits(mask) * count
        return out

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
        if self.capacity == 0:
            return
        lru = self._lru[i]
        bit = 1 << i
        holders = self._holders
        ids = hash_ids[: self.capacity]
        for h in reversed(ids):
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
                holders[h] = holders.get(h, 0) | bit
        while len(lru) > self.capacity:
            old, _ = lru.popitem(last=False)
            m = holders[old] & ~bit
            if m:
                holders[old] = m
            else:
                del holders[old]

    def blocks_held(self, i: int) -> int:
        return len(self._lru[i])
