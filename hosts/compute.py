"""The compute of one host agent's GPU instance on the wall clock.

A :class:`ComputeEngine` wraps a :class:`scheduler.model.instance.InstanceModel` (the simulator's timing:
prefill FIFO, continuous decode batches) and a thread that releases the model's events when the
wall clock reaches them. It knows nothing of sockets: ``emit`` reports events (``hosts.messages``
reports) and ``send`` starts a KV stream (a ``Send`` command), so the same engine runs in the
agent process and, in tests, in-process with a fake network.

Clock: after ``reset`` the instance's virtual seconds are ``(time.time() - t_reset) / time_scale``;
every event carries ``time.time()`` stamps of the model's exact times (``t_reset + virtual x
time_scale``), and is emitted once the wall clock has reached it.

* prefill role: ``prefill(cmd)`` queues the prompt at the current virtual time; when its end
  comes, ``prefilled`` is emitted and then ``send(cmd.stream())`` streams the KV bytes (the caller
  runs it on its own thread, so the next prefill is never delayed by a transfer). With the config's
  ``timing.kv_streaming = "layer-wise"`` the stream starts instead once the prompt's first layer
  is computed (prefill start + duration / ``model.layers``): ``send`` gets a ``Send`` with a
  ``layer_schedule``, one ``[wall time, bytes]`` per layer (the moment that layer's KV exists and
  the bytes sent up to it), so the sender writes each layer's bytes as it completes and the last
  layer's at the prefill's end, as Mooncake's and Splitwise's layer-wise transfer do and as the
  simulator's rate-capped flow models it; ``prefilled`` still comes at the end.
* decode role: ``expect(cmd)`` announces a request; ``kv_received(transfer_id, t_end)`` (the
  receiver's last-byte stamp) completes its KV. When both are known the request joins the batch
  at the later of the two (KV stamped before ``expect`` waits for it), or queues FIFO;
  ``first_token`` and ``finished`` follow when their times come.

Thread safety: every method may be called from any thread; the model is guarded by one
condition variable, which also wakes the release thread when the next due time changes.
"""
from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from hosts.messages import (
    Expect,
    Finished,
    FirstToken,
    Prefill,
    Prefilled,
    ProtocolError,
    Report,
    ResetDone,
    Send,
)

if TYPE_CHECKING:
    from scheduler.model.instance import InstanceModel

MAX_UNCLAIMED = 4096
"""KV arrivals kept while no ``expect`` names them (calibration streams, a late ``expect``)."""


