"""The compute of one GPU instance in virtual seconds: what a host agent runs.

Pure (no sockets, threads or clocks): the caller says what happened at which virtual time and asks
which events are due. The timing maths is the simulator's own: ``TimingModel.prefill_fifo`` for the
prefill FIFO and ``DecodeBatch`` (with the capacity of ``decode_capacity_tokens``) for continuous
batching, so an instance fed the simulator's arrivals reproduces the simulator's times exactly.

A prefill instance queues prompts FIFO (:meth:`InstanceModel.submit_prefill`). A decode instance
admits requests whose KV arrived (:meth:`InstanceModel.kv_arrived`) into its batch or its waiting
FIFO; :meth:`InstanceModel.due` yields ``first_token`` and ``finished`` events in time order and
:meth:`InstanceModel.next_due` says when the next one comes.

Request keys are ints unique within the instance; the decode batch breaks ties between requests
finishing at the same step by the smaller key (the simulator uses request indices, so keys that
grow with the request index reproduce its tie-breaking).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

from scheduler.model.config import ExperimentConfig
from scheduler.model.decode import DecodeBatch, decode_capacity_tokens
from scheduler.model.timing import TimingModel

ROLES = ("prefill", "decode")
FIRST_TOKEN, FINISHED = "first_token", "finished"


class RoleError(ValueError):
    """An operation of one role was asked of an instance of the other role."""


@dataclass(frozen=True)
class DecodeEvent:
    """``first_token`` (``t_join`` = when the request joined the batch) or ``finished`` of
    request ``key`` at virtual time ``time``."""

    kind: str
    time: float
    key: int
    t_join: float | None = None


class InstanceModel:
    """Compute of one prefill or decode instance (see the module doc)."""

    def __init__(self, cfg: ExperimentConfig, role: str) -> None:
        if role not in ROLES:
            raise RoleError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        self.role = role
        self.timing = TimingModel(cfg)
        self.busy_until = 0.0
        self.batch: DecodeBatch | None = None
        if role == "decode":
            self.batch = DecodeBatch(self.timing, decode_capacity_tokens(cfg, self.timing))
        self._now = 0.0  # latest decode change applied
        self._outbox: list[tuple[float, int, int, DecodeEvent]] = []  # (time, kind order, seq, event)
        self._seq = 0

    # ------------------------------------------------------------------ prefill
    def submit_prefill(self, t: float, key: int, input_tokens: int,
                       cached_tokens: int) -> tuple[float, float]:
        """Queue a prompt arriving at ``t``; returns its (start, end). FIFO: it starts when the
        instance is free, and runs ``TimingModel.prefill_s(input_tokens, cached_tokens)``."""
        self._require_role("prefill")
        start, end = self.timing.prefill_fifo(t, self.busy_until, input_tokens, cached_tokens)
        self.busy_until = end
        return start, end

    # ------------------------------------------------------------------ decode
    def kv_arrived(self, t: float, key: int, input_tokens: int, output_tokens: int) -> float | None:
        """Request ``key``'s KV is complete at ``t``: it joins the batch now (returns its first
        token time) when nobody waits and it fits, else it waits FIFO (returns None).

        Departures due strictly before ``t`` are applied first (at the same instant an arrival
        comes before a departure, as in the simulator). A ``t`` earlier than a change already
        applied is moved up to it: a real-time caller may learn of an arrival late."""
        batch = self._decode_batch()
        t = max(t, self._now)
        self._settle(t, inclusive=False)
        self._now = t
        first = batch.offer(t, key, input_tokens, output_tokens)
        if first is not None:
            self._post(DecodeEvent(FIRST_TOKEN, first, key, t))
        return first

    def next_due(self) -> float | None:
        """Virtual time of the next decode event (None when idle)."""
        if self.batch is None:
            return None
        times = [self._outbox[0][0]] if self._outbox else []
        nxt = self.batch.next_finish()
        if nxt is not None:
            times.append(nxt[0])
        return min(times) if times else None

    def due(self, t: float) -> list[DecodeEvent]:
        """Every decode event at or before ``t``, in time order (a request's first token before
        any finish at the same instant); departures admit waiting requests as they happen."""
        self._require_role("decode")
        self._settle(t, inclusive=True)
        out = []
        while self._outbox and self._outbox[0][0] <= t:
            out.append(heapq.heappop(self._outbox)[3])
        return out

    @property
    def running(self) -> int:
        return len(self.batch.members) if self.batch is not None else 0

    @property
    def waiting(self) -> int:
        return len(self.batch.waiting) if self.batch is not None else 0

    # ------------------------------------------------------------------ internals
    def _require_role(self, role: str) -> None:
        if self.role != role:
            raise RoleError(f"this is a {self.role} instance; {role} work was asked of it")

    def _decode_batch(self) -> DecodeBatch:
        """The decode batch (a decode instance always has one)."""
        self._require_role("decode")
        if self.batch is None:
            raise RoleError("this decode instance has no batch")
        return self.batch

    def _post(self, ev: DecodeEvent) -> None:
        self._seq += 1
        heapq.heappush(self._outbox, (ev.time, 0 if ev.kind == FIRST_TOKEN else 1, self._seq, ev))

    def _settle(self, t: float, inclusive: bool) -> None:
        """Apply the batch's departures due before ``t`` (or at ``t`` when ``inclusive``), each
        at its own time, exactly as the simulator's decode-done events do."""
        batch = self.batch
        assert batch is not None
        while True:
            nxt = batch.next_finish()
            if nxt is None or nxt[0] > t or (nxt[0] == t and not inclusive):
                return
            tf, key = nxt
            tf = max(tf, self._now)
            self._now = tf
            for joined, first in batch.depart(tf, key):
                self._post(DecodeEvent(FIRST_TOKEN, first, joined, tf))
            self._post(DecodeEvent(FINISHED, tf, key))
