"""The emulated fat-tree: Mininet hosts/switches/links connected to an OpenFlow controller, as a context manager.

    with controlled_fabric(FatTree(), 2.5e-5, run_dir) as fab:    # controller.process; root only
        fab.host("p0t0s0g0").cmd("ping -c1", fab.peer_ip(0, 17))
        snapshot = fab.telemetry()

Start-up: root and Open vSwitch checks -> refuse if another live fabric owns the state file ->
remove this project's own leftovers (state file + the model's deterministic names; never
``mn -c``) -> record what we are about to own in the state file (``/run/netkv/fabric.json``) ->
start the controller (a :class:`FabricController`; ours is :class:`controller.process.ControllerProcess`)
-> build the Mininet network (:class:`topology.mininet_topo.FatTreeTopo`, OVS bridges in fail-mode
secure, userspace datapath unless the kernel has the openvswitch module) -> host settings
(:mod:`topology.host_setup`: IPv6 off, subnet routes, static ARP, transport sysctls) -> start the
switches -> wait until the controller reports every switch connected with its routes installed ->
ping one pair of every tier. Teardown (``stop``/``__exit__``, also on SIGINT/SIGTERM/SIGHUP while
running, :mod:`topology.signals`, and on any exception during start) stops the hosts, bridges and
links in bulk (see ``Fabric._stop_network``), the controller, then removes whatever of ours is
still there and deletes the state file. ``python -m scripts.cmd_fabric serve ...`` is the
background owner process ``netkv fabric up`` starts.

This module does not import the controller: the fabric is given the OpenFlow port and, optionally,
the controller object to start and stop (the composition is :func:`controller.process.controlled_fabric`).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from topology import cleanup
from topology import cluster as cluster_mode
from topology.cleanup import STATE_FILE, read_state, remove_state, write_state
from topology.errors import FabricBusyError, FabricError
from topology.host_setup import configure_hosts, reconfigure_host
from topology.mininet_topo import FatTreeTopo, ShapedLink, default_datapath, link_capacity_bps
from topology.model import FatTree, FatTreeConfig, nic_ip, nvlink_ip, peer_ip
from topology.signals import StopSignalHandlers, mask_stop_signals, unmask_stop_signals

if TYPE_CHECKING:
    from mininet.net import Mininet

CONTROLLER_NAME = "ryu"  # Mininet node name of the RemoteController ('c0' is a core switch)
ROOT_REASON = ("the emulated fabric needs root: it creates network namespaces, veth pairs, tc (HTB) "
               "qdiscs and Open vSwitch bridges")


@dataclass(frozen=True)
class ControllerSpec:
    """What a fabric tells its controller at start: the tree, every directed link's emulated
    capacity (bits/s, keyed by ``FatTree.link_name``), the OpenFlow port, the run folder."""

    tree: FatTree
    link_capacity_bps: dict[str, float]
    ofp_port: int
    run_dir: Path


class FabricController(Protocol):
    """The OpenFlow controller a fabric starts before its switches and stops after them. Every
    failure is a :class:`FabricError` saying why."""

    @property
    def pid(self) -> int | None: ...  # recorded in the state file, so a crashed owner's is found

    def check_ports(self, ofp_port: int) -> None: ...  # the ports it would listen on are free

    def start(self, spec: ControllerSpec) -> None: ...  # returns at once; the network is built meanwhile

    def wait_listening(self) -> None: ...  # until it accepts OpenFlow connections

    def wait_ready(self) -> dict: ...  # until every switch is connected with its routes installed

    def restart(self) -> None: ...  # stop and start with the same spec, then wait_ready

    def crash(self) -> None: ...  # kill at once (fault injection); recover() starts it again

    def recover(self) -> None: ...  # start the crashed one again, then wait_ready

    def stop(self) -> None: ...  # idempotent

    def state(self) -> dict: ...  # entries for the state file (ports, URLs)

    def telemetry(self, timeout_s: float = 2.0) -> dict: ...  # the DESIGN.md telemetry snapshot


def require_root() -> None:
    if os.geteuid() != 0:
        raise FabricError(f"{ROOT_REASON}; run as root (e.g. sudo)")


def require_ovs() -> None:
    if shutil.which("ovs-vsctl") is None or shutil.which("mnexec") is None:
        raise FabricError("Open vSwitch / Mininet are not installed; "
                          "run: sudo scripts/setup.sh --emulation")
    done = subprocess.run(["ovs-vsctl", "--timeout=5", "show"], capture_output=True, text=True, check=False)
    if done.returncode:
        raise FabricError(f"Open vSwitch is not running ({done.stderr.strip()}); "
                          "run: sudo scripts/setup.sh --emulation")


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
    """Emulated fat-tree. Root only; use as a context manager.

    ``controller`` is started before the switches and stopped after them; without one the switches
    connect to whatever controller listens on ``ofp_port`` (the caller's)."""

    def __init__(
        self,
        tree: FatTree,
        scale: float,
        run_dir: str | Path,
        ofp_port: int,
        controller: FabricController | None = None,
        *,
        nvlink_cap_mbit: float | None = None,
        datapath: str | None = None,
        state_file: Path = STATE_FILE,
        check_reachability: bool = True,
        handle_signals: bool = True,
        cluster: cluster_mode.ClusterSpec | None = None,
    ) -> None:
        self.tree = tree
        self.scale = scale
        self.nvlink_cap_mbit = nvlink_cap_mbit
        self.cluster = cluster if cluster is not None else cluster_mode.session_spec()
        """Servers the fabric is placed over (:mod:`topology.cluster`); None: this machine alone."""
        self._cluster_classes = cluster_mode.mininet_classes(self.cluster) if self.cluster else None
        link = {"link_cls": self._cluster_classes["link"]} if self._cluster_classes else {}
        self.topo = FatTreeTopo(tree=self.tree, scale=scale, nvlink_cap_mbit=nvlink_cap_mbit, **link)  # validates
        self.run_dir = Path(run_dir)
        self.ofp_port = ofp_port
        self.controller = controller
        self.datapath = datapath
        self.state_file = Path(state_file)
        self.check_reachability = check_reachability
        self.handle_signals = handle_signals
        self.net: Mininet | None = None
        self.state: dict = {}
        self.timings: dict[str, float] = {}
        self.reachability: dict[int, dict] = {}
        self.removed_at_start: cleanup.CleanupReport | None = None
        self._signals = StopSignalHandlers()
        self._stopping = False

    # ----------------------------------------------------------------- public API
    def host(self, name: str) -> Any:
        """Mininet host object (``.cmd()``, ``.popen()``, ``.pid``) of GPU host ``name``."""
        self.tree.gpu_index(name)  # clear error for unknown names
        return self._net().get(name)

    def peer_ip(self, src: int, dst: int) -> str:
        """Address GPU ``src`` uses for GPU ``dst`` (NVLink IP inside a server, NIC IP otherwise)."""
        return peer_ip(self.tree, src, dst)

    def set_link_status(self, upper: str, lower: str, up: bool) -> None:
        """Both interfaces of the link ``upper`` <-> ``lower`` up or down (Mininet's link status:
        the switch end reports the port change to the controller). A GPU host's settings on that
        link (routes, ARP) are put back when it comes up."""
        net = self._net()
        if not net.linksBetween(net.get(upper), net.get(lower)):
            raise FabricError(f"no link {upper} <-> {lower} in this fabric")
        net.configLinkStatus(upper, lower, "up" if up else "down")
        if up and lower in self.tree.gpu_names:
            reconfigure_host(net, self.tree, lower, self.run_dir)

    def telemetry(self, timeout_s: float = 2.0) -> dict:
        """The controller's telemetry snapshot (DESIGN.md schema)."""
        return self._controller().telemetry(timeout_s)

    def restart_controller(self) -> float:
        """Restart the controller (the switches keep their flows meanwhile: fail-mode secure);
        returns seconds until every switch has its routes re-installed."""
        self._net()  # the fabric must be running
        return self._timed_controller_start(self._controller().restart)

    def crash_controller(self) -> None:
        """Kill the controller (fault injection); the switches forward on what they hold."""
        self._net()  # the fabric must be running
        self._controller().crash()

    def recover_controller(self) -> float:
        """Start the crashed controller again; seconds until every switch has its routes."""
        return self._timed_controller_start(self._controller().recover)

    def _timed_controller_start(self, start: Callable[[], None]) -> float:
        """Run ``start`` (it returns once every switch has its routes), record the controller's new
        pid in the state file; the seconds it took."""
        t0 = time.monotonic()
        start()
        self._save_state(controller_pid=self._controller().pid)
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
            self._signals.install()
        try:
            self._claim()
            self._start_controller()
            self._build()
            if self.controller is not None:
                self.controller.wait_ready()
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

    def _net(self) -> Mininet:
        """The running Mininet network; FabricError when the fabric is not running."""
        if self.net is None:
            raise FabricError("fabric is not running")
        return self.net

    def _controller(self) -> FabricController:
        if self.controller is None:
            raise FabricError("this fabric was given no controller (its switches use the one on "
                              f"port {self.ofp_port})")
        return self.controller

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
        if self.controller is not None:
            self.controller.check_ports(self.ofp_port)
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
            **(self.controller.state() if self.controller is not None else {}),
            "bridges": cleanup.bridge_names(self.tree),
            "links": len(self.topo.links()),
            "started_at": time.time(),
            "controller_pid": None,
            "host_pids": {},
            "switch_pids": {},
            "hosts": {},
        }
        if self.cluster is not None:
            self.state["cluster"] = {**self.cluster.to_dict(),
                                     "placement": cluster_mode.placement(self.tree, self.cluster.servers)}
        self._save_state()

    def _save_state(self, **updates) -> None:
        self.state.update(updates)
        write_state(self.state, self.state_file)

    def record_process(self, pid: int, mark: str, folder: str | None = None) -> None:
        """Record a helper process the run started beside the fabric (e.g. Prometheus, the oracle
        service), with a substring of its command line and an optional temporary folder of its,
        so a later start-up removes them if this process dies without its teardown (SIGKILL)."""
        helpers = [*self.state.get("helpers", []), {"pid": int(pid), "mark": mark, "folder": folder}]
        self._save_state(helpers=helpers)

    def forget_process(self, pid: int) -> None:
        """The helper process ``pid`` was stopped and its folder removed by its owner."""
        self._save_state(helpers=[h for h in self.state.get("helpers", []) if h["pid"] != pid])

    def _start_controller(self) -> None:
        if self.controller is None:
            return
        self.controller.start(ControllerSpec(
            tree=self.tree, link_capacity_bps=link_capacity_bps(self.tree, self.scale, self.nvlink_cap_mbit),
            ofp_port=self.ofp_port, run_dir=self.run_dir))
        self._save_state(controller_pid=self.controller.pid)

    def _build(self) -> None:
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.node import OVSSwitch, RemoteController

        setLogLevel(os.environ.get("NETKV_MININET_LOG", "warning"))
        datapath = self.datapath or default_datapath()
        switch = partial(OVSSwitch, datapath=datapath, batch=True, protocols="OpenFlow13", failMode="secure")
        t0 = time.monotonic()
        options = {"topo": self.topo, "switch": switch, "controller": None, "build": False, "autoSetMacs": False,
                   "autoStaticArp": False, "waitConnected": False}
        if self.cluster is not None and self._cluster_classes is not None:
            self.net = net = cluster_mode.cluster_net(self.cluster, self.tree, self._cluster_classes, **options)
        else:
            self.net = net = Mininet(link=ShapedLink, **options)
        # Record the shells right after build, so a crash later on is cleanable from the state file.
        net.build()
        self._save_state(
            datapath=datapath,
            host_pids={h.name: h.pid for h in net.hosts},
            host_netns={h.name: cleanup.netns_id(h.pid) for h in net.hosts},
            switch_pids={s.name: s.pid for s in net.switches},
            **({"helpers": [*self.state.get("helpers", []),
                            *({"pid": t.pid, "mark": cluster_mode.TUNNEL_MARK, "folder": None}
                              for t in cluster_mode.tunnels(net))]} if self.cluster else {}),
            hosts={h.name: {"pid": h.pid, "nic_ip": nic_ip(self.tree, g), "nvlink_ip": nvlink_ip(self.tree, g)}
                   for g, h in enumerate(net.get(*self.tree.gpu_names))},
        )
        self._configure_hosts()
        self.timings["build_s"] = time.monotonic() - t0
        if self.controller is not None:
            self.controller.wait_listening()

        class _ListeningController(RemoteController):
            def checkListening(self) -> None:  # noqa: N802 -- overrides Mininet's camelCase method
                """Already checked by ``FabricController.wait_listening``. Mininet's own probe telnets
                to the port and decodes what comes back as UTF-8; when Ryu's binary OpenFlow
                HELLO (a random xid) arrives before telnet hangs up, that raises
                UnicodeDecodeError."""

        net.addController(_ListeningController(CONTROLLER_NAME, ip="127.0.0.1", port=self.ofp_port))
        t1 = time.monotonic()
        net.start()
        self._check_shaping()
        self.timings["start_s"] = time.monotonic() - t1

    def _check_shaping(self) -> None:
        """Re-apply HTB on switch ports whose root qdisc went missing when OVS took them over."""
        shown = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True, check=False).stdout
        shaped = {line.split(" dev ", 1)[1].split()[0] for line in shown.splitlines()
                  if line.startswith("qdisc htb 5:") and " dev " in line}
        for sw in self._net().switches:
            for intf in sw.intfList():
                if getattr(intf, "bw", None) is not None and intf.name not in shaped:
                    intf.config(**intf.params)
                    if not intf.shaped():
                        raise FabricError(f"could not shape {intf.name} at {intf.bw} Mbit/s")

    def _configure_hosts(self) -> None:
        configure_hosts(self._net(), self.tree, self.run_dir)

    def ping_tiers(self, count: int = 1, attempts: int = 3) -> dict[int, dict]:
        """Ping one pair of every tier; {tier: {"src", "dst", "ip", "ok", "rtt_ms"}}."""
        out: dict[int, dict] = {}
        net = self._net()
        for tier, (src, dst) in tier_samples(self.tree).items():
            ip = self.peer_ip(src, dst)
            host = net.get(self.tree.gpu_name(src))
            res = {"src": self.tree.gpu_name(src), "dst": self.tree.gpu_name(dst), "ip": ip, "ok": False,
                   "rtt_ms": None}
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
            self._signals.restore()
            return
        self._stopping = True
        t0 = time.monotonic()
        errors: list[str] = []
        masked = mask_stop_signals()
        try:
            if self.state:
                try:
                    self._save_state(status="stopping")
                except OSError:
                    pass
            if self.net is not None:
                try:
                    self._stop_network()
                except Exception as exc:
                    errors.append(f"network stop: {type(exc).__name__}: {exc}")
                self.net = None
            if self.controller is not None:
                try:
                    self.controller.stop()
                except FabricError as exc:
                    errors.append(str(exc))
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
            unmask_stop_signals(masked)
            self._signals.restore()
            self._stopping = False
        if errors:
            raise FabricError("teardown incomplete: " + "; ".join(errors))

    def _stop_network(self) -> None:
        """Mininet's ``net.stop()`` in bulk: Mininet deletes the interfaces one shell command at a
        time and the bridges with their ports afterwards, which dominates teardown on a large tree.
        Here every process in the hosts' namespaces goes first, so the kernel destroys the
        namespaces -- and the host veth pairs in them -- in one batch; then all bridges in one
        ovs-vsctl call, the remaining switch-to-switch veths in one ``ip -batch``, and the
        switch shells."""
        net = self._net()
        if self.cluster is not None:
            cluster_mode.stop_tunnels(net)
        hosts = cleanup.host_processes(self.state) if self.state.get("host_pids") else []
        cleanup.kill_pids(hosts, grace_s=1.0)
        for host in net.hosts:
            host.terminate()
        cleanup.delete_bridges(cleanup.present_bridges(cleanup.bridge_names(self.tree)))
        cleanup.delete_links(cleanup.present_links(cleanup.switch_intf_names(self.tree)))
        for switch in net.switches:
            switch.terminate()
