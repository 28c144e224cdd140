"""Prefix caches of a group of instances: LRU over 512-token blocks keyed by trace hash_ids.

A hash id names a block *and everything before it*, so an instance's cached prefix for a request
is the number of leading hash ids it holds. A group-wide index (hash id -> bitmask of instances
holding it, stored complemented so that it ascends along a chain) answers "prefix length on every
instance" with a few binary searches over the request's blocks.
"""
from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict

import numpy as np

FEW = 8
"""Layers of :attr:`PrefixHits.writes` with at most this many instances are index tuples, which
callers write entry by entry (with Python floats: the same IEEE operations as numpy's, without an
array operation's fixed cost); larger ones are index arrays, for one fancy-indexed write."""


class _Holders(dict):
    """The group's index: hash id -> the complement (``~``) of the bitmask of the instances
    holding the block, so that the values ascend along a chain (its holder sets shrink) and
    :func:`bisect.bisect_right` can search it with ``__getitem__`` as key; a block nobody holds
    reads as ``~0 = -1``, above every held one."""

    __slots__ = ()

    def __missing__(self, key: int) -> int:
        return -1


class PrefixCacheGroup:
    """LRU block caches of ``n`` instances, ``capacity_blocks`` each."""

    def __init__(self, n: int, capacity_blocks: int) -> None:
        if capacity_blocks < 0:
            raise ValueError(f"capacity_blocks must be >= 0, got {capacity_blocks}")
        self.n = n
        self.capacity = int(capacity_blocks)
        self._lru: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(n)]
        self._holders = _Holders()  # hash id -> ~(bitmask of the instances holding it)
        self._bits_cache: dict[int, np.ndarray] = {}
        self._members: dict[int, np.ndarray] = {}
        self._few: dict[int, tuple[int, ...]] = {}
        self.full = (1 << n) - 1  # the mask of every instance

    def prefix_runs(self, hash_ids: tuple[int, ...] | list[int]) -> list[tuple[int, int]]:
        """The request's chain as runs of equal holder sets: ``[(holder bitmask, depths), ...]``
        from the first block on, up to the first block nobody holds (see :meth:`hits`)."""
        return self.hits(hash_ids).runs

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
        """:meth:`prefix_blocks` as a :class:`PrefixHits`: the chain's runs of equal holder sets
        and, built in the same pass, :attr:`PrefixHits.writes` (expanded further only as asked).

        Because :meth:`insert` keeps every instance's content prefix-closed (holding a block
        implies holding its predecessors), the holder sets along a request's chain are nested and
        shrink with depth, so the index's values (the complements of the holder masks) ascend
        along it and :func:`bisect.bisect_right` finds where each run ends: O(changes x
        log(blocks)) lookups, made in C. A run of one block (the shared first block of a system
        prompt, a conversation held by one instance more than its next turn) is checked first."""
        end = len(hash_ids)
        runs: list[tuple[int, int]] = []  # (holder mask, number of consecutive depths with it)
        out: list | None = []
        base = 0
        if end:
            key = self._holders.__getitem__  # ~holder mask; ~0 = -1 for a block nobody holds
            everyone = ~self.full
            lo = 0
            v = key(hash_ids[0])
            while v != -1:
                nxt = lo + 1
                w = key(hash_ids[nxt]) if nxt < end else -1
                if w == v:
                    nxt = bisect_right(hash_ids, v, nxt + 1, end, key=key)
                    w = key(hash_ids[nxt]) if nxt < end else -1
                mask = ~v
                runs.append((mask, nxt - lo))
                if v == everyone:  # held everywhere (the first run only): the base
                    base = nxt
                elif out is not None:
                    if ~w & v:  # the deeper holders are not a subset (never: every cache is prefix-closed)
                        out = None
                    else:  # this layer's instances that no deeper one holds: mask & ~deeper
                        out.append((self.few(mask & w) if mask.bit_count() <= FEW else self.members(mask), nxt))
                lo, v = nxt, w
        return PrefixHits(self, runs, None if out is None else (base, out))

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

    def few(self, mask: int) -> tuple[int, ...]:
        """Indices of the instances in ``mask``, a mask of few bits, as a tuple (no n-wide array;
        memoised like :meth:`_bits`: a conversation's holders recur turn after turn)."""
        idx = self._few.get(mask)
        if idx is None:
            out = []
            m = mask
            while m:
                low = m & -m
                out.append(low.bit_length() - 1)
                m ^= low
            idx = tuple(out)
            if len(self._few) > 4096:
                self._few.clear()
            self._few[mask] = idx
        return idx

    def members(self, mask: int) -> np.ndarray:
        """Indices of the instances in ``mask`` (int64 array; memoised like :meth:`_bits`)."""
        idx = self._members.get(mask)
        if idx is None:
            if mask.bit_count() <= FEW:  # a conversation's few holders: no n-wide bit array
                idx = np.array(self.few(mask), dtype=np.int64)
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
        holders = self._holders  # complements: ~(mask | bit) = ~mask & ~bit
        get = holders.get
        touch = lru.move_to_end
        add = ~bit
        for h in reversed(hash_ids[:capacity]):
            if h in lru:
                touch(h)
            else:
                lru[h] = None
                holders[h] = get(h, -1) & add
        excess = len(lru) - capacity
        if excess > 0:
            pop = lru.popitem
            for _ in range(excess):
                old = pop(last=False)[0]
                v = holders[old] | bit  # ~(mask & ~bit)
                if v != -1:
                    holders[old] = v
                else:
                    del holders[old]

    def blocks_held(self, i: int) -> int:
        return len(self._lru[i])


class PrefixHits:
    """Leading blocks of one prompt cached on every instance of a group, as the holder runs of
    :meth:`PrefixCacheGroup.prefix_runs`, expanded on demand into the dense array (:meth:`dense`,
    equal to :meth:`PrefixCacheGroup.prefix_blocks`), and as the layer writes built with them
    (:attr:`writes`): the runs' holder sets are nested, so the instances fall into a few layers of equal hit
    length (often every instance holds the system prompt and one the conversation), which lets
    a decision compute one value per layer instead of one per instance."""

    __slots__ = ("_dense", "group", "runs", "writes")

    def __init__(self, group: PrefixCacheGroup, runs: list[tuple[int, int]],
                 writes: tuple[int, list[tuple[tuple[int, ...] | np.ndarray, int]]] | None) -> None:
        self.group = group
        self.runs = runs
        self.writes = writes
        """The layers as the writes that build :meth:`dense` with the fewest operations:
        ``(base, [(instances, blocks), ...])``, every instance holding ``base`` blocks but those
        of the groups; writing the groups in order over an array filled with ``base`` gives
        :meth:`dense`. A layer of more than :data:`FEW` instances is its
        memoised index array (the same holder sets recur), which deeper layers then overwrite; a
        smaller one is a tuple of the instances no deeper layer holds, each written once. None
        if the holder sets are not nested (never, while :meth:`PrefixCacheGroup.insert` keeps
        every cache prefix-closed)."""
        self._dense: np.ndarray | None = None

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
