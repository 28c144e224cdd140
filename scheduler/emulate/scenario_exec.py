"""Scenario actions on the running emulated fabric (the same :class:`Action` list the simulator runs).

One module on purpose: the executor and its private process, flow-slot and tc helpers are
one unit (its pure rate, tc-argument and slot-protocol parts live in topology/ and hosts/).

::

    with controlled_fabric(tree, scale / time_scale, run_dir) as fab:   # controller.process
        exe = ScenarioExecutor(fab, tree, scale, time_scale, run_dir)
        try:
            for action in scenario.actions(tree, horizon_s):
                ...                                   # wait until action.time_s (virtual)
                exe.apply(action)
                overlay = exe.capacity_factor()      # for the telemetry oracle
        finally:
            exe.close()

What each action does on the fabric (sinks with window clamps, standby senders as flow slots,
HTB classes for reduced capacities, Mininet link status for failures): docs/DESIGN.md#scenario-actions-on-the-fabric.

Processes run in the Mininet hosts' namespaces (``host.popen``), with
stdout/stderr in ``run_dir/background/``. ``close()`` stops them all; shaping is left as is (the
fabric teardown removes the interfaces).
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from hosts.standby import START_SIGNAL, STOP_SIGNAL
from scheduler.model.scenario import Action
from topology.cleanup import switch_intf_name
from topology.emulated import emulated_mbit
from topology.mininet_topo import (
    HTB_CLASS,
    LEAF_HANDLE,
    SWITCH_SHAPE,
    HtbShape,
    host_intf_name,
    htb_argvs,
    htb_shape,
    leaf_argv,
    link_rates_mbit,
)
from topology.model import FatTree, switch_ports

BACKGROUND_PORT = 5399
"""First TCP port of the background sinks, one port per distinct window clamp from there up (agents
use 9470, tests' iperf3 servers 5301..5303)."""
SINK_READY_TIMEOUT_S = 10.0
SLOT_READY_TIMEOUT_S = 60.0
"""Every flow slot spawned by ``prepare`` must report ready within this (decode-flap spawns 64
Python processes at once on a 2-core machine)."""
REPORT_TIMEOUT_S = 3.0
"""A stopped slot must print its flow's summary within this."""
STOP_GRACE_S = 3.0
TC_TIMEOUT_S = 10.0
DOWN_HANDLE = LEAF_HANDLE
"""Handle of the leaf FIFO under a link's HTB class (replaced when the link's rate changes)."""

BACKGROUND_WINDOW_SEGMENTS = 3
"""Segments a background flow may keep in flight beyond its path's bandwidth-delay product, so greedy
flows do not keep the drop-tail queues they cross full, as datacenter transports do not
(:func:`background_window_bytes`; docs/calibration.md#background-window). ``window_clamp=None`` turns it off."""
BACKGROUND_BASE_RTT_S = 0.003
"""The emulated fabric's round trip without serialisation, with headroom for a loaded machine
(docs/calibration.md#background-window)."""
MSS = 1460
FRAME_BYTES = 1514


def background_window_bytes(tree: FatTree, scale: float, time_scale: float, src: int, dst: int) -> int:
    """Receive-window clamp for a background flow ``src -> dst``: its path's bandwidth-delay product
    plus :data:`BACKGROUND_WINDOW_SEGMENTS` segments. The round trip is
    :data:`BACKGROUND_BASE_RTT_S` plus one full frame's store-and-forward time on every shaped hop
    (2.4 ms per hop at 5 Mbit/s; a cross-pod path has six shaped hops), the
    bottleneck the slowest hop, both at the emulated rates (real x scale / time_scale)."""
    rates = link_rates_mbit(tree, scale / time_scale)
    bps = np.array([rates[tree.link_kind(int(i))] for i in tree.path(src, dst)]) * 1e6
    rtt = BACKGROUND_BASE_RTT_S + float(np.sum(FRAME_BYTES * 8 / bps))
    return int(bps.min() / 8 * rtt + BACKGROUND_WINDOW_SEGMENTS * MSS)


class ScenarioExecError(RuntimeError):
    """An action could not be executed on the fabric; the message says which and why."""


# --------------------------------------------------------------------------- pure parts
def background_rate_mbit(rate_gbit_s: float | None, scale: float, time_scale: float) -> float | None:
    """Emulated Mbit/s of a background flow of ``rate_gbit_s`` real Gbit/s (None: greedy)."""
    if not scale > 0 or not time_scale > 0:
        raise ValueError(f"scale and time_scale must be > 0, got {scale}, {time_scale}")
    if rate_gbit_s is None:
        return None
    if not rate_gbit_s > 0:
        raise ValueError(f"rate_gbit_s must be > 0 or None, got {rate_gbit_s}")
    return emulated_mbit(rate_gbit_s, scale, time_scale)


def egress_intf_name(tree: FatTree, link: int) -> tuple[str, str]:
    """(node, interface) whose egress carries directed link ``link`` (u -> v): a GPU host's
    ``eth0``/``eth1`` (NIC / NVLink) or the switch port of ``u`` facing ``v``."""
    u, v = tree.link_endpoints(link)
    roles = tree.switch_names()
    if u not in roles:  # GPU host: NVLink towards its server switch, NIC towards its ToR
        return u, host_intf_name(u, nvlink=roles[v] == "server")
    port = next(p for p, nb in switch_ports(tree, u).items() if nb == v)
    return u, switch_intf_name(u, port)


def rate_argv(intf: str, mbit: float, shape: HtbShape = SWITCH_SHAPE) -> list[str]:
    """tc command that sets the HTB class of ``intf`` to ``mbit`` (buckets, ceil and quantum to
    match, as the fabric shapes that link kind)."""
    return htb_argvs(intf, mbit, shape)[1]


def _del_leaf_argv(intf: str) -> list[str]:
    return ["tc", "qdisc", "del", "dev", intf, "parent", HTB_CLASS, "handle", DOWN_HANDLE]


def up_argvs(intf: str, mbit: float) -> list[list[str]]:
    """tc commands that put back the shallow FIFO leaf sized for ``mbit`` (the leaf the fabric
    installs, see :func:`topology.mininet_topo.leaf_argv`), replacing an
    older FIFO."""
    return [_del_leaf_argv(intf), leaf_argv(intf, mbit, verb="add")]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


@dataclass
class _Proc:
    popen: subprocess.Popen
    host: str
    out: Path
    err: Path
    files: list[IO[bytes]] = field(default_factory=list)

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, wait ``grace_s``, SIGKILL; returns the exit status (None if it survived)."""
        self.signal()
        return self.reap(time.monotonic() + grace_s, grace_s)

    def signal(self) -> None:
        """Ask the process to stop (SIGTERM), without waiting."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def reap(self, deadline: float, grace_s: float = STOP_GRACE_S) -> int | None:
        """Wait for the signalled process until ``deadline`` (monotonic), then SIGKILL it and
        wait ``grace_s`` more; close its log files; returns the exit status (None if it survived)."""
        try:
            self.popen.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            self.popen.kill()
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        for fh in self.files:
            fh.close()
        self.files.clear()
        return self.popen.poll()

    def err_tail(self, n: int = 5) -> str:
        try:
            return " | ".join(self.err.read_text(errors="replace").strip().splitlines()[-n:])
        except OSError:
            return ""

    def listening(self) -> bool:
        """True once a sink printed its ``listening`` line."""
        try:
            return "listening" in self.out.read_text(errors="replace")
        except OSError:
            return False


def _wait_all(items: list, proc: Callable[[Any], _Proc], ready: Callable[[Any], bool], what: str,
              timeout_s: float, late: Callable[[list], str]) -> None:
    """Poll until every item is ready; ScenarioExecError when one's process (``what``) exits
    first, or with ``late(still waiting)`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    waiting = list(items)
    while waiting:
        for item in list(waiting):
            p = proc(item)
            if p.popen.poll() is not None:
                raise ScenarioExecError(f"{what} in {p.host} exited with {p.popen.returncode}: {p.err_tail()}")
            if ready(item):
                waiting.remove(item)
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise ScenarioExecError(late(waiting))
        time.sleep(0.05)


def _stop_all(procs: list[_Proc], grace_s: float = STOP_GRACE_S) -> None:
    """Signal every process, then reap each against one common deadline."""
    for proc in procs:
        proc.signal()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        proc.reap(deadline, grace_s)


@dataclass
class _Slot:
    """A standby background sender (``hosts.background --standby``) and its activations."""

    proc: _Proc
    key: tuple[int, int, float | None]  # (source GPU, destination GPU, rate in real Gbit/s or None)
    activations: int = 0
    _lines: list[dict] = field(default_factory=list)
    _read: int = 0  # bytes of stdout parsed so far

    def _poll(self) -> None:
        try:
            with open(self.proc.out, "rb") as fh:
                fh.seek(self._read)
                data = fh.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1  # complete lines only
        for line in data[:end].splitlines():
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                self._lines.append(value)
        self._read += end

    def ready(self) -> bool:
        self._poll()
        return any(d.get("mode") == "standby" for d in self._lines)

    def start(self) -> None:
        self.activations += 1
        self.proc.popen.send_signal(START_SIGNAL)

    def stop(self) -> None:
        if self.proc.popen.poll() is None:
            self.proc.popen.send_signal(STOP_SIGNAL)

    def report(self, activation: int, deadline: float | None = None) -> dict | None:
        """The summary the slot printed for its ``activation``-th flow (waits until ``deadline``
        for it; None if it never came)."""
        while True:
            self._poll()
            hit = next((d for d in self._lines if d.get("activation") == activation), None)
            if hit is not None or deadline is None or time.monotonic() > deadline:
                return hit
            time.sleep(0.01)


# --------------------------------------------------------------------------- executor
class ScenarioExecutor:
    """Executes scenario :class:`Action` s on a running :class:`topology.fabric.Fabric`."""

    def __init__(self, fab: Any, tree: FatTree, scale: float, time_scale: float, run_dir: Path,
                 python: str = sys.executable, port: int = BACKGROUND_PORT,
                 congestion: str | None = None, window_clamp: int | str | None = "auto") -> None:
        background_rate_mbit(None, scale, time_scale)  # validates scale and time_scale
        if not (window_clamp in ("auto", None) or (isinstance(window_clamp, int) and window_clamp > 0)):
            raise ScenarioExecError(f"window_clamp must be 'auto', None or bytes > 0, got {window_clamp!r}")
        self.congestion, self.window_clamp = congestion, window_clamp
        self._clamp_ports: dict[int | None, int] = {}  # one sink port per distinct window clamp
        self.fab, self.tree = fab, tree
        self.scale, self.time_scale = scale, time_scale
        self.run_dir = Path(run_dir) / "background"
        self.python, self.port = python, port
        self.flow_results: dict[str, dict | None] = {}
        """flow_id -> the stopped sender's JSON summary (None if it printed none)."""
        self._factor = np.ones(tree.n_links + 1)
        self._shaped = np.ones(tree.n_links + 1)  # the HTB rate's factor (a down link keeps its last)
        self._down: set[int] = set()
        self.link_events: list[dict] = []
        """Every physical link taken down or up: {"link" ("upper<->lower"), "links" (both directed
        indices), "down", "wall" (time.time() just before the interfaces changed)}."""
        self._intf: dict[int, Any] = {}
        self._sinks: dict[tuple[str, int], _Proc] = {}
        self._idle: dict[tuple[int, int, float | None], list[_Slot]] = {}  # flow slots waiting for a start
        self._slots: list[_Slot] = []
        self._flows: dict[str, _Slot] = {}  # running flow id -> its slot
        self._seq = 0
        self._closed = False

    # ------------------------------------------------------------------ API
    def apply(self, action: Action) -> None:
        self.apply_batch([action])

    def apply_batch(self, actions: list[Action]) -> None:
        """Execute ``actions`` (one instant's, in order); consecutive stops, and consecutive
        starts, are carried out together (see the module doc)."""
        if self._closed:
            raise ScenarioExecError("executor is closed")
        for a in actions:
            if a.kind not in ("flow_start", "flow_stop", "link_capacity"):
                raise ScenarioExecError(f"unknown action kind {a.kind!r}")
        k = 0
        while k < len(actions):
            kind = actions[k].kind
            run = [actions[k]]
            while k + len(run) < len(actions) and actions[k + len(run)].kind == kind:
                run.append(actions[k + len(run)])
            if kind == "flow_start":
                self._flow_starts(run)
            elif kind == "flow_stop":
                self._flow_stops(run)
            else:
                for a in run:
                    self._link_capacity(a)
            k += len(run)

    def prepare(self, actions: list[Action]) -> None:
        """Before the clock starts: every sink the flows of ``actions`` send to, and per (source,
        destination, rate) as many flow slots as ``actions`` ever run at once, all spawned
        together and then waited for (see the module doc)."""
        if self._closed:
            raise ScenarioExecError("executor is closed")
        running: dict[str | None, tuple[int, int, float | None]] = {}  # by flow_id
        need: dict[tuple[int, int, float | None], int] = {}
        sinks = []
        for a in actions:
            if a.kind == "flow_start" and a.src is not None and a.dst is not None and a.src != a.dst:
                _, proc = self._sink(self.tree.gpu_name(a.dst), self._clamp(a.src, a.dst))
                if proc is not None:
                    sinks.append(proc)
                key = self._key(a)
                running[a.flow_id] = key
                need[key] = max(need.get(key, 0), sum(1 for k in running.values() if k == key))
            elif a.kind == "flow_stop":
                running.pop(a.flow_id, None)
        self._wait_listening(sinks)
        fresh = [self._spawn_slot(key) for key, n in need.items()
                 for _ in range(n - len(self._idle.get(key, [])))]
        self._wait_ready(fresh)
        for slot in fresh:
            self._idle.setdefault(slot.key, []).append(slot)

    def capacity_factor(self) -> np.ndarray:
        """Current capacity factor per directed link (length n_links + 1, padding 1.0; 0 = down)."""
        return self._factor.copy()

    def shaping_factor(self) -> np.ndarray:
        """What the controller cannot see: the factor of each link's HTB rate (reduced capacities);
        a link that is down keeps its last one (telemetry reports the link down by itself)."""
        return self._shaped.copy()

    def close(self) -> None:
        """Stop every slot and sink this executor started (running flows are ended and
        reported first); idempotent. Shaping stays."""
        if self._closed:
            return
        self._closed = True
        running = dict(self._flows)
        self._flows.clear()
        _stop_all([slot.proc for slot in self._slots] + list(self._sinks.values()))
        for fid, slot in running.items():
            self.flow_results[fid] = slot.report(slot.activations)
        self._slots.clear()
        self._idle.clear()
        self._sinks.clear()

    def __enter__(self) -> ScenarioExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ flows
    def _spawn(self, host_name: str, tag: str, argv: list[str]) -> _Proc:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        stem = self.run_dir / f"{self._seq:05d}-{_safe(tag)}"
        out, err = stem.with_suffix(".out"), stem.with_suffix(".err")
        fout, ferr = open(out, "wb"), open(err, "wb")  # noqa: SIM115 (outlive this call: _Proc.reap closes them)
        try:
            popen = self.fab.host(host_name).popen(argv, stdin=subprocess.DEVNULL,
                                                   stdout=fout, stderr=ferr)
        except OSError as exc:
            fout.close()
            ferr.close()
            raise ScenarioExecError(f"starting {tag} in {host_name} failed: {exc}") from exc
        return _Proc(popen, host_name, out, err, [fout, ferr])

    def _clamp(self, src: int, dst: int) -> int | None:
        if isinstance(self.window_clamp, str):  # "auto", the only string __init__ accepts
            return background_window_bytes(self.tree, self.scale, self.time_scale, src, dst)
        return self.window_clamp

    def _sink(self, host_name: str, clamp: int | None) -> tuple[int, _Proc | None]:
        """A sink in ``host_name`` whose connections advertise at most ``clamp`` bytes of window
        (None: unclamped); one port per distinct clamp. Returns the port and the sink's process
        when it was just spawned (wait for it with :meth:`_wait_listening`), else None."""
        port = self._clamp_ports.setdefault(clamp, self.port + len(self._clamp_ports))
        proc = self._sinks.get((host_name, port))
        if proc is not None and proc.popen.poll() is None:
            return port, None
        if proc is not None:
            proc.stop()
        proc = self._spawn(host_name, f"sink-{host_name}-{port}",
                           [self.python, "-m", "hosts.background", "--listen", f"0.0.0.0:{port}"]
                           + (["--window-clamp", str(clamp)] if clamp else []))
        self._sinks[(host_name, port)] = proc
        return port, proc

    @staticmethod
    def _wait_listening(procs: list[_Proc]) -> None:
        _wait_all(procs, lambda p: p, _Proc.listening, "background sink", SINK_READY_TIMEOUT_S,
                  lambda waiting: f"background sink(s) in {', '.join(p.host for p in waiting[:5])} not "
                                  f"listening after {SINK_READY_TIMEOUT_S:g} s: {waiting[0].err_tail()}")

    def _key(self, a: Action) -> tuple[int, int, float | None]:
        assert a.src is not None and a.dst is not None  # a flow_start between two GPUs
        return int(a.src), int(a.dst), a.rate_gbit_s

    def _spawn_slot(self, key: tuple[int, int, float | None]) -> _Slot:
        src, dst, rate = key
        port, _ = self._sink(self.tree.gpu_name(dst), self._clamp(src, dst))
        mbit = background_rate_mbit(rate, self.scale, self.time_scale)
        argv = [self.python, "-m", "hosts.background", "--dst", f"{self.fab.peer_ip(src, dst)}:{port}", "--standby"]
        if mbit is not None:
            argv += ["--rate-mbit", f"{mbit:.6g}"]
        if self.congestion:
            argv += ["--congestion", self.congestion]
        name_s, name_d = self.tree.gpu_name(src), self.tree.gpu_name(dst)
        slot = _Slot(self._spawn(name_s, f"slot-{name_s}-{name_d}", argv), key)
        self._slots.append(slot)
        return slot

    @staticmethod
    def _wait_ready(slots: list[_Slot], timeout_s: float = SLOT_READY_TIMEOUT_S) -> None:
        _wait_all(slots, lambda s: s.proc, _Slot.ready, "background sender", timeout_s,
                  lambda waiting: f"{len(waiting)} background sender(s) not ready after {timeout_s:g} s "
                                  f"(first in {waiting[0].proc.host}): {waiting[0].proc.err_tail()}")

    def _flow_starts(self, actions: list[Action]) -> None:
        """Start the flows of ``actions``: an idle slot each (spawned now when there is none),
        then every start signal at once."""
        chosen, fresh, seen = [], [], set()
        for a in actions:
            if a.flow_id is None or a.src is None or a.dst is None:
                raise ScenarioExecError(f"flow_start needs flow_id, src and dst: {a}")
            if a.flow_id in self._flows or a.flow_id in seen:
                raise ScenarioExecError(f"flow {a.flow_id!r} already started")
            seen.add(a.flow_id)
            if a.src == a.dst:
                continue  # a flow to itself moves nothing (the simulator skips it too)
            idle = self._idle.get(self._key(a), [])
            while idle and idle[-1].proc.popen.poll() is not None:  # a slot that died: not reused
                idle.pop()
            slot = idle.pop() if idle else None
            if slot is None:
                slot = self._spawn_slot(self._key(a))
                fresh.append(slot)
            chosen.append((a.flow_id, slot))
        self._wait_ready(fresh)
        for fid, slot in chosen:
            slot.start()
            self._flows[fid] = slot

    def _flow_stops(self, actions: list[Action]) -> None:
        flow_ids = []
        for a in actions:
            if a.flow_id is None:
                raise ScenarioExecError(f"flow_stop needs flow_id: {a}")
            flow_ids.append(a.flow_id)
        self._stop_flows(flow_ids)  # unknown or already stopped flows: nothing to do

    def _stop_flows(self, flow_ids: list[str]) -> None:
        """End several flows at once (every stop signal, then every slot's report awaited) and
        give their slots back."""
        stopping = {fid: self._flows.pop(fid) for fid in flow_ids if fid in self._flows}
        for slot in stopping.values():
            slot.stop()
        deadline = time.monotonic() + REPORT_TIMEOUT_S
        for fid, slot in stopping.items():
            self.flow_results[fid] = slot.report(slot.activations, deadline)
            self._idle.setdefault(slot.key, []).append(slot)

    # ------------------------------------------------------------------ links
    def egress_intf(self, link: int) -> Any:
        """Mininet interface object carrying directed link ``link`` (found via the net's links)."""
        intf = self._intf.get(link)
        if intf is not None:
            return intf
        u, v = self.tree.link_endpoints(link)
        net = self.fab.net
        if net is None:
            raise ScenarioExecError("fabric is not running")
        node_u, node_v = net.get(u), net.get(v)
        links = net.linksBetween(node_u, node_v)
        if len(links) != 1:
            raise ScenarioExecError(f"expected one Mininet link {u} <-> {v}, found {len(links)}")
        lk = links[0]
        intf = lk.intf1 if lk.intf1.node is node_u else lk.intf2
        self._intf[link] = intf
        return intf

    def _tc(self, intf: Any, argv: list[str]) -> None:
        node = intf.node
        cmd = (["mnexec", "-a", str(node.pid)] + argv) if node.inNamespace else argv
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=TC_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ScenarioExecError(f"{' '.join(argv)} on {node.name} failed: {exc}") from exc
        if done.returncode:
            raise ScenarioExecError(f"{' '.join(argv)} on {node.name} failed: {done.stderr.strip()}")

    def _link_capacity(self, action: Action) -> None:
        if action.factor is None or not action.factor >= 0 or not action.links:
            raise ScenarioExecError(f"link_capacity needs links and a factor >= 0: {action}")
        if action.factor == 0:
            self._links_down(action.links)
            return
        rates = self.fab.topo.rates_mbit
        self._links_up([link for link in action.links if link in self._down])
        for link in action.links:
            intf = self.egress_intf(link)
            kind = self.tree.link_kind(link)
            mbit = rates[kind] * action.factor
            self._tc(intf, rate_argv(intf.name, mbit, htb_shape(kind)))
            for argv in up_argvs(intf.name, mbit):  # the leaf FIFO resized for the new rate
                self._tc(intf, argv)
            self._factor[link] = self._shaped[link] = action.factor

    def _physical(self, links: list[int]) -> list[tuple[str, str, str, tuple[int, int]]]:
        """(upper, lower, "upper<->lower", both directed indices) of each physical link ``links``
        name, once each; a link can only fail both ways (its interfaces go down at both ends)."""
        out, seen = [], set()
        for link in links:
            u, v = self.tree.link_endpoints(link)
            lo, hi = sorted((link, self.tree.link_index[(v, u)]))
            both = (lo, hi)
            if both in seen:
                continue
            seen.add(both)
            lower, upper = self.tree.link_endpoints(both[0])  # the lower index runs upwards
            out.append((upper, lower, f"{upper}<->{lower}", both))
        return out

    def _links_down(self, links: tuple[int, ...]) -> None:
        """Both interfaces of every physical link down (Mininet's link status): the switch end
        reports the port change to the controller, which reroutes."""
        wanted = set(links)
        for upper, lower, name, both in self._physical(list(links)):
            if not set(both) <= wanted | self._down:
                raise ScenarioExecError(
                    f"link {self.tree.link_name(both[0] if both[0] in wanted else both[1])} down in one "
                    f"direction only: a real link fails both ways (use '{name}')")
            if set(both) <= self._down:
                continue
            self._link_status(upper, lower, name, both, down=True)
            self._down.update(both)
            self._factor[list(both)] = 0.0

    def _links_up(self, links: list[int]) -> None:
        for upper, lower, name, both in self._physical(links):
            self._link_status(upper, lower, name, both, down=False)
            self._down.difference_update(both)

    def _link_status(self, upper: str, lower: str, name: str, both: tuple[int, int], down: bool) -> None:
        if self.fab.net is None:
            raise ScenarioExecError("fabric is not running")
        self.link_events.append({"link": name, "links": list(both), "down": down, "wall": time.time()})
        self.fab.set_link_status(upper, lower, up=not down)
