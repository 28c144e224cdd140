"""Real-time replay: the simulator's decisions driven by a wall clock, with the compute and the KV
transfers of every request carried out by the host agents.

The ``emulate`` backend decides exactly as the simulator does (policies on the orchestrator's
mirror of the cluster: predicted prefill queues, decode assignments, both prefix caches), but
times nothing itself. At a request's arrival it tells the chosen decode instance's agent to
``expect`` the request and the chosen prefill instance's agent to ``prefill`` it; the agents model
their instance's compute with the simulator's timing (``scheduler.model.instance.InstanceModel``: the
prefill FIFO, the continuous decode batch), stream the KV bytes through the emulated fabric, and
report ``prefilled``, ``received``, ``first_token`` and ``finished`` with wall-clock stamps. The
records are built from those measured times. Arrivals and scenario actions are released when the
(optionally dilated) wall clock reaches their virtual time. Nothing here imports Mininet: an
in-process fake agent cluster tests it without root.

Time: ``virtual = (wall - t0) / time_scale``. Emulated links run at ``real x scale / time_scale``
and transfers carry ``real bytes x scale``, so a transfer's virtual duration equals the real one;
agents stretch compute by the same ``time_scale``.

A lost instance (``lost_hosts()`` names the agents a fault killed): its control connection closes,
every request on it is failed (``Dispatcher.failed``: no record, counted in ``failures()``), as is
every later request the policy sends there (a front end without health checks); transfer errors
of requests with a lost end are that loss, not a failure of the run. Any other agent failure
stops the run.
"""
from __future__ import annotations

import heapq
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from hosts.messages import AgentEvent, AgentFailure, Finished, FirstToken, KvReceived, Prefilled
from scheduler.decision.dispatch import Dispatcher, RequestState, build_oracles, oracle_kind
from scheduler.decision.oracle import NetworkOracle
from scheduler.model.config import ExperimentConfig
from scheduler.model.records import RequestRecord
from scheduler.model.scenario import Action
from scheduler.model.trace import Request
from scheduler.policies.base import Policy
from scheduler.progress import Progress
from topology.model import FatTree


class EmulationError(RuntimeError):
    """A transfer or an agent failed, or the replay could not keep up; the message says which
    request, which GPUs and why."""


# agent reports: the ``hosts.messages`` dataclasses (re-exported here, where the replay consumes them)


class Transport(Protocol):
    """The host agents as the replay drives them; reports arrive on ``events``.

    Commands raise :class:`EmulationError` when they cannot be delivered; ``reset`` returns once
    every agent has a fresh instance of its role (or raises)."""

    events: queue.Queue[AgentEvent]

    def reset(self, cfg: ExperimentConfig, prefill_gpus: Sequence[int], decode_gpus: Sequence[int],
              time_scale: float) -> None:
        ...

    def prefill(self, transfer_id: int, request_id: int, src: int, dst: int, input_tokens: int,
                cached_tokens: int, nbytes: int) -> None:
        """Prefill on GPU ``src``, then stream ``nbytes`` (already scaled) to GPU ``dst``."""
        ...

    def expect(self, transfer_id: int, request_id: int, dst: int, input_tokens: int,
               output_tokens: int) -> None:
        """Decode on GPU ``dst`` once transfer ``transfer_id`` has arrived."""
        ...


class ActionExecutor(Protocol):
    """Runs scenario actions on the fabric. An executor with ``apply_batch(actions)`` gets the
    actions of one instant together (the fabric's executor stops and starts flows in parallel);
    otherwise they come one by one through ``apply``. One with ``prepare(actions)`` gets the whole
    list once before the clock starts (the fabric's starts the background sinks and flow slots then)."""

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
        self.started = False  # before start() virtual times count from construction

    def start(self) -> None:
        self.t0_wall = time.time()
        self.t0_mono = time.monotonic()
        self.started = True

    def now(self) -> float:
        return (time.monotonic() - self.t0_mono) / self.time_scale

    def virtual(self, wall: float) -> float:
        """Virtual time of a ``time.time()`` stamp (agents report wall-clock stamps)."""
        return (wall - self.t0_wall) / self.time_scale


_SCENARIO, _ARRIVAL, _AGENT = 0, 1, 2
"""Event kinds; at one instant scenario actions come before arrivals (as in the simulator), and
agent reports never enter the heap."""


