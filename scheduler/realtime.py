"""Real-time replay: the simulator's cluster model driven by a wall clock and a real transport.

The ``emulate`` backend runs exactly the simulator's decision and compute model (policies, prefill
FIFOs, prefix caches, decode batches), but KV transfers are real byte streams through the emulated
fabric and their completions arrive asynchronously from the host agents. Events are released when
the (optionally dilated) wall clock reaches their virtual time; completion times are the agents'
own receive timestamps. Nothing here imports Mininet: a fake transport tests it without root.

Time: ``virtual = (wall - t0) / time_scale``. Emulated links run at ``real x scale / time_scale``
and transfers carry ``real bytes x scale``, so a transfer's virtual duration equals the real one.
"""
from __future__ import annotations

import heapq
import queue
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from scheduler.config import ExperimentConfig
from scheduler.policies.base import Policy
from scheduler.scenario import Action
from scheduler.simulator import _KV_ARRIVED, _SCENARIO, Simulator, _ReqState
from scheduler.trace import Request


class EmulationError(RuntimeError):
    """A transfer failed or the replay could not keep up; the message says which and why."""


@dataclass(frozen=True)
class TransferDone:
    transfer_id: int
    t_start_wall: float  # receiver's first byte (time.time())
    t_end_wall: float  # receiver's last byte
    nbytes: int
    error: str | None = None


class Transport(Protocol):
    """Moves ``nbytes`` (already scaled) from GPU ``src`` to GPU ``dst``; reports on ``done``."""

    done: "queue.Queue[TransferDone]"

    def start(self, transfer_id: int, request_id: int, src: int, dst: int, nbytes: int) -> None:
        ...


class ActionExecutor(Protocol):
    def apply(self, action: Action) -> None:
        ...


class Clock:
    """Virtual seconds since ``start()`` on a wall clock slowed down by ``time_scale``."""

    def __init__(self, time_scale: float = 1.0) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        self.time_scale = time_scale
        self.t0_wall = time.time()
        self.t0_mono = time.monotonic()

    def start(self) -> None:
        self.t0_wall = time.time()
        self.t0_mono = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self.t0_mono) / self.time_scale

    def virtual(self, wall: float) -> float:
        """Virtual time of a ``time.time()`` stamp (agents report wall-clock stamps)."""
        return (wall - self.t0_wall) / self.time_scale


class RealtimeReplay(Simulator):
    """A :class:`Simulator` whose transfers and scenario actions are executed for real."""

    label = "emulate"

    def __init__(self, cfg: ExperimentConfig, requests: list[Request], policy: Policy, actions: list[Action],
                 transport: Transport, executor: ActionExecutor, telemetry_source, clock: Clock,
                 byte_scale: float, transfer_id_base: int = 0, progress: bool = False,
                 transfer_timeout_s: float = 120.0, preroll_s: float = 2.0) -> None:
        super().__init__(cfg, requests, policy, actions, progress=progress, telemetry_source=telemetry_source)
        self.transport = transport
        self.executor = executor
        self.clock = clock
        self.byte_scale = byte_scale
        self.tid_base = transfer_id_base
        self.timeout_s = transfer_timeout_s
        self._in_flight: dict[int, float] = {}  # transfer id -> wall time started
        self._last_t = 0.0
        self.lag_s: list[float] = []  # how late (virtual s) each timed event was released
        self.preroll_s = preroll_s
        self._actions: queue.Queue[Action | None] = queue.Queue()
        self._action_error: Exception | None = None

    def run(self):
        self._seed_events()
        # Pre-roll: scenario actions due at t <= 0 (background flows of a steady scenario) are
        # applied before the clock starts, and given time to reach steady state and show up in
        # telemetry, as they are at full rate from t = 0 in the simulator.
        early = [e for e in self._heap if e[1] == _SCENARIO and e[0] <= 0]
        if early:
            self._heap = [e for e in self._heap if not (e[1] == _SCENARIO and e[0] <= 0)]
            heapq.heapify(self._heap)
            for e in sorted(early):
                self.executor.apply(e[3])
            time.sleep(self.preroll_s)
        self._worker = threading.Thread(target=self._action_loop, name="scenario-actions", daemon=True)
        self._worker.start()
        self.clock.start()
        try:
            return self._run_seeded()
        finally:
            self._actions.put(None)
            self._worker.join(timeout=30)

    def _action_loop(self) -> None:
        """Scenario actions run here so a slow one (starting processes in hosts) never holds up
        the replay's clock."""
        while True:
            a = self._actions.get()
            if a is None:
                return
            try:
                self.executor.apply(a)
            except Exception as exc:  # noqa: BLE001 - surfaced in the replay thread
                self._action_error = exc

    # ------------------------------------------------------------------ real-time event source
    def _next_event(self):
        while True:
            try:
                done = self.transport.done.get_nowait()
            except queue.Empty:
                done = None
            if done is not None:
                return self._completion(done)
            now = self.clock.now()
            if self._heap and self._heap[0][0] <= now:
                t, kind, _, payload = heapq.heappop(self._heap)
                self.lag_s.append(now - t)
                self._last_t = max(self._last_t, t)
                return t, kind, payload
            if not self._heap and not self._in_flight:
                return None
            wait = (self._heap[0][0] - now) * self.clock.time_scale if self._heap else 1.0
            self._check_stuck()
            try:
                done = self.transport.done.get(timeout=max(min(wait, 1.0), 0.0))
            except queue.Empty:
                continue
            return self._completion(done)

    def _completion(self, done: TransferDone):
        i = done.transfer_id - self.tid_base
        started = self._in_flight.pop(done.transfer_id, None)
        if started is None or not 0 <= i < len(self.states):
            raise EmulationError(f"completion of unknown transfer {done.transfer_id}")
        if done.error:
            s = self.states[i]
            raise EmulationError(f"KV transfer of request {s.req.req_id} ({self.tree.gpu_name(int(self.cluster.prefill_ids[s.p]))}"
                                 f" -> {self.tree.gpu_name(int(self.cluster.decode_ids[s.d]))}) failed: {done.error}")
        t = max(self.clock.virtual(done.t_end_wall), self._last_t)
        self._last_t = t
        return t, _KV_ARRIVED, i

    def _check_stuck(self) -> None:
        if not self._in_flight:
            return
        oldest = min(self._in_flight.values())
        if time.monotonic() - oldest > self.timeout_s * self.clock.time_scale:
            raise EmulationError(f"{len(self._in_flight)} KV transfers unfinished after "
                                 f"{self.timeout_s:g} s (a link down for good, or the emulator overloaded)")

    # ------------------------------------------------------------------ real transfers and actions
    def _sync(self, t: float) -> None:
        """Nothing to advance: the network is real."""

    def _schedule_net(self) -> None:
        """No simulated flows."""

    def _start_transfer(self, s: _ReqState, i: int, src: int, dst: int) -> None:
        nbytes = max(int(round(s.nbytes * self.byte_scale)), 1)
        tid = self.tid_base + i
        self._in_flight[tid] = time.monotonic()
        self.transport.start(tid, s.req.req_id, src, dst, nbytes)

    def _apply(self, a: Action) -> None:
        if self._action_error is not None:
            raise EmulationError(f"scenario action failed: {self._action_error}")
        self._actions.put(a)
