"""The decision a policy returns and the per-request view it decides from.

:class:`DecisionContext` gives a policy everything it may look at for one request (queues, cache
hits, bytes to move, loads, tiers and the network cost oracle), each view computed at most once
and to the last bit what the plain dense computation gives; views that depend only on the
cluster's roles and topology are memoised for the run on :attr:`Cluster.memo`."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from scheduler.decision.oracle import NetworkOracle, OracleQuery
from scheduler.model.cache import PrefixCacheGroup, PrefixHits
from scheduler.model.cluster import Cluster, operand
from scheduler.model.trace import BLOCK_TOKENS, Request

__all__ = ["Decision", "DecisionContext"]

_ZERO = operand(0.0)
_operand = lru_cache(maxsize=64)(operand)  # a policy's weight, converted once


@dataclass
class Decision:
    """A policy's choice for one request."""

    prefill: int  # index into Cluster.prefill_ids
    decode: int  # index into Cluster.decode_ids


class _Lazy:
    """``functools.cached_property`` without its per-access lock (Python 3.11 takes one on every
    first access, which shows at a decision's microsecond scale): computed on first access, then
    an ordinary instance attribute."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)
        return value


class DecisionContext:
    """Everything a policy may look at for one request; each view is computed at most once.

    The prefix caches answer with :class:`~scheduler.model.cache.PrefixHits`, whose instances fall into
    a few layers of equal hit length; the prefill estimate, the decode miss fraction and the
    oracle cost are computed once per layer and written over its instances (``PrefixHits.writes``)
    instead of through dense per-instance arrays of hit lengths and bytes. Each entry is computed
    by the same operations on the same operands as the dense computation (a few instances' with
    Python floats: the same IEEE operations), so every view is the same to the last bit.

    ``turn`` is the decision's index in its run (1 for the first): policies that rotate among
    equally good instances (like a router breaking ties round-robin) rotate with it, so a
    decision replayed with another oracle (a staleness study's shadow) breaks ties the same way."""

    def __init__(self, cluster: Cluster, request: Request, now: float, oracle: NetworkOracle | None,
                 turn: int = 1, mean_output_tokens: float | None = None) -> None:
        self.cluster = cluster
        self.request = request
        self.now = now
        self.oracle = oracle
        self.turn = turn
        self.mean_output_tokens = float(request.output_tokens if mean_output_tokens is None else mean_output_tokens)
        """Mean output length of the requests decided so far in the run, this one included (the
        dispatcher's running mean; this request's own when not given): what
        :attr:`decode_admission_wait_s` assumes of the requests already on a decode instance."""
        self._costs: dict[int, np.ndarray] = {}

    @property
    def n_prefill(self) -> int:
        return self.cluster.prefill_ids.size

    @property
    def n_decode(self) -> int:
        return self.cluster.decode_ids.size

    @_Lazy
    def prefill_hits(self) -> PrefixHits:
        """The prompt's cached prefix on every prefill instance."""
        return self.cluster.prefill_cache.hits(self.request.hash_ids)

    @_Lazy
    def decode_hits(self) -> PrefixHits:
        """The prompt's cached prefix on every decode instance."""
        return self.cluster.decode_cache.hits(self.request.hash_ids)

    def _cached_tokens(self, hits: PrefixHits) -> np.ndarray:
        return np.minimum(hits.dense() * BLOCK_TOKENS, self.request.input_tokens)

    def _cached_at(self, hits: PrefixHits, i: int) -> int:
        return min(hits.at(i) * BLOCK_TOKENS, self.request.input_tokens)

    @_Lazy
    def prefill_cached_tokens(self) -> np.ndarray:
        return self._cached_tokens(self.prefill_hits)

    def prefill_cached_at(self, prefill: int) -> int:
        """``prefill_cached_tokens[prefill]`` without the array."""
        return self._cached_at(self.prefill_hits, prefill)

    @_Lazy
    def prefill_queue_s(self) -> np.ndarray:
        return self._prefill_queue()

    def _prefill_queue(self) -> np.ndarray:
        return np.maximum(self.cluster.prefill_busy_until - self.now, _ZERO)

    def _view_hits(self, view: str, cache: PrefixCacheGroup) -> PrefixHits:
        """The ``prefill_hits`` or ``decode_hits`` view (``cache``'s answer), set without the lazy
        attribute's two calls."""
        hits = self.__dict__.get(view)
        if hits is None:
            hits = self.__dict__[view] = cache.hits(self.request.hash_ids)
        return hits

    def _layer_prefill_s(self, part: tuple, n: int) -> list[float]:
        """Prefill compute of the base and of every layer of ``part`` (:attr:`PrefixHits.writes`)."""
        inp = self.request.input_tokens
        base, groups = part
        cached = [min(base * BLOCK_TOKENS, inp)]
        for _, b in groups:
            cached.append(min(b * BLOCK_TOKENS, inp))
        return self.cluster.timing.prefill_s_values(inp, cached, n)

    @_Lazy
    def prefill_estimate_s(self) -> np.ndarray:
        """Queue + prefill compute given each instance's cache hit (Mooncake Conductor's TTFT terms)."""
        views = self.__dict__  # the view used here, set without the lazy attribute's two calls
        queue = views.get("prefill_queue_s")
        if queue is None:
            queue = views["prefill_queue_s"] = self._prefill_queue()
        part = self._view_hits("prefill_hits", self.cluster.prefill_cache).writes
        if part is None:
            return queue + self.cluster.timing.prefill_s_array(self.request.input_tokens, self.prefill_cached_tokens)
        compute = self._layer_prefill_s(part, queue.size)
        est = queue + compute[0]
        for (idx, _), c in zip(part[1], compute[1:]):
            if type(idx) is tuple:  # a few instances: Python floats (the same IEEE addition)
                for i in idx:
                    est[i] = queue.item(i) + c
            else:
                est[idx] = queue[idx] + c
        return est

    @_Lazy
    def decode_cached_tokens(self) -> np.ndarray:
        return self._cached_tokens(self.decode_hits)

    def decode_cached_at(self, decode: int) -> int:
        """``decode_cached_tokens[decode]`` without the array."""
        return self._cached_at(self.decode_hits, decode)

    @_Lazy
    def decode_bytes(self) -> np.ndarray:
        """KV bytes each decode candidate needs moved: the prompt blocks it does not already hold."""
        missing = self.request.input_tokens - self.decode_cached_tokens
        return missing.astype(float) * self.cluster.timing.kv_bytes_per_token

    @_Lazy
    def decode_miss(self) -> np.ndarray:
        """Fraction of the prompt's KV each decode candidate lacks (0..1): cache-load's cache term."""
        inp = self.request.input_tokens
        denom = max(inp, 1)
        part = self.decode_hits.writes
        if part is None:
            return 1.0 - self.decode_cached_tokens / denom
        base, groups = part
        miss = np.full(self.n_decode, 1.0 - min(base * BLOCK_TOKENS, inp) / denom)
        for idx, b in groups:
            value = 1.0 - min(b * BLOCK_TOKENS, inp) / denom
            for i in (idx if type(idx) is tuple else (idx,)):  # entry by entry, or one fancy write
                miss[i] = value
        return miss

    @_Lazy
    def decode_load(self) -> np.ndarray:
        """Tokens assigned to each decode instance (running + on their way) / its running capacity."""
        return self.cluster.decode_assigned_tokens / self.cluster.decode_capacity_0d

    @property
    def decode_turnover_s(self) -> float:
        """Seconds a full decode batch takes to free its KV memory once: a request of
        :attr:`mean_output_tokens` output tokens at the step time of a batch holding the instance's
        whole running capacity (each request frees its prompt + output tokens when it ends, so a
        full batch frees its capacity at about capacity / this per second)."""
        cl = self.cluster
        return self.mean_output_tokens * cl.timing.decode_step_s(cl.decode_capacity_tokens)

    @_Lazy
    def decode_admission_wait_s(self) -> np.ndarray:
        """Expected seconds this request would wait for admission on each decode instance (its KV
        memory, not its link): the tokens by which the instance's assigned tokens (resident and on
        their way, as :attr:`decode_load` counts them) plus this request's exceed its running
        capacity, freed at capacity per :attr:`decode_turnover_s`::

            wait(d) = max(0, assigned(d) + min(need, capacity) - capacity) / capacity x turnover

        with need = prompt + output tokens (an instance admits a request alone even over its
        capacity, hence the ``min``). Zero while the request fits beside everything already
        assigned: then it cannot wait for memory. From the router's mirror only; O(|D|)."""
        cl = self.cluster
        cap = cl.decode_capacity_tokens
        need = min(self.request.input_tokens + self.request.output_tokens, cap)
        over = np.maximum(cl.decode_assigned_tokens + float(need - cap), 0.0)
        return over * (self.decode_turnover_s / cap)

    def decode_tiers(self, prefill: int) -> np.ndarray:
        """Tier (0..3) from prefill instance ``prefill`` to every decode instance."""
        return self.cluster.decode_tiers(prefill)

    def weighted_load(self, weight: float) -> np.ndarray:
        """``weight`` x :attr:`decode_load`, the weight applied as a 0-d array (:func:`operand`)."""
        return self.decode_load * _operand(weight)

    def tier_weights(self, prefill: int, per_tier: tuple[float, ...], weight: float) -> np.ndarray:
        """``weight`` x ``per_tier[tier]`` of every decode candidate from prefill instance
        ``prefill``: static for the run, so memoised on the cluster."""
        key = ("tier_weights", prefill, per_tier, weight)
        hit = self.cluster.memo.get(key)
        if hit is None:
            hit = self.cluster.memo[key] = weight * np.array(per_tier)[self.decode_tiers(prefill)]
        return hit

    def nearest_tier(self, prefill: int) -> np.ndarray:
        """Mask of the decode candidates in the nearest tier from prefill instance ``prefill`` that
        holds any: static for the run, so memoised on the cluster."""
        key = ("nearest_tier", prefill)
        hit = self.cluster.memo.get(key)
        if hit is None:
            tiers = self.decode_tiers(prefill)
            hit = self.cluster.memo[key] = tiers == tiers.min()
        return hit

    def transfer_delay_s(self, prefill: int) -> float:
        """Seconds from now until the KV leaves prefill instance ``prefill``: its queue and the
        prefill compute (after-prefill streaming) or the queue and one layer (layer-wise)."""
        if self.cluster.layer_wise:
            compute = float(self.prefill_estimate_s[prefill] - self.prefill_queue_s[prefill])
            return float(self.prefill_queue_s[prefill]) + compute / self.cluster.cfg.model.layers
        return self.prefill_estimate_s.item(prefill)

    def raw_transfer_cost_s(self, prefill: int) -> np.ndarray:
        """Oracle cost (seconds) of moving each candidate's bytes from prefill instance ``prefill``."""
        hit = self._costs.get(prefill)
        if hit is None:
            if self.oracle is None:
                raise RuntimeError("this policy needs a network cost oracle but none was configured")
            hit = self._costs[prefill] = self._oracle_cost(self.oracle, prefill)
        return hit

    def _oracle_cost(self, oracle: NetworkOracle, prefill: int) -> np.ndarray:
        """The oracle's cost vector; a striped transfer (``cluster.tp`` > 1) is priced by
        :meth:`NetworkOracle.striped_cost`. From its cost table (latency, seconds per byte of the
        bottleneck) when it has one: the candidates of one cache layer all need the same bytes,
        so a multiply-add over the table prices a layer, each entry as
        :meth:`NetworkOracle._finish` prices it."""
        cl = self.cluster
        req = self.request
        query = OracleQuery(cl.prefill_gpus[prefill], cl.decode_ids, None, self.now, req.req_id,
                            self.now + self.transfer_delay_s(prefill))
        if cl.tp > 1:  # striped over the instances' ranks: the slowest shard's cost
            return oracle.striped_cost(query._replace(nbytes=self.decode_bytes), cl.decode_rank_ids)
        table = oracle.table(query)
        if table is None:
            return oracle.cost(query._replace(nbytes=self.decode_bytes))
        latency, inv = table
        part = self._view_hits("decode_hits", cl.decode_cache).writes
        if part is None:
            return NetworkOracle._finish(latency, self.decode_bytes, inv)
        base, groups = part
        inp, kvpt = req.input_tokens, cl.timing.kv_bytes_per_token
        nbytes = float(inp - min(base * BLOCK_TOKENS, inp)) * kvpt
        if nbytes > 0:
            cost = inv * nbytes
            cost += latency
        else:
            cost = np.zeros(inv.shape)
        for idx, b in groups:
            nbytes = float(inp - min(b * BLOCK_TOKENS, inp)) * kvpt
            if type(idx) is tuple:  # a few instances: Python floats (the same IEEE operations)
                for i in idx:
                    cost[i] = nbytes * inv.item(i) + latency.item(i) if nbytes > 0 else 0.0
            else:
                cost[idx] = inv[idx] * nbytes + latency[idx] if nbytes > 0 else 0.0
        return cost

    def transfer_costs_s(self, prefills: list[int]) -> np.ndarray:
        """:meth:`transfer_cost_s` of each of ``prefills``, as the rows of one matrix, each row to
        the last bit what :meth:`transfer_cost_s` gives (and kept for :meth:`raw_transfer_cost_s`).
        From the oracle's cost tables, stacked and priced in one multiply-add (each entry as
        :meth:`NetworkOracle._finish` prices it), so a policy pricing many prefills pays the numpy
        calls once instead of once per prefill; an oracle without a table for a source, or a
        striped transfer, is priced row by row as :meth:`raw_transfer_cost_s` does."""
        cl = self.cluster
        oracle = self.oracle
        if oracle is None:
            raise RuntimeError("this policy needs a network cost oracle but none was configured")
        if cl.tp > 1:
            raw = np.array([self.raw_transfer_cost_s(p) for p in prefills])
        else:
            raw = np.empty((len(prefills), self.n_decode))
            at: list[int] = []
            latency: list[np.ndarray] = []
            inv: list[np.ndarray] = []
            now, dsts, gpus, rid, costs = self.now, cl.decode_ids, cl.prefill_gpus, self.request.req_id, self._costs
            delay = self.transfer_delay_s if cl.layer_wise else self.prefill_estimate_s.item  # the same float
            table_of, make = oracle.table, OracleQuery._make
            for i, p in enumerate(prefills):
                hit = costs.get(p)
                if hit is not None:
                    raw[i] = hit
                    continue
                query = make((gpus[p], dsts, None, now, rid, now + delay(p)))
                table = table_of(query)
                if table is None:
                    raw[i] = oracle.cost(query._replace(nbytes=self.decode_bytes))
                else:
                    at.append(i)
                    latency.append(table[0])
                    inv.append(table[1])
            if at:
                nbytes = self.decode_bytes
                moving = nbytes > 0
                if moving.all():
                    cost = np.array(inv) * nbytes
                    cost += np.array(latency)
                else:
                    with np.errstate(invalid="ignore"):  # 0 bytes x inf on a dead path: zeroed below
                        cost = np.array(inv) * nbytes
                    cost += np.array(latency)
                    cost[:, ~moving] = 0.0
                if len(at) == len(prefills):
                    raw = cost
                else:
                    raw[at] = cost
            costs.update(zip(prefills, raw))  # rows already there are replaced by equal ones
        if not cl.layer_wise:
            return raw
        layers = cl.cfg.model.layers
        est, queue = self.prefill_estimate_s, self.prefill_queue_s
        hidden = np.array([float(est[p] - queue[p]) * (layers - 1) / layers for p in prefills])
        return np.maximum(raw / layers, raw - hidden[:, None])

    def transfer_cost_s(self, prefill: int) -> np.ndarray:
        """The part of each candidate's transfer that lands in TTFT: the whole oracle cost after
        the prefill; streamed layer by layer, what the prefill compute cannot hide (at least the
        last layer's share): max(cost / layers, cost - compute x (layers - 1) / layers)."""
        cost = self.raw_transfer_cost_s(prefill)
        if not self.cluster.layer_wise:
            return cost
        layers = self.cluster.cfg.model.layers
        compute = float(self.prefill_estimate_s[prefill] - self.prefill_queue_s[prefill])
        return np.maximum(cost / layers, cost - compute * (layers - 1) / layers)