class ComputeEngine:
    """One instance's compute for an agent (see the module doc)."""

    def __init__(self, emit: Callable[[Report], None], send: Callable[[Send], None]) -> None:
        self._emit = emit
        self._send = send
        self._cond = threading.Condition()
        self._model: InstanceModel | None = None
        self.role: str | None = None
        self.t_reset = 0.0
        self.time_scale = 1.0
        self._prefills: list[tuple[float, int, float, Prefill]] = []  # (end, seq, start, cmd)
        self._streams: list[tuple[float, int, float, float, Prefill]] = []  # (first layer, seq, start, end, cmd)
        self.layers = 0  # layers of the model when its KV streams layer by layer, else 0
        self._seq = 0
        self._expected: dict[int, Expect] = {}  # transfer id -> expect command, KV not yet in
        self._unclaimed: OrderedDict[int, float] = OrderedDict()  # transfer id -> virtual arrival
        self._requests: dict[int, Expect] = {}  # transfer id -> expect command, in the batch
        self._reported: dict[int, int] = {}  # transfer id -> decode events emitted so far
        self._closed = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ clock
    def _virtual(self, wall: float) -> float:
        return (wall - self.t_reset) / self.time_scale

    def _wall(self, virtual: float) -> float:
        return self.t_reset + virtual * self.time_scale

    # ------------------------------------------------------------------ commands
    def reset(self, config: dict, role: str, time_scale: float) -> ResetDone:
        """A fresh instance of ``role`` for ``config`` (``ExperimentConfig.to_dict()``); the
        clock restarts now. Returns the ``reset`` reply; ``ProtocolError`` on a bad config."""
        # Imported here: numpy and the model cost each of 64 agents CPU at start-up, and only
        # agents that model compute need them.
        from scheduler.model.config import ConfigError, config_from_dict
        from scheduler.model.instance import InstanceModel

        try:
            cfg = config_from_dict(config)
            model = InstanceModel(cfg, role)
        except (ConfigError, ValueError) as exc:
            raise ProtocolError(f"reset: bad config: {exc}") from None
        with self._cond:
            if self._closed:
                raise ProtocolError("reset: the agent is shutting down")
            self._model, self.role, self.time_scale = model, role, float(time_scale)
            self.layers = int(cfg.model.layers) if cfg.timing.kv_streaming == "layer-wise" else 0
            self.t_reset = time.time()
            self._prefills.clear()
            self._streams.clear()
            self._expected.clear()
            self._unclaimed.clear()
            self._requests.clear()
            self._reported.clear()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="compute", daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return ResetDone(role, self.t_reset)

    def prefill(self, cmd: Prefill) -> None:
        """Queue a validated ``prefill`` command; ``ProtocolError`` unless this is a prefill
        instance."""
        with self._cond:
            model = self._require("prefill", "prefill")
            now = self._virtual(time.time())
            start, end = model.submit_prefill(now, cmd.transfer_id, cmd.input_tokens, cmd.cached_tokens)
            self._seq += 1
            heapq.heappush(self._prefills, (end, self._seq, start, cmd))
            if self.layers and cmd.bytes > 0:  # the stream starts with the first layer's KV
                heapq.heappush(self._streams, (start + (end - start) / self.layers, self._seq, start, end, cmd))
            self._cond.notify_all()

    def expect(self, cmd: Expect) -> None:
        """Announce a validated ``expect`` command; ``ProtocolError`` unless this is a decode
        instance and the transfer id is new."""
        with self._cond:
            self._require("expect", "decode")
            tid = cmd.transfer_id
            if tid in self._expected or tid in self._requests:
                raise ProtocolError(f"expect: transfer {tid} is already expected")
            arrived = self._unclaimed.pop(tid, None)
            if arrived is None:
                self._expected[tid] = cmd
            else:  # the KV came first: it joins now, when the request is known
                self._join(max(arrived, self._virtual(time.time())), cmd)

    def kv_received(self, transfer_id: int, t_end: float) -> None:
        """Transfer ``transfer_id`` finished arriving at wall time ``t_end``. Ignored unless this
        is a decode instance."""
        with self._cond:
            if self._model is None or self.role != "decode":
                return
            cmd = self._expected.pop(transfer_id, None)
            if cmd is not None:
                self._join(self._virtual(t_end), cmd)
                return
            self._unclaimed[transfer_id] = self._virtual(t_end)
            while len(self._unclaimed) > MAX_UNCLAIMED:
                self._unclaimed.popitem(last=False)

    def close(self) -> None:
        """Stop the release thread (pending events are dropped)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=2)

    # ------------------------------------------------------------------ internals
    def _require(self, op: str, role: str) -> InstanceModel:
        """The model, when this agent is a ``role`` instance; else ``ProtocolError`` naming ``op``."""
        if self._model is None:
            raise ProtocolError(f"{op}: this agent has no instance yet (send reset with role {role} first)")
        if self.role != role:
            raise ProtocolError(f"{op}: this agent is a {self.role} instance")
        return self._model

    def _join(self, t: float, cmd: Expect) -> None:
        assert self._model is not None
        tid = cmd.transfer_id
        self._requests[tid] = cmd
        self._model.kv_arrived(t, tid, cmd.input_tokens, cmd.output_tokens)
        self._cond.notify_all()

    def layer_schedule(self, start: float, end: float, nbytes: int) -> list[list[float]]:
        """``[wall time, bytes]`` per layer of a prefill over virtual ``[start, end)``: layer k
        (1-based) is computed at ``start + k x (end - start) / layers``, and with it the first
        ``round(nbytes x k / layers)`` bytes of the KV may leave (the last entry: all of them, at
        the prefill's end)."""
        n = self.layers
        return [[self._wall(start + k * (end - start) / n), round(nbytes * k / n)] for k in range(1, n + 1)]

    def _next_due(self) -> float | None:
        times = [self._prefills[0][0]] if self._prefills else []
        if self._streams:
            times.append(self._streams[0][0])
        if self._model is not None:
            nxt = self._model.next_due()
            if nxt is not None:
                times.append(nxt)
        return min(times) if times else None

    def _collect(self, upto: float) -> tuple[list[Report], list[Send]]:
        """Events due at or before virtual ``upto``: (reports, KV streams to start)."""
        msgs: list[Report] = []
        sends: list[Send] = []
        while self._streams and self._streams[0][0] <= upto:
            _, _, start, end, cmd = heapq.heappop(self._streams)
            sends.append(cmd.stream(self.layer_schedule(start, end, cmd.bytes)))
        while self._prefills and self._prefills[0][0] <= upto:
            end, _, start, cmd = heapq.heappop(self._prefills)
            msgs.append(Prefilled(cmd.transfer_id, self._wall(start), self._wall(end), cmd.request_id))
            if not (self.layers and cmd.bytes > 0):  # layer-wise: streaming since the first layer
                sends.append(cmd.stream())
        if self._model is not None and self.role == "decode":
            for ev in self._model.due(upto):
                expect = self._requests[ev.key]
                if ev.kind == "first_token":
                    assert ev.t_join is not None
                    msgs.append(FirstToken(ev.key, self._wall(ev.t_join), self._wall(ev.time), expect.request_id))
                else:
                    msgs.append(Finished(ev.key, self._wall(ev.time), expect.request_id))
                self._reported[ev.key] = self._reported.get(ev.key, 0) + 1
                if self._reported[ev.key] == 2:  # first token and finish (either order) told
                    del self._requests[ev.key], self._reported[ev.key]
        return msgs, sends

    def _loop(self) -> None:
        """Release events when the wall clock reaches them; sleep on the condition otherwise."""
        while True:
            with self._cond:
                if self._closed:
                    return
                nxt = self._next_due()
                if nxt is None:
                    self._cond.wait()
                    continue
                now = self._virtual(time.time())
                if nxt > now:
                    self._cond.wait((nxt - now) * self.time_scale)
                    continue
                msgs, sends = self._collect(max(now, nxt))
            for msg in msgs:  # outside the lock: a slow control socket never stalls the model
                self._emit(msg)
            for cmd in sends:
                self._send(cmd)
