"""The emulated fat-tree: Mininet hosts/switches/links + our Ryu controller, as a context manager.

    with Fabric(FatTree(), scale=2.5e-5) as fab:          # root only
        fab.host("p0t0s0g0").cmd("ping -c1", fab.peer_ip(0, 17))
        snapshot = fab.telemetry()

Start-up: root and Open vSwitch checks -> refuse if another live fabric owns the state file ->
remove this project's own leftovers (state file + the model's deterministic names; never
``mn -c``) -> record what we are about to own in the state file (``/run/netkv/fabric.json``) ->
start the controller (``python -m controller.run``, log in the run folder) -> build the Mininet network
(:class:`topology.mininet_topo.FatTreeTopo`, OVS bridges in fail-mode secure, userspace datapath
unless the kernel has the openvswitch module) -> per-host IPv6 off, subnet routes (NIC 10/8 on
eth0, NVLink 192.168/16 on eth1) and static ARP -> start the switches -> wait until the
controller reports every switch connected with its routes installed -> ping one pair of every
tier. Teardown (``stop``/``__exit__``, also on SIGINT/SIGTERM/SIGHUP while running and on any exception
during start) stops the hosts, bridges and links in bulk (see ``Fabric._stop_network``), the
controller, then removes whatever of ours is still there and deletes the state file. ``python -m topology.fabric serve ...`` is the background owner process
``netkv fabric up`` starts (see :mod:`scripts.cmd_fabric`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path

from controller.run import ControllerConfig
from scheduler.paths import RESULTS_DIR
from topology import cleanup
from topology.cleanup import STATE_FILE, read_state, remove_state, write_state
from topology.model import FatTree, FatTreeConfig, gpu_mac, nic_ip, nvlink_ip, peer_ip
from topology.mininet_topo import (
    DEFAULT_SCALE,
    NIC_PREFIX,
    NVLINK_PREFIX,
    FatTreeTopo,
    ShapedLink,
    default_datapath,
    host_intf_name,
    link_capacity_bps,
)

CONTROLLER_MODULE = "controller.run"  # run with `python -m` (the package is installed editable)
CONTROLLER_NAME = "ryu"  # Mininet node name of the RemoteController ('c0' is a core switch)
DEFAULT_OFP_PORT = 6653
DEFAULT_REST_PORT = 8080
DEFAULT_POLL_INTERVAL_S = 0.5
READY_TIMEOUT_S = 60.0
ROOT_REASON = ("the emulated fabric needs root: it creates network namespaces, veth pairs, tc (HTB) "
               "qdiscs and Open vSwitch bridges")


HOST_RTO_MIN_MS = 10
"""TCP minimum retransmission timeout on the hosts' fabric routes. Linux's default 200 ms would
turn every tail drop behind a background flow into a 200 ms stall of a KV transfer that lasts
tens of ms; datacenter TCP deployments lower it to a few ms for the same reason (incast)."""
HOST_TCP_CONGESTION = "reno"
"""TCP congestion control inside every emulated host (a per-namespace sysctl), set explicitly so
results do not depend on the VM's default: new namespaces inherit the root namespace's choice,
which is BBR on this image. BBR v1 ignores loss; against the fabric's drop-tail buffers and the
greedy background flows it retransmitted 30-50% of the bytes of short KV transfers (hotspot
scenario, measured with ``ss -ti``). Reno because a namespace may only pick an algorithm from the
VM's ``tcp_allowed_congestion_control``, which always holds reno (cubic is often missing there and
we do not change global settings); for transfers of tens of packets reno and cubic behave alike
(slow start, loss recovery), and background flows are window-clamped."""
HOST_SLOW_START_AFTER_IDLE = 0
"""``net.ipv4.tcp_slow_start_after_idle`` inside every emulated host. Linux's default (1) shrinks
a connection's window back to 10 segments after it idled one RTO, and the agents' pooled KV
connections idle between requests, so each transfer paid one extra round trip to regrow it; a
KV transfer engine over RDMA (and the fluid model) starts at the path's rate. Measured on an idle
NVLink pair, 27 kB (an 8k-token KV cache) 0.2 s after the previous transfer: median 4.9 ms with
1, 3.0 ms with 0 (2.4 ms predicted); 225 kB 22.0 vs 18.9 ms (20.0 predicted)."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals that tear a running fabric down instead of killing its owner: Ctrl-C, ``kill``, and the
hang-up a dropped SSH session sends to ``sudo netkv emulate``."""


class FabricError(RuntimeError):
    """The fabric could not be built, checked or torn down; the message says what and why."""


class FabricBusyError(FabricError):
    """Another live process owns a running fabric (see the state file)."""


def require_root() -> None:
    if os.geteuid() != 0:
        raise FabricError(f"{ROOT_REASON}; run as root (e.g. sudo)")


def require_ovs() -> None:
    if shutil.which("ovs-vsctl") is None or shutil.which("mnexec") is None:
        raise FabricError("Open vSwitch / Mininet are not installed; run: sudo scripts/setup.sh --emulation")
    done = subprocess.run(["ovs-vsctl", "--timeout=5", "show"], capture_output=True, text=True, check=False)
    if done.returncode:
        raise FabricError(f"Open vSwitch is not running ({done.stderr.strip()}); run: sudo scripts/setup.sh --emulation")


def controller_python() -> str:
    """The interpreter running this (the project's venv: it has Ryu and the installed package)."""
    return sys.executable


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http_json(url: str, timeout_s: float = 1.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (loopback URL)
        return json.loads(resp.read())


def tier_samples(tree: FatTree) -> dict[int, tuple[int, int]]:
    """One (src, dst) GPU pair per tier that exists in ``tree``; used by the ping check."""
    n = tree.n_gpus
    out: dict[int, tuple[int, int]] = {}
    for src in (0, n - 1):
        for dst in range(n):
            if dst != src:
                out.setdefault(tree.tier(src, dst), (src, dst))
    return dict(sorted(out.items()))


class Fabric:
    """Emulated fat-tree with our controller. Root only; use as a context manager."""

    def __init__(
        self,
        tree: FatTree | None = None,
        scale: float = DEFAULT_SCALE,
        run_dir: str | Path | None = None,
        ofp_port: int = DEFAULT_OFP_PORT,
        rest_port: int = DEFAULT_REST_PORT,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        nvlink_cap_mbit: float | None = None,
        datapath: str | None = None,
        state_file: Path = STATE_FILE,
        check_reachability: bool = True,
        handle_signals: bool = True,
    ) -> None:
        self.tree = tree or FatTree()
        self.scale = scale
        self.nvlink_cap_mbit = nvlink_cap_mbit
        self.topo = FatTreeTopo(tree=self.tree, scale=scale, nvlink_cap_mbit=nvlink_cap_mbit)  # validates
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = Path(run_dir) if run_dir else RESULTS_DIR / "fabric" / stamp
        self.ofp_port = ofp_port
        self.rest_port = rest_port
        self.poll_interval_s = poll_interval_s
        self.datapath = datapath
        self.state_file = Path(state_file)
        self.check_reachability = check_reachability
        self.handle_signals = handle_signals
        self.net = None
        self.controller_proc: subprocess.Popen | None = None
        self.state: dict = {}
        self.timings: dict[str, float] = {}
        self.reachability: dict[int, dict] = {}
        self.removed_at_start: cleanup.CleanupReport | None = None
        self._old_handlers: dict[int, object] = {}
        self._stopping = False

    # ----------------------------------------------------------------- public API
    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def telemetry_url(self) -> str:
        return f"{self.rest_url}/netkv/telemetry"

    def host(self, name: str):
        """Mininet host object (``.cmd()``, ``.popen()``, ``.pid``) of GPU host ``name``."""
        self.tree.gpu_index(name)  # clear error for unknown names
        if self.net is None:
            raise FabricError("fabric is not running")
        return self.net.get(name)

    def peer_ip(self, src: int, dst: int) -> str:
        """Address GPU ``src`` uses for GPU ``dst`` (NVLink IP inside a server, NIC IP otherwise)."""
        return peer_ip(self.tree, src, dst)

    def telemetry(self, timeout_s: float = 2.0) -> dict:
        return http_json(self.telemetry_url, timeout_s)

    def controller_status(self, timeout_s: float = 2.0) -> dict:
        return http_json(f"{self.rest_url}/netkv/status", timeout_s)

    def restart_controller(self) -> float:
        """Stop the controller and start a new one on the same ports (the switches keep their
        flows meanwhile: fail-mode secure); returns seconds until every switch has its routes
        re-installed."""
        if self.net is None or self.controller_proc is None:
            raise FabricError("fabric is not running")
        t0 = time.monotonic()
        cleanup.kill_pids([self.controller_proc.pid], grace_s=3.0)
        self.controller_proc.wait(timeout=5)
        deadline = time.monotonic() + 10
        while not (port_free(self.ofp_port) and port_free(self.rest_port)) and time.monotonic() < deadline:
            time.sleep(0.1)
        self._start_controller()
        self._wait_ready()
        return time.monotonic() - t0

    def __enter__(self) -> Fabric:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------- start
    def start(self) -> Fabric:
        require_root()
        require_ovs()
        t0 = time.monotonic()
        if self.handle_signals:
            self._install_signal_handlers()
        try:
            self._claim()
            self._start_controller()
            self._build()
            self._wait_ready()
            if self.check_reachability:
                self.reachability = self.ping_tiers()
                bad = {t: r for t, r in self.reachability.items() if not r["ok"]}
                if bad:
                    raise FabricError(f"reachability check failed for tiers {sorted(bad)}: {bad}")
            self.timings["up_s"] = time.monotonic() - t0
            self._save_state(status="ready", up_seconds=round(self.timings["up_s"], 2))
        except BaseException:
            self.stop()
            raise
        return self

    def _claim(self) -> None:
        """Refuse when another live fabric runs; otherwise remove our leftovers and record
        what we are about to create before creating anything."""
        old = read_state(self.state_file)
        if old and cleanup.owner_alive(old):
            raise FabricBusyError(
                f"a fabric is already running (owner pid {old.get('owner_pid')}, state {self.state_file}); "
                f"stop it first: netkv fabric down"
            )
        trees = [self.tree, FatTree()]
        if old and isinstance(old.get("topology"), dict):
            try:
                trees.append(FatTree(FatTreeConfig(**old["topology"])))
            except (TypeError, ValueError):
                pass
        self.removed_at_start = cleanup.remove_leftovers(trees, old)
        if not self.removed_at_start.empty():
            print(f"[fabric] removed leftovers of an earlier run: {self.removed_at_start}", file=sys.stderr)
        remove_state(self.state_file)
        for port in (self.ofp_port, self.rest_port):
            if not port_free(port):
                raise FabricError(f"TCP port {port} on 127.0.0.1 is in use; choose another (--ofp-port/--rest-port)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.state = {
            "owner_pid": os.getpid(),
            "owner_cmdline": cleanup.cmdline(os.getpid()),
            "status": "starting",
            "run_dir": str(self.run_dir),
            "topology": self.tree.config.to_dict(),
            "scale": self.scale,
            "link_rates_mbit": self.topo.rates_mbit,
            "ofp_port": self.ofp_port,
            "rest_port": self.rest_port,
            "rest_url": self.rest_url,
            "telemetry_url": self.telemetry_url,
            "poll_interval_s": self.poll_interval_s,
            "bridges": cleanup.bridge_names(self.tree),
            "links": len(self.topo.links()),
            "started_at": time.time(),
            "controller_pid": None,
            "host_pids": {},
            "switch_pids": {},
            "hosts": {},
        }
        self._save_state()

    def _save_state(self, **updates) -> None:
        self.state.update(updates)
        write_state(self.state, self.state_file)

    def _start_controller(self) -> None:
        cfg = self.run_dir / "controller.json"
        cfg.write_text(ControllerConfig(
            topology=self.tree.config,
            poll_interval_s=self.poll_interval_s,
            link_capacity_bps=link_capacity_bps(self.tree, self.scale, self.nvlink_cap_mbit),
        ).to_json())
        log = open(self.run_dir / "controller.log", "ab")
        try:
            self.controller_proc = subprocess.Popen(
                [controller_python(), "-m", CONTROLLER_MODULE, "--config", str(cfg),
                 "--ofp-port", str(self.ofp_port), "--rest-port", str(self.rest_port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self._save_state(controller_pid=self.controller_proc.pid)

    def _wait_controller_listening(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.controller_proc.poll() is not None:
                raise FabricError(f"controller exited with {self.controller_proc.returncode}: "
                                  f"{self._controller_log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.ofp_port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise FabricError(f"controller not listening on port {self.ofp_port} after {timeout_s} s: "
                          f"{self._controller_log_tail()}")

    def _controller_log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.run_dir / "controller.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no controller log)"
        return f"log {self.run_dir / 'controller.log'}:\n" + "\n".join(text[-lines:])

    def _build(self) -> None:
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.node import OVSSwitch, RemoteController

        setLogLevel(os.environ.get("NETKV_MININET_LOG", "warning"))
        datapath = self.datapath or default_datapath()
        switch = partial(OVSSwitch, datapath=datapath, batch=True, protocols="OpenFlow13", failMode="secure")
        t0 = time.monotonic()
        self.net = Mininet(topo=self.topo, switch=switch, link=ShapedLink, controller=None, build=False,
                           autoSetMacs=False, autoStaticArp=False, waitConnected=False)
        # Record the shells right after build, so a crash later on is cleanable from the state file.
        self.net.build()
        self._save_state(
            datapath=datapath,
            host_pids={h.name: h.pid for h in self.net.hosts},
            switch_pids={s.name: s.pid for s in self.net.switches},
            hosts={h.name: {"pid": h.pid, "nic_ip": nic_ip(self.tree, g), "nvlink_ip": nvlink_ip(self.tree, g)}
                   for g, h in enumerate(self.net.get(*self.tree.gpu_names))},
        )
        self._configure_hosts()
        self.timings["build_s"] = time.monotonic() - t0
        self._wait_controller_listening()
        class _ListeningController(RemoteController):
            def checkListening(self) -> None:
                """Already checked by ``_wait_controller_listening``. Mininet's own probe telnets
                to the port and decodes what comes back as UTF-8; when Ryu's binary OpenFlow
                HELLO (a random xid) arrives before telnet hangs up, that raises
                UnicodeDecodeError (seen once in CI on a loaded machine)."""

        self.net.addController(_ListeningController(CONTROLLER_NAME, ip="127.0.0.1", port=self.ofp_port))
        t1 = time.monotonic()
        self.net.start()
        self._check_shaping()
        self.timings["start_s"] = time.monotonic() - t1

    def _check_shaping(self) -> None:
        """Re-apply HTB on switch ports whose root qdisc went missing when OVS took them over."""
        shown = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True, check=False).stdout
        shaped = {line.split(" dev ", 1)[1].split()[0] for line in shown.splitlines()
                  if line.startswith("qdisc htb 5:") and " dev " in line}
        for sw in self.net.switches:
            for intf in sw.intfList():
                if getattr(intf, "bw", None) is not None and intf.name not in shaped:
                    intf.config(**intf.params)
                    if not intf.shaped():
                        raise FabricError(f"could not shape {intf.name} at {intf.bw} Mbit/s")

    def _configure_hosts(self) -> None:
        tree = self.tree
        # Root-namespace switch ports: no IPv6 chatter (router solicitations, MLD) into the fabric.
        for name in cleanup.switch_intf_names(tree):
            path = Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6")
            if path.exists():
                path.write_text("1")
        arp_dir = self.run_dir / "arp"
        arp_dir.mkdir(exist_ok=True)
        for g, name in enumerate(tree.gpu_names):
            eth0, eth1 = host_intf_name(name, False), host_intf_name(name, True)
            lines = [f"neigh replace {nic_ip(tree, d)} lladdr {gpu_mac(d)} dev {eth0} nud permanent"
                     for d in range(tree.n_gpus) if d != g]
            lines += [f"neigh replace {nvlink_ip(tree, d)} lladdr {gpu_mac(d, nvlink=True)} dev {eth1} nud permanent"
                      for d in range(tree.n_gpus) if d != g and tree.tier(g, d) == 0]
            batch = arp_dir / f"{name}.batch"
            batch.write_text("\n".join(lines) + "\n")
            host = self.net.get(name)
            out = host.cmd(
                "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1;"
                f" sysctl -qw net.ipv4.tcp_congestion_control={HOST_TCP_CONGESTION}"
                f" net.ipv4.tcp_slow_start_after_idle={HOST_SLOW_START_AFTER_IDLE} &&"
                f" ip route replace 10.0.0.0/{NIC_PREFIX} dev {eth0} rto_min {HOST_RTO_MIN_MS}ms &&"
                f" ip route replace 192.168.0.0/{NVLINK_PREFIX} dev {eth1} rto_min {HOST_RTO_MIN_MS}ms &&"
                f" ip -batch {batch} && echo netkv-ok"
            )
            if "netkv-ok" not in out:
                raise FabricError(f"configuring host {name} failed: {out.strip()}")

    def _wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout_s
        status: dict = {}
        expected = len(self.tree.switch_names())
        while time.monotonic() < deadline:
            if self.controller_proc.poll() is not None:
                raise FabricError(f"controller exited with {self.controller_proc.returncode}: "
                                  f"{self._controller_log_tail()}")
            try:
                status = self.controller_status(timeout_s=1.0)
            except (OSError, urllib.error.URLError, ValueError):
                time.sleep(0.2)
                continue
            if len(status.get("switches_ready", [])) == expected:
                return status
            time.sleep(0.2)
        missing = sorted(set(self.tree.switch_names()) - set(status.get("switches_ready", [])))
        raise FabricError(f"only {expected - len(missing)}/{expected} switches connected with routes after "
                          f"{timeout_s} s (missing: {', '.join(missing[:8])}); {self._controller_log_tail()}")

    def ping_tiers(self, count: int = 1, attempts: int = 3) -> dict[int, dict]:
        """Ping one pair of every tier; {tier: {"src", "dst", "ip", "ok", "rtt_ms"}}."""
        out: dict[int, dict] = {}
        for tier, (src, dst) in tier_samples(self.tree).items():
            ip = self.peer_ip(src, dst)
            host = self.net.get(self.tree.gpu_name(src))
            res = {"src": self.tree.gpu_name(src), "dst": self.tree.gpu_name(dst), "ip": ip, "ok": False, "rtt_ms": None}
            for _ in range(attempts):
                text = host.cmd(f"ping -c{count} -W1 -q {ip}")
                if " 0% packet loss" in text:
                    res["ok"] = True
                    rtt = text.rsplit("=", 1)[-1].split("/")
                    res["rtt_ms"] = float(rtt[1]) if len(rtt) > 1 else None
                    break
            out[tier] = res
        return out

    # ----------------------------------------------------------------- stop
    def stop(self) -> None:
        """Tear down everything this fabric created; idempotent; raises FabricError if some of
        it could not be removed (after trying all steps)."""
        if self._stopping:
            return
        if not self.state:  # nothing claimed (e.g. FabricBusyError): nothing of ours to remove
            self._restore_signal_handlers()
            return
        self._stopping = True
        t0 = time.monotonic()
        errors: list[str] = []
        masked = self._mask_signals()
        try:
            if self.state:
                try:
                    self._save_state(status="stopping")
                except OSError:
                    pass
            if self.net is not None:
                try:
                    self._stop_network()
                except Exception as exc:  # noqa: BLE001 -- keep tearing down, report at the end
                    errors.append(f"network stop: {type(exc).__name__}: {exc}")
                self.net = None
            if self.controller_proc is not None:
                cleanup.kill_pids([self.controller_proc.pid], grace_s=3.0)
                try:
                    self.controller_proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    errors.append(f"controller pid {self.controller_proc.pid} did not exit")
                self.controller_proc = None
            try:
                left = cleanup.remove_leftovers([self.tree], self.state or None)
                if not left.empty():
                    print(f"[fabric] removed after Mininet stop: {left}", file=sys.stderr)
                still = cleanup.leftovers([self.tree], self.state or None)
                if not still.empty():
                    errors.append(f"still present after teardown: {still}")
            except (cleanup.CleanupError, OSError) as exc:
                errors.append(str(exc))
            if self.state and not errors:
                remove_state(self.state_file)
        finally:
            self.timings["down_s"] = time.monotonic() - t0
            self._restore_signals(masked)
            self._restore_signal_handlers()
            self._stopping = False
        if errors:
            raise FabricError("teardown incomplete: " + "; ".join(errors))

    def _stop_network(self) -> None:
        """Mininet's ``net.stop()`` in bulk (8 s -> ~2 s for 64 GPUs): it deletes 320 interfaces
        one shell command at a time (~14 ms each) and the bridges with their ports afterwards.
        Here every process in the hosts' namespaces goes first, so the kernel destroys the
        namespaces -- and the host veth pairs in them -- in one batch; then all bridges in one
        ovs-vsctl call, the remaining switch-to-switch veths in one ``ip -batch``, and the
        switch shells."""
        net = self.net
        hosts = cleanup.host_processes(self.state) if self.state.get("host_pids") else []
        cleanup.kill_pids(hosts, grace_s=1.0)
        for host in net.hosts:
            host.terminate()
        cleanup.delete_bridges(cleanup.present_bridges(cleanup.bridge_names(self.tree)))
        cleanup.delete_links(cleanup.present_links(cleanup.switch_intf_names(self.tree)))
        for switch in net.switches:
            switch.terminate()

    # ----------------------------------------------------------------- signals
    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame) -> None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise cleanup.StopSignal(signum)

    def _restore_signal_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers = {}

    @staticmethod
    def _mask_signals() -> bool:
        """Block the stop signals during teardown so a second Ctrl-C cannot leave half a fabric."""
        if threading.current_thread() is not threading.main_thread():
            return False
        signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
        return True

    @staticmethod
    def _restore_signals(masked: bool) -> None:
        if masked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, set(STOP_SIGNALS))


# --------------------------------------------------------------------------- background owner
def serve(argv: list[str] | None = None) -> int:
    """Own a fabric until SIGTERM/SIGINT (the process ``netkv fabric up`` leaves running)."""
    p = argparse.ArgumentParser(prog="python -m topology.fabric serve")
    p.add_argument("--topology", default="{}", help="FatTreeConfig fields as JSON")
    p.add_argument("--scale", type=float, default=DEFAULT_SCALE)
    p.add_argument("--nvlink-cap-mbit", type=float, default=None)
    p.add_argument("--run-dir", default=None)
    p.add_argument("--ofp-port", type=int, default=DEFAULT_OFP_PORT)
    p.add_argument("--rest-port", type=int, default=DEFAULT_REST_PORT)
    p.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL_S)
    args = p.parse_args(argv)
    tree = FatTree(FatTreeConfig(**json.loads(args.topology)))
    fabric = Fabric(tree, scale=args.scale, run_dir=args.run_dir, ofp_port=args.ofp_port,
                    rest_port=args.rest_port, poll_interval_s=args.poll_interval,
                    nvlink_cap_mbit=args.nvlink_cap_mbit)
    try:
        with fabric:
            print(f"[fabric] up in {fabric.timings['up_s']:.1f} s; {fabric.rest_url}", flush=True)
            while True:
                signal.pause()
    except (KeyboardInterrupt, SystemExit):
        print(f"[fabric] down in {fabric.timings.get('down_s', 0.0):.1f} s", flush=True)
    except FabricError as exc:
        print(f"[fabric] error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        print("usage: python -m topology.fabric serve [options]  (normally started by: netkv fabric up)",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(serve(sys.argv[2:]))