class RealtimeReplay:
    """The emulate backend's event loop: arrivals and scenario actions released on a wall clock,
    every decision made by the shared :class:`~scheduler.decision.dispatch.Dispatcher`, every request
    computed and moved by the host agents (this class is its :class:`~scheduler.decision.dispatch.Execution`)."""

    label = "emulate"

    def __init__(self, cfg: ExperimentConfig, requests: list[Request], policy: Policy, actions: list[Action],
                 transport: Transport, executor: ActionExecutor, telemetry_source, clock: Clock,
                 byte_scale: float, transfer_id_base: int = 0, progress: bool = False,
                 transfer_timeout_s: float = 120.0, preroll_s: float = 2.0, shadow: bool = False,
                 lost_hosts: Callable[[], frozenset[str]] = frozenset,
                 oracle_factory: Callable[[FatTree, str], NetworkOracle | None] | None = None,
                 fresh_source=None) -> None:
        self.cfg = cfg
        self.tree = FatTree(cfg.topology)
        self.policy = policy
        self.actions = actions or []
        # a real fabric has no ground truth: the perfect oracle is refused (truth=None), as the
        # emulate command does before it builds anything
        # ``shadow``: a fresh oracle (on ``fresh_source``, default the same history with no added
        # age) decides beside the stale one
        oracle, fresh = build_oracles(cfg, self.tree, oracle_kind(cfg, policy), telemetry_source, truth=None,
                                      fresh_source=(telemetry_source if fresh_source is None else fresh_source)
                                      if shadow else None)
        # ``oracle_factory``: the oracle service prices instead (an HTTP round trip per decision)
        kind = oracle_kind(cfg, policy)
        remote = oracle_factory(self.tree, kind) if oracle_factory is not None and kind is not None else None
        if remote is not None:
            oracle = remote
        self.dispatch = Dispatcher(cfg, self.tree, requests, policy, oracle, fresh)
        self.cluster = self.dispatch.cluster
        self.transport = transport
        self.executor = executor
        self.clock = clock
        self.byte_scale = byte_scale
        self.tid_base = transfer_id_base
        self.timeout_s = transfer_timeout_s
        self.show_progress = progress
        self.events = 0
        # (time, kind, sequence, payload): a request index (_ARRIVAL) or a scenario action (_SCENARIO)
        self._heap: list[tuple[float, int, int, int | Action]] = []
        self._seq = 0
        self._in_flight: dict[int, float] = {}  # request index -> wall (monotonic) its KV stream began
        self._active: dict[int, str] = {}  # request index handed to the agents -> last stage reported
        self._last_report = time.monotonic()
        self.lag_s: list[float] = []  # how late (virtual s) each timed event was released
        self.lost_hosts = lost_hosts
        """() -> the GPU host names whose agent a fault killed (the injector's; empty by default)."""
        self.lost_at: dict[str, float] = {}  # host -> virtual time its control connection closed
        self.preroll_s = preroll_s
        self._actions: queue.Queue[list[Action] | None] = queue.Queue()
        self._pending: list[Action] = []  # scenario actions of the current instant, not yet handed over
        self._action_error: Exception | None = None

    @property
    def states(self):
        return self.dispatch.states

    def _push(self, t: float, kind: int, payload: int | Action) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, kind, self._seq, payload))

    def run(self) -> list[RequestRecord]:
        for i, r in enumerate(self.dispatch.states):
            self._push(r.req.arrival_s, _ARRIVAL, i)
        for a in self.actions:
            self._push(a.time_s, _SCENARIO, a)
        # Pre-roll: scenario actions due at t <= 0 (background flows of a steady scenario) are
        # applied before the clock starts, and given time to reach steady state and show up in
        # telemetry, as they are at full rate from t = 0 in the simulator.
        prepare = getattr(self.executor, "prepare", None)
        if prepare is not None:  # background sinks and flow slots, before the clock: mid-run starts are signals
            prepare(list(self.actions))
        early = [e for e in self._heap if e[1] == _SCENARIO and e[0] <= 0]
        if early:
            self._heap = [e for e in self._heap if not (e[1] == _SCENARIO and e[0] <= 0)]
            heapq.heapify(self._heap)
            self._execute([a for _, _, _, a in sorted(early) if isinstance(a, Action)])  # all are
            time.sleep(self.preroll_s)
        # Every agent gets a fresh instance (empty queue and batch) of its role.
        self.transport.reset(self.cfg, [int(g) for g in self.cluster.prefill_ids],
                             [int(g) for g in self.cluster.decode_ids], self.clock.time_scale)
        self._worker = threading.Thread(target=self._action_loop, name="scenario-actions", daemon=True)
        self._worker.start()
        self.clock.start()
        self._last_report = time.monotonic()
        try:
            return self._loop()
        finally:
            self._actions.put(None)
            self._worker.join(timeout=30)

    def _loop(self) -> list[RequestRecord]:
        d = self.dispatch
        with Progress(total=len(d.states), label=f"{self.label} {self.policy.name}",
                      enabled=self.show_progress) as bar:
            while d.remaining:
                ev = self._next_event()
                if ev is None:
                    break
                before = d.remaining
                self._handle(*ev)
                if d.remaining != before:
                    bar.update(before - d.remaining)
        if d.remaining:
            raise EmulationError(f"{d.remaining} of {len(d.states)} requests never finished under "
                                 f"{self.policy.name}: no agent report and no event left to wait for")
        return d.records()

    def _action_loop(self) -> None:
        """Scenario actions run here so a slow one (starting processes in hosts) never holds up
        the replay's clock."""
        while True:
            batch = self._actions.get()
            if batch is None:
                return
            try:
                self._execute(batch)
            except Exception as exc:
                self._action_error = exc

    def _execute(self, actions: list[Action]) -> None:
        batch = getattr(self.executor, "apply_batch", None)
        if batch is not None:
            batch(actions)
        else:
            for a in actions:
                self.executor.apply(a)

    # ------------------------------------------------------------------ real-time event source
    def _next_event(self):
        events = self.transport.events
        while True:
            try:
                return self.clock.now(), _AGENT, events.get_nowait()
            except queue.Empty:
                pass
            now = self.clock.now()
            if self._heap and self._heap[0][0] <= now:
                t, kind, _, payload = heapq.heappop(self._heap)
                self.lag_s.append(now - t)
                return t, kind, payload
            if not self._heap and not self._active:
                return None
            wait = (self._heap[0][0] - now) * self.clock.time_scale if self._heap else 1.0
            self._check_stuck()
            try:
                return self.clock.now(), _AGENT, events.get(timeout=max(min(wait, 1.0), 0.0))
            except queue.Empty:
                continue

    def _handle(self, t: float, kind: int, payload: int | Action | AgentEvent) -> None:
        self.events += 1
        if kind == _ARRIVAL:
            assert isinstance(payload, int)  # a request index
            self.dispatch.arrive(payload, t, self)
        elif kind == _SCENARIO:
            assert isinstance(payload, Action)
            self.apply(payload)
        else:
            assert not isinstance(payload, int | Action)  # an agent's report
            self._report(payload)

    def _ends(self, i: int) -> tuple[str, str]:
        s, name = self.states[i], self.tree.gpu_name
        return name(int(self.cluster.prefill_ids[s.p])), name(int(self.cluster.decode_ids[s.d]))

    def _fail(self, i: int, reason: str) -> None:
        self._active.pop(i, None)
        self._in_flight.pop(i, None)
        self.dispatch.failed(self.states[i], reason)

    def _lose(self, host: str) -> None:
        """``host``'s agent is gone: every request it holds fails."""
        self.lost_at.setdefault(host, self.clock.now())
        for i in [i for i in self._active if host in self._ends(i)]:
            self._fail(i, f"instance {host} lost")

    def _report(self, ev: AgentEvent) -> None:
        """Record one agent report on its request's state and the cluster mirror."""
        lost = self.lost_hosts()
        if isinstance(ev, AgentFailure):
            if ev.transfer_id is None and ev.agent in lost:
                self._lose(ev.agent)  # its control connection closed: the fault we injected
                return
            i = None if ev.transfer_id is None else ev.transfer_id - self.tid_base
            if i is not None and 0 <= i < len(self.states) and (
                    self.states[i].failed is not None or lost.intersection(self._ends(i))):
                self._fail(i, f"instance {' and '.join(sorted(lost.intersection(self._ends(i))))} lost")
                return
            raise self._failure(ev)
        i = ev.transfer_id - self.tid_base
        if 0 <= i < len(self.states) and self.states[i].failed is not None:
            return  # a late report of a request already failed with its lost instance
        if not 0 <= i < len(self.states) or i not in self._active:
            raise EmulationError(f"agent report for unknown or finished transfer {ev.transfer_id}: {ev}")
        s = self.states[i]
        v = self.clock.virtual
        self._last_report = time.monotonic()
        if isinstance(ev, Prefilled):
            s.prefill_start, s.prefill_end = v(ev.t_start), v(ev.t_end)
            self.dispatch.prefilled(s)
            if self._active[i] == "sent":  # (the decode agent's report may overtake this one)
                self._in_flight[i] = time.monotonic()
                self._active[i] = "prefilled"
        elif isinstance(ev, KvReceived):
            self._in_flight.pop(i, None)
            self._active[i] = "received"
            self.dispatch.kv_arrived(s, i, v(ev.t_end))
        elif isinstance(ev, FirstToken):
            self.dispatch.joined(s, v(ev.t_join), v(ev.t_first))
            self._active[i] = "first_token"
        elif isinstance(ev, Finished):
            if self._active[i] != "first_token":
                raise EmulationError(f"{self._who(i)}: finished before its {self._active[i]} stage was complete")
            del self._active[i]
            self.dispatch.finished(s, v(ev.t_finish))
        else:
            raise EmulationError(f"unknown agent report {ev!r}")

    def _who(self, i: int) -> str:
        return self.dispatch.who(self.states[i])

    def _failure(self, ev: AgentFailure) -> EmulationError:
        i = None if ev.transfer_id is None else ev.transfer_id - self.tid_base
        if i is None or not 0 <= i < len(self.states):
            return EmulationError(f"agent {ev.agent} failed: {ev.reason}")
        if ev.role in ("send", "recv"):
            return EmulationError(f"KV transfer of {self._who(i)} failed: {ev.agent}: {ev.reason}")
        return EmulationError(f"{self._who(i)}: agent {ev.agent} failed: {ev.reason}")

    def _check_stuck(self) -> None:
        limit = self.timeout_s * self.clock.time_scale
        now = time.monotonic()
        if self._in_flight:
            i, began = min(self._in_flight.items(), key=lambda kv: kv[1])
            if now - began > limit:
                raise EmulationError(f"{len(self._in_flight)} KV transfers unfinished after {self.timeout_s:g} s, "
                                     f"the oldest of {self._who(i)} (a link down for good, or the emulator "
                                     f"overloaded)")
        if self._active and now - self._last_report > limit:
            i = min(self._active)
            raise EmulationError(f"no agent reported anything for {self.timeout_s:g} s with "
                                 f"{len(self._active)} requests unfinished; the first, {self._who(i)}, "
                                 f"last reported {self._active[i]!r}")

    # ------------------------------------------------------------------ Execution: agents do the work
    def start(self, s: RequestState, i: int) -> None:
        """Hand the decided request to its agents: the decode agent expects it, the prefill agent
        computes it and streams the KV bytes the decode instance lacks (at least one byte, or
        none when it holds the whole prompt)."""
        nbytes = max(round(s.nbytes * self.byte_scale), 1) if s.nbytes > 0 else 0
        tid = self.tid_base + i
        src, dst = int(self.cluster.prefill_ids[s.p]), int(self.cluster.decode_ids[s.d])
        lost = self.lost_hosts().intersection(self._ends(i))
        if lost:  # the front end does not know (no health checks): the request is lost with it
            self.dispatch.failed(s, f"sent to lost instance {' and '.join(sorted(lost))}")
            return
        self._active[i] = "sent"
        try:
            self.transport.expect(tid, s.req.req_id, dst, s.req.input_tokens, s.req.output_tokens)
            self.transport.prefill(tid, s.req.req_id, src, dst, s.req.input_tokens, s.prefill_cached, nbytes)
        except EmulationError as exc:
            raise EmulationError(f"{self._who(i)}: {exc}") from exc

    def apply(self, a: Action) -> None:
        """Hand the action to the worker thread, together with the others of its instant: they
        leave the heap one after the other, and the last one releases the batch."""
        if self._action_error is not None:
            raise EmulationError(f"scenario action failed: {self._action_error}")
        self._pending.append(a)
        nxt = self._heap[0] if self._heap else None
        if nxt is None or nxt[1] != _SCENARIO or nxt[0] != a.time_s:
            self._actions.put(self._pending)
            self._pending = []
