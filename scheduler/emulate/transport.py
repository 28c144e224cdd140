"""The orchestrator's two links to the running fabric during an emulation: the host agents as
the real-time replay drives them (:class:`AgentTransport`: ``hosts.messages`` commands out,
reports parsed into the replay's events) and the controller's telemetry polled into the replay's
history (:class:`TelemetryPoller`). Neither imports Mininet: the fabric and the scenario executor
are only used through their methods, so tests drive both with fakes.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from hosts.control import ControlError, ControlServer
from hosts.framing import KV_PORT
from hosts.messages import (
    AgentEvent,
    AgentFailure,
    Command,
    Error,
    Expect,
    Prefill,
    Report,
    Reset,
    ResetDone,
    replay_event,
)
from scheduler.decision.telemetry import TelemetryHistory, snapshot_from_json
from scheduler.emulate.replay import Clock, EmulationError
from scheduler.model.config import ExperimentConfig
from topology.model import FatTree, peer_ip

if TYPE_CHECKING:
    from scheduler.emulate.scenario_exec import ScenarioExecutor
    from topology.fabric import Fabric

RESET_TIMEOUT_S = 60.0
"""Every agent must answer ``reset`` within this (the first one imports the timing model)."""


class AgentTransport:
    """The host agents as :class:`RealtimeReplay` drives them: commands over the control channel
    (``reset``, ``expect``, ``prefill``), agent reports parsed into the replay's events.

    ``on_event`` must receive every message of the control server (it runs on the server's
    reader threads). A KV stream that fails is reported by both its sender and its receiver:
    only the first report is queued."""

    def __init__(self, control: ControlServer, tree: FatTree, port: int = KV_PORT,
                 reset_timeout_s: float = RESET_TIMEOUT_S,
                 address: Callable[[int, int], tuple[str, int]] | None = None) -> None:
        """``address(src, dst)`` is where GPU ``src``'s agent reaches GPU ``dst``'s data port;
        by default the fabric address of the pair (NVLink inside a server) and ``port``."""
        self.control = control
        self.tree = tree
        self.port = port
        self.address = address or (lambda src, dst: (peer_ip(tree, src, dst), port))
        self.reset_timeout_s = reset_timeout_s
        self.events: queue.Queue[AgentEvent] = queue.Queue()
        self._failed: set[int] = set()
        self._lock = threading.Condition()
        self._resetting: set[str] = set()
        self._reset_errors: list[str] = []

    def _send(self, gpu: int, msg: Command) -> None:
        try:
            self.control.send(self.tree.gpu_name(gpu), msg)
        except ControlError as exc:
            raise EmulationError(f"{msg.KIND} to {self.tree.gpu_name(gpu)}: {exc}") from exc

    def reset(self, cfg: ExperimentConfig, prefill_gpus: Sequence[int], decode_gpus: Sequence[int],
              time_scale: float) -> None:
        """Give every agent a fresh instance of its role; returns when all have answered."""
        roles = {**{int(g): "prefill" for g in prefill_gpus}, **{int(g): "decode" for g in decode_gpus}}
        config = cfg.to_dict()
        with self._lock:
            self._resetting = {self.tree.gpu_name(g) for g in roles}
            self._reset_errors = []
        for g, role in roles.items():
            self._send(g, Reset(config, role, time_scale))
        deadline = time.monotonic() + self.reset_timeout_s
        with self._lock:
            while self._resetting and not self._reset_errors:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(self._resetting)
                    raise EmulationError(f"{len(missing)} agent(s) did not answer reset within "
                                         f"{self.reset_timeout_s:g} s: {', '.join(missing[:10])}")
                self._lock.wait(left)
            if self._reset_errors:
                raise EmulationError(f"reset failed: {self._reset_errors[0]}")

    def prefill(self, transfer_id: int, request_id: int, src: int, dst: int, input_tokens: int,
                cached_tokens: int, nbytes: int) -> None:
        ip, port = self.address(src, dst)
        self._send(src, Prefill(transfer_id, request_id, input_tokens, cached_tokens, nbytes, ip, port, dst))

    def expect(self, transfer_id: int, request_id: int, dst: int, input_tokens: int,
               output_tokens: int) -> None:
        self._send(dst, Expect(transfer_id, request_id, input_tokens, output_tokens))

    def on_event(self, msg: Report) -> None:
        agent = msg.agent
        with self._lock:
            if self._resetting:
                if isinstance(msg, ResetDone) and agent in self._resetting:
                    self._resetting.discard(agent)
                    self._lock.notify_all()
                    return
                if isinstance(msg, Error) and msg.reason.startswith("reset"):
                    self._reset_errors.append(f"{agent}: {msg.reason}")
                    self._lock.notify_all()
                    return
        parsed = replay_event(msg)
        if parsed is None:
            return
        if isinstance(parsed, AgentFailure) and parsed.transfer_id is not None:
            with self._lock:  # sender and receiver may both report an error: first one wins
                if parsed.transfer_id in self._failed:
                    return
                self._failed.add(parsed.transfer_id)
        self.events.put(parsed)


class TelemetryPoller:
    """Polls the controller's REST telemetry every poll interval into the current replay's
    history (virtual time), with the reduced capacities the scenario executor shaped (which port
    counters cannot show; links down come from the controller itself), and keeps every sample
    for telemetry.csv."""

    def __init__(self, fab: Fabric, tree: FatTree, nominal_bps: dict[str, float], interval_s: float,
                 fetch: Callable[[float], dict] | None = None) -> None:
        self.fab = fab
        self.fetch = fetch or self._rest
        """Where a payload comes from (timeout in): the controller's REST, or Prometheus."""
        self.tree = tree
        self.nominal = nominal_bps
        self.interval = interval_s
        self.rows: list[tuple] = []  # (policy, virtual time s, wall time, utilisation array)
        self.errors = 0
        self._target: tuple[str, Clock, ScenarioExecutor, list] | None = None
        self._pending: dict[int, tuple] = {}  # feed -> (snapshot, wall time) polled before the replay's clock started
        self._stop = threading.Event()
        self._last_time: dict[int, float] = {}  # feed -> its newest payload's time
        self._thread = threading.Thread(target=self._loop, name="telemetry-poller", daemon=True)

    def attach(self, policy: str, clock: Clock, history: TelemetryHistory, executor: ScenarioExecutor,
               fetch: Callable[[float], dict] | None = None, fresh_history: TelemetryHistory | None = None) -> None:
        """Feed ``history`` for the replay ``policy`` (from ``fetch``, default the poller's own)
        and, with ``fresh_history``, that one from the controller's REST every poll too (a fresh
        shadow beside telemetry read through a slower path, e.g. Prometheus)."""
        self._pending = {}
        feeds = [(fetch or self.fetch, history, True)]
        if fresh_history is not None:
            feeds.append((self._rest, fresh_history, False))
        self._target = (policy, clock, executor, feeds)

    def detach(self) -> None:
        self._target = None
        self._pending = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _rest(self, timeout_s: float) -> dict:
        return self.fab.telemetry(timeout_s=timeout_s)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval / 2):
            target = self._target
            if target is None:
                continue
            policy, clock, executor, feeds = target
            for fetch, history, record in feeds:
                self._poll(fetch, history, record, policy, clock, executor)

    def _poll(self, fetch: Callable[[float], dict], history: TelemetryHistory, record: bool, policy: str,
              clock: Clock, executor: ScenarioExecutor) -> None:
        key = id(history) if not record else 0  # the recorded feed's newest time outlives replays
        try:
            payload = fetch(1.0)
        except Exception:
            self.errors += record
            return
        if payload.get("time") is None or payload["time"] == self._last_time.get(key):
            return
        self._last_time[key] = payload["time"]
        snap = snapshot_from_json(self.tree, payload, self.nominal)
        snap.capacity_factor = np.minimum(snap.capacity_factor, executor.shaping_factor())
        if not clock.started:
            # the replay is still preparing (flow slots, pre-roll, agent reset): its virtual
            # times are not known yet; the newest such snapshot enters the history stamped
            # before 0 once the clock starts (the pre-rolled flows' load, seen at t = 0)
            self._pending[key] = (snap, float(payload["time"]))
            return
        pending = self._pending.pop(key, None)
        for snap_, wall in ([pending] if pending is not None else []) + [(snap, float(payload["time"]))]:
            snap_.time_s = clock.virtual(wall)
            history.add(snap_)
            if record:
                self.rows.append((policy, snap_.time_s, wall, snap_.utilisation[:-1].copy()))

    def csv_bytes(self) -> bytes:
        lines = ["policy,time_s,link,utilisation"]
        for policy, t, _, util in self.rows:
            for i in np.flatnonzero(util > 0.001):
                lines.append(f"{policy},{t:.3f},{self.tree.link_name(int(i))},{util[i]:.4f}")
        return ("\n".join(lines) + "\n").encode()
