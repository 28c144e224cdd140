"""Scenario actions on the running emulated fabric (the same :class:`Action` list the simulator runs).

::

    with Fabric(tree, scale=scale / time_scale) as fab:
        exe = ScenarioExecutor(fab, tree, scale, time_scale, run_dir)
        try:
            for action in scenario.actions(tree, horizon_s):
                ...                                   # wait until action.time_s (virtual)
                exe.apply(action)
                overlay = exe.capacity_factor()      # for the telemetry oracle
        finally:
            exe.close()

* ``flow_start``: one ``python -m hosts.background`` sink per destination host and window clamp
  (many connections, started on first use) and one sender per flow in the source host, to
  ``fab.peer_ip(src, dst)``; paced at ``rate_gbit_s x 1000 x scale / time_scale`` Mbit/s, greedy
  when the rate is None; it runs until ``flow_stop``. Sinks clamp their receive window at the
  flow's :func:`background_window_bytes` (one sink port per distinct clamp), so a greedy
  background flow keeps about one bandwidth-delay product in flight instead of filling the
  drop-tail buffers it crosses (see :data:`BACKGROUND_WINDOW_SEGMENTS`).
* ``flow_stop``: SIGTERM the flow's sender, wait, SIGKILL if needed; its JSON summary (bytes,
  seconds, Mbit/s) is kept in :attr:`ScenarioExecutor.flow_results`.
* ``link_capacity``: a directed link ``u -> v`` is shaped by the HTB root qdisc (handle ``5:``,
  class ``5:1``, see :func:`topology.mininet_topo.htb_commands`) on ``u``'s interface facing
  ``v``; its class rate becomes ``factor x`` the emulated nominal rate. ``factor == 0`` takes the
  direction down by giving class ``5:1`` a ``blackhole`` leaf qdisc (everything leaving the
  interface is dropped; the kernel here has no netem and no tc classifiers/actions); a later
  ``factor > 0`` removes the leaf again (HTB falls back to its default FIFO).

Processes run in the Mininet hosts' namespaces (``host.popen``, cwd = repository root), with
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from scheduler.scenario import Action
from topology.cleanup import switch_intf_name
from topology.mininet_topo import (
    LEAF_HANDLE,
    SWITCH_SHAPE,
    HtbShape,
    host_intf_name,
    htb_commands,
    htb_shape,
    leaf_command,
    link_rates_mbit,
)
from topology.model import FatTree, switch_ports

ROOT = Path(__file__).resolve().parents[1]
BACKGROUND_PORT = 5399
"""First TCP port of the background sinks, one port per distinct window clamp from there up (agents
use 9470, tests' iperf3 servers 5301..5303)."""
FOREVER_S = 10_000_000.0
"""Sender duration: effectively until stopped."""
SINK_READY_TIMEOUT_S = 10.0
STOP_GRACE_S = 3.0
TC_TIMEOUT_S = 10.0
HTB_CLASS = "5:1"
DOWN_HANDLE = LEAF_HANDLE

BACKGROUND_WINDOW_SEGMENTS = 3
"""Segments a background flow may keep in flight beyond its path's bandwidth-delay product (see
:func:`background_window_bytes`).

Datacenter transports (DCTCP, DCQCN, Swift) hold switch queues near empty and converge to fair
shares, which is what the simulator's max-min model assumes. Loss-based TCP against the emulator's
drop-tail buffers instead keeps every link a greedy flow crosses at a full queue (100 ms), so any
KV transfer crossing it waits behind that queue and loses packets (each loss a timeout for a
transfer of a few dozen packets). A receive window of one bandwidth-delay product plus a few
segments lets a lone greedy flow fill its bottleneck while k flows sharing a link queue only about
k x (BDP + 3 segments) there, and a KV transfer starting with TCP's initial window of 10 segments
gets roughly its fair share of that FIFO. Measured on the hotspot scenario at 200 Gbit/s, 39
cross-pod transfers of 2k-16k tokens one at a time: mean emulated/fluid time x4.6 without a
clamp (BBR hosts), x0.94 (median x0.78) with it (reno hosts). ``window_clamp=None`` turns it off."""
BACKGROUND_BASE_RTT_S = 0.003
"""The emulated fabric's round trip without serialisation, with headroom: the idle probe reads
1.0-1.5 ms, but on a loaded machine it doubles, and with 1.5 ms and two extra segments a lone
greedy flow reached only 78% of its link in a CI run."""
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
    return rate_gbit_s * 1000.0 * scale / time_scale


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
    return htb_commands(intf, mbit, shape)[1].split()


def _del_leaf_argv(intf: str) -> list[str]:
    return ["tc", "qdisc", "del", "dev", intf, "parent", HTB_CLASS, "handle", DOWN_HANDLE]


def down_argvs(intf: str) -> list[list[str]]:
    """tc commands that drop everything leaving ``intf``: the HTB class's leaf becomes a
    blackhole (a leaf cannot change kind in place, hence delete then add)."""
    return [_del_leaf_argv(intf),
            ["tc", "qdisc", "add", "dev", intf, "parent", HTB_CLASS, "handle", DOWN_HANDLE, "blackhole"]]


def up_argvs(intf: str, mbit: float) -> list[list[str]]:
    """tc commands that put back the shallow FIFO leaf sized for ``mbit`` (the leaf the fabric
    installs, see :func:`topology.mininet_topo.leaf_command`), replacing a blackhole or an
    older FIFO."""
    add = leaf_command(intf, mbit).split()
    add[2] = "add"
    return [_del_leaf_argv(intf), add]


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
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                try:
                    self.popen.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    pass
            except ProcessLookupError:
                pass
        for fh in self.files:
            fh.close()
        self.files.clear()
        return self.popen.poll()

    def last_json(self) -> dict | None:
        try:
            lines = self.out.read_text(errors="replace").splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
        return None

    def err_tail(self, n: int = 5) -> str:
        try:
            return " | ".join(self.err.read_text(errors="replace").strip().splitlines()[-n:])
        except OSError:
            return ""


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
        self._down: set[int] = set()
        self._intf: dict[int, Any] = {}
        self._sinks: dict[tuple[str, int], _Proc] = {}
        self._flows: dict[str, _Proc] = {}
        self._seq = 0
        self._closed = False

    # ------------------------------------------------------------------ API
    def apply(self, action: Action) -> None:
        if self._closed:
            raise ScenarioExecError("executor is closed")
        if action.kind == "flow_start":
            self._flow_start(action)
        elif action.kind == "flow_stop":
            self._flow_stop(action)
        elif action.kind == "link_capacity":
            self._link_capacity(action)
        else:
            raise ScenarioExecError(f"unknown action kind {action.kind!r}")

    def capacity_factor(self) -> np.ndarray:
        """Current capacity factor per directed link (length n_links + 1, padding 1.0)."""
        return self._factor.copy()

    def active_flows(self) -> list[str]:
        return [fid for fid, p in self._flows.items() if p.popen.poll() is None]

    def close(self) -> None:
        """Stop every sender and sink this executor started; idempotent. Shaping stays."""
        if self._closed:
            return
        self._closed = True
        for fid in list(self._flows):
            self._stop_flow(fid)
        for proc in self._sinks.values():
            proc.stop()
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
        fout, ferr = open(out, "wb"), open(err, "wb")
        try:
            popen = self.fab.host(host_name).popen(argv, cwd=str(ROOT), stdin=subprocess.DEVNULL,
                                                   stdout=fout, stderr=ferr)
        except OSError as exc:
            fout.close()
            ferr.close()
            raise ScenarioExecError(f"starting {tag} in {host_name} failed: {exc}") from exc
        return _Proc(popen, host_name, out, err, [fout, ferr])

    def _clamp(self, src: int, dst: int) -> int | None:
        if self.window_clamp == "auto":
            return background_window_bytes(self.tree, self.scale, self.time_scale, src, dst)
        return self.window_clamp

    def _sink(self, host_name: str, clamp: int | None) -> int:
        """A sink in ``host_name`` whose connections advertise at most ``clamp`` bytes of window
        (None: unclamped); one port per distinct clamp. Returns the port."""
        port = self._clamp_ports.setdefault(clamp, self.port + len(self._clamp_ports))
        proc = self._sinks.get((host_name, port))
        if proc is not None and proc.popen.poll() is None:
            return port
        if proc is not None:
            proc.stop()
        proc = self._spawn(host_name, f"sink-{host_name}-{port}",
                           [self.python, "-m", "hosts.background", "--listen", f"0.0.0.0:{port}"]
                           + (["--window-clamp", str(clamp)] if clamp else []))
        self._sinks[(host_name, port)] = proc
        deadline = time.monotonic() + SINK_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise ScenarioExecError(f"background sink in {host_name} exited with "
                                        f"{proc.popen.returncode}: {proc.err_tail()}")
            try:
                if "listening" in proc.out.read_text(errors="replace"):
                    return port
            except OSError:
                pass
            time.sleep(0.05)
        raise ScenarioExecError(f"background sink in {host_name} not listening after "
                                f"{SINK_READY_TIMEOUT_S:g} s: {proc.err_tail()}")

    def _flow_start(self, action: Action) -> None:
        if action.flow_id is None or action.src is None or action.dst is None:
            raise ScenarioExecError(f"flow_start needs flow_id, src and dst: {action}")
        if action.flow_id in self._flows:
            raise ScenarioExecError(f"flow {action.flow_id!r} already started")
        src, dst = self.tree.gpu_name(action.src), self.tree.gpu_name(action.dst)
        mbit = background_rate_mbit(action.rate_gbit_s, self.scale, self.time_scale)
        port = self._sink(dst, self._clamp(action.src, action.dst))
        argv = [self.python, "-m", "hosts.background",
                "--dst", f"{self.fab.peer_ip(action.src, action.dst)}:{port}",
                "--duration", f"{FOREVER_S:g}"]
        if mbit is not None:
            argv += ["--rate-mbit", f"{mbit:.6g}"]
        if self.congestion:
            argv += ["--congestion", self.congestion]
        self._flows[action.flow_id] = self._spawn(src, f"flow-{action.flow_id}-{src}-{dst}", argv)

    def _flow_stop(self, action: Action) -> None:
        if action.flow_id is None:
            raise ScenarioExecError(f"flow_stop needs flow_id: {action}")
        self._stop_flow(action.flow_id)  # unknown or already stopped flows: nothing to do

    def _stop_flow(self, flow_id: str) -> None:
        proc = self._flows.pop(flow_id, None)
        if proc is None:
            return
        proc.stop()
        self.flow_results[flow_id] = proc.last_json()

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
        rates = self.fab.topo.rates_mbit
        for link in action.links:
            intf = self.egress_intf(link)
            if action.factor == 0:
                if link not in self._down:
                    for argv in down_argvs(intf.name):
                        self._tc(intf, argv)
                    self._down.add(link)
            else:
                kind = self.tree.link_kind(link)
                mbit = rates[kind] * action.factor
                self._tc(intf, rate_argv(intf.name, mbit, htb_shape(kind)))
                for argv in up_argvs(intf.name, mbit):  # leaf back (if down) and resized
                    self._tc(intf, argv)
                self._down.discard(link)
            self._factor[link] = action.factor
