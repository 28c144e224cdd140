"""The emulated fabric over several servers: Mininet's cluster mode (``MininetCluster``), pods per server.

``--cluster localhost,SERVER2[,...]`` places the fat-tree over the servers named; this machine is
``localhost`` (it runs the controller, the orchestrator and the core layer). Placement, one cut:

* every pod -- its GPU hosts, server (NVLink) switches, ToRs and aggregation switches -- lives whole on
  one server; pods are dealt to the servers in turn (pod p on server p mod n), so pods 0 and 1, the
  pair the emulator's tier-3 calibration uses, sit on different servers;
* the core switches live on ``localhost``.

So only cross-pod traffic (tier 3) crosses servers, on the aggregation-core links: the fewest
crossing links of any cut that keeps pods whole; cutting inside a pod would put the fastest,
most numerous links (NVLink, ToR) on tunnels.

Other servers are reached with ``ssh`` as root, every call through one ssh config file (``-F``:
host name, port, key, host-key policy of each server; ``~/.ssh/config`` when none is given).
Mininet's remote classes run every node's shell over ssh (``RemoteHost``, ``RemoteOVSSwitch``);
links between servers are Ethernet tunnels over ssh (Mininet's ``RemoteLink``: a tap device on
each server, ``ssh -w``; the servers' sshd needs ``PermitTunnel ethernet`` or ``yes``). GRE
(``RemoteGRELink``) would need the kernel's ``ip_gre``, which this CI machine lacks.

Switch, link and host names are the model's, distinct across the tree, so servers sharing one
kernel (the single-machine test) do not clash. Teardown removes every server's bridges and
switch-side interfaces and stops its host shells over ssh as well as here (:func:`remove_remote`).

Requirements on every server: root ssh with a key (no password, no sudo needed), Mininet and Open
vSwitch installed and running, this project at the same path with the same interpreter (the agents
run ``python -m hosts.agent`` inside remote hosts), and the servers able to reach each other's
tunnel address and this machine's OpenFlow port.
"""
from __future__ import annotations

import itertools
import re
import shlex
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from itertools import groupby
from operator import attrgetter
from pathlib import Path
from typing import Any

from topology.errors import FabricError
from topology.model import FatTree

LOCAL_SERVER = "localhost"
"""This machine, as Mininet's cluster mode names it (its nodes run without ssh)."""
CLUSTER_USER = "root"
"""The fabric runs as root on every server (namespaces, OVS, tc)."""
SSH_CHECK_TIMEOUT_S = 10
"""A server that does not answer ``ssh ... true`` this soon is refused as unreachable."""
SSH_CLEANUP_TIMEOUT_S = 60
"""Removing a server's leftovers over ssh may take this long."""
TAP_PREFIX = "tap"
"""Tap devices of the ssh tunnels are made as ``tap<N>`` (ssh -w takes numbers), then renamed to the
switch port's name."""
TAP_BASE = 7100
"""First tap number used: far from tap0.. that other software makes."""
TUNNEL_MARK = "Tunnel=ethernet"
"""Substring of a tunnel's ssh command line (the state file records each as a helper process with it)."""
_POD_RE = re.compile(r"^p(\d+)")
_TAP_NUMBERS = itertools.count(TAP_BASE)


class ClusterError(FabricError):
    """A server of ``--cluster`` cannot be used (unknown, unreachable, refused); the message names it."""


@dataclass(frozen=True)
class ClusterSpec:
    """The servers (``localhost`` among them), the ssh config file every ssh call uses (None:
    ssh's default, ``~/.ssh/config``) and each server's address."""

    servers: tuple[str, ...]
    ssh_config: Path | None = None
    addresses: tuple[tuple[str, str], ...] = ()

    @property
    def remote(self) -> list[str]:
        return [s for s in self.servers if s != LOCAL_SERVER]

    @property
    def address(self) -> dict[str, str]:
        return dict(self.addresses)

    def to_dict(self) -> dict:
        return {"servers": list(self.servers), "ssh_config": None if self.ssh_config is None else str(self.ssh_config),
                "addresses": dict(self.addresses)}

    @classmethod
    def from_dict(cls, raw: dict) -> ClusterSpec:
        cfg = raw.get("ssh_config")
        return cls(tuple(raw["servers"]), Path(cfg) if cfg else None, tuple(sorted(raw.get("addresses", {}).items())))


def parse_servers(text: str) -> tuple[str, ...]:
    """``localhost,SERVER[,...]`` -> server names; ValueError naming the problem (no localhost,
    a duplicate, fewer than two servers, a name ssh would take for an option)."""
    servers = tuple(s.strip() for s in text.split(",") if s.strip())
    if len(servers) < 2:
        raise ValueError(f"--cluster {text!r}: name at least two servers, this machine as {LOCAL_SERVER} "
                         f"and one more (e.g. {LOCAL_SERVER},gpu-host-2)")
    if LOCAL_SERVER not in servers:
        raise ValueError(f"--cluster {text!r}: include {LOCAL_SERVER} (this machine runs the controller, the "
                         "orchestrator and the core switches)")
    dup = sorted({s for s in servers if servers.count(s) > 1})
    if dup:
        raise ValueError(f"--cluster {text!r}: server(s) named twice: {', '.join(dup)}")
    bad = [s for s in servers if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", s)]
    if bad:
        raise ValueError(f"--cluster {text!r}: not a host name: {bad[0]!r}")
    return servers


def ssh_base(ssh_config: Path | None) -> list[str]:
    """``ssh`` with the config file (when given) and no prompts."""
    return ["ssh", *(["-F", str(ssh_config)] if ssh_config else []), "-o", "BatchMode=yes"]


def ssh_argv(ssh_config: Path | None, server: str, command: str, timeout_s: int = SSH_CHECK_TIMEOUT_S) -> list[str]:
    """Run ``command`` (a shell string) as root on ``server``."""
    return [*ssh_base(ssh_config), "-o", f"ConnectTimeout={timeout_s}", "-n", f"{CLUSTER_USER}@{server}", command]


def server_address(server: str, ssh_config: Path | None) -> str:
    """The IPv4 address of ``server``: the ``HostName`` ssh resolves for it; ClusterError when it
    resolves to nothing."""
    if server == LOCAL_SERVER:
        return "127.0.0.1"
    done = subprocess.run([*ssh_base(ssh_config), "-G", server], capture_output=True, text=True, check=False)
    if done.returncode:
        raise ClusterError(f"--cluster server {server!r}: ssh cannot read its configuration: {done.stderr.strip()}")
    host = next((line.split(None, 1)[1] for line in done.stdout.splitlines() if line.startswith("hostname ")), server)
    try:
        return str(socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0])
    except (socket.gaierror, IndexError):
        raise ClusterError(f"--cluster server {server!r}: unknown host {host!r} (no IPv4 address)") from None


def check_servers(servers: Sequence[str], ssh_config: Path | None) -> ClusterSpec:
    """Resolve every server's address and check it answers root ssh with a key and has Open vSwitch
    running; ClusterError naming the first server that does not (nothing is created)."""
    if ssh_config is not None and not Path(ssh_config).is_file():
        raise ClusterError(f"--ssh-config {ssh_config}: no such file")
    addresses = {s: server_address(s, ssh_config) for s in servers}
    for server in servers:
        if server == LOCAL_SERVER:
            continue
        done = subprocess.run(ssh_argv(ssh_config, server, "ovs-vsctl --timeout=5 show >/dev/null && echo netkv-ok"),
                              capture_output=True, text=True, check=False, timeout=3 * SSH_CHECK_TIMEOUT_S)
        if "netkv-ok" not in done.stdout:
            why = done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}"
            raise ClusterError(f"--cluster server {server!r} ({addresses[server]}): ssh as {CLUSTER_USER} with a key, "
                               f"then Open vSwitch, failed: {why}")
    return ClusterSpec(tuple(servers), ssh_config, tuple(sorted(addresses.items())))


def pod_of(name: str) -> int | None:
    """Pod of a GPU host or pod switch name (``p2t1s0g3`` -> 2); None for core switches."""
    m = _POD_RE.match(name)
    return int(m.group(1)) if m else None


def placement(tree: FatTree, servers: Sequence[str]) -> dict[str, str]:
    """Server of every switch and GPU host: pod ``p`` on ``servers[p % len(servers)]`` (dealt in the
    order given), cores on ``localhost``."""
    out = {}
    for name in [*tree.switch_names(), *tree.gpu_names]:
        pod = pod_of(name)
        out[name] = LOCAL_SERVER if pod is None else servers[pod % len(servers)]
    return out


def names_by_server(place: dict[str, str], names: Sequence[str], owner: Any = None) -> dict[str, list[str]]:
    """``names`` grouped by the server of their node (``owner(name)``: the node a name belongs to,
    e.g. the switch of a ``<switch>-eth<port>`` interface)."""
    out: dict[str, list[str]] = {}
    for name in names:
        node = owner(name) if owner else name
        out.setdefault(place[node], []).append(name)
    return out


def remote_cleanup_command(bridges: Sequence[str], links: Sequence[str], pids: Sequence[int]) -> str:
    """Shell command (run as root on a server) removing our host and switch shells there and, for a
    host shell, every process in its network namespace (agents, probes: the namespace goes with
    them); a pid counts only while its command line still names a Mininet node, and nothing in the
    namespace of the ssh session running the command (the server's own) but the shell itself is
    touched; when that namespace cannot be read, no namespace is swept. Then our bridges and interfaces; prints
    what is still present afterwards, one name a line, after ``netkv-left``."""
    parts = []
    if pids:
        parts.append(
            "root=$(readlink /proc/$$/ns/net); for p in " + " ".join(str(int(p)) for p in pids) +
            "; do grep -qa 'mininet:' /proc/$p/cmdline 2>/dev/null || continue; ns=$(readlink /proc/$p/ns/net);"
            " if [ -n \"$root\" ] && [ -n \"$ns\" ] && [ \"$ns\" != \"$root\" ]; then for q in /proc/[0-9]*; do"
            " [ \"$(readlink $q/ns/net 2>/dev/null)\" = \"$ns\" ] && kill -9 ${q#/proc/} 2>/dev/null; done; fi;"
            " kill -9 $p 2>/dev/null; done")
    if bridges:
        parts.append("ovs-vsctl --timeout=20 " + " ".join(f"-- --if-exists del-br {shlex.quote(b)}" for b in bridges))
    if links:
        parts.append("for i in " + " ".join(shlex.quote(n) for n in links) +
                     "; do [ -e /sys/class/net/$i ] && ip link del dev $i; done")
    names = [*bridges, *links]
    left = ("echo netkv-left; for i in " + " ".join(shlex.quote(n) for n in names) +
            "; do [ -e /sys/class/net/$i ] && echo $i; done; true") if names else "echo netkv-left"
    return "; ".join([*parts, left])


RemotePlan = dict[str, tuple[list[str], list[str], list[int]]]
"""Per server: (bridges, switch-side interfaces, shell pids) to remove there."""


def remove_remote(spec: ClusterSpec, by_server: RemotePlan) -> dict[str, list[str]]:
    """On every remote server, remove its (bridges, links, shell pids) over ssh; returns what is still
    present there per server (empty lists: all gone). ClusterError when a server cannot be reached."""
    left: dict[str, list[str]] = {}
    for server in spec.remote:
        bridges, links, pids = by_server.get(server, ([], [], []))
        cmd = remote_cleanup_command(bridges, links, pids)
        try:
            done = subprocess.run(ssh_argv(spec.ssh_config, server, cmd), capture_output=True, text=True, check=False,
                                  timeout=SSH_CLEANUP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"cleanup on server {server!r}: no answer over ssh in {SSH_CLEANUP_TIMEOUT_S} s"
                               ) from None
        if "netkv-left" not in done.stdout:
            why = done.stderr.strip() or f"exit {done.returncode}"
            raise ClusterError(f"cleanup on server {server!r} over ssh failed: {why}")
        left[server] = done.stdout.split("netkv-left", 1)[1].split()
    return left


# --------------------------------------------------------------------------- Mininet classes
_SESSION: list[ClusterSpec] = []


@contextmanager
def session(spec: ClusterSpec | None) -> Iterator[None]:
    """Within this block, a fabric built without an explicit ``cluster`` uses ``spec`` (None: one
    machine): how ``emulate --cluster`` reaches the fabric its orchestrator builds."""
    if spec is None:
        yield
        return
    _SESSION.append(spec)
    try:
        yield
    finally:
        _SESSION.remove(spec)


def session_spec() -> ClusterSpec | None:
    """The spec of the innermost :func:`session`, None outside any."""
    return _SESSION[-1] if _SESSION else None


def mininet_classes(spec: ClusterSpec) -> dict[str, Any]:
    """Mininet's remote host, switch and link classes bound to ``spec``'s ssh config, as root
    without sudo (the project runs as root everywhere; Mininet's classes prefix ``sudo``, which a
    root-only server need not have). Imports Mininet's cluster example: root paths only."""
    from mininet.examples.cluster import RemoteHost, RemoteLink, RemoteMixin, RemoteOVSSwitch
    from mininet.node import Node

    base = ssh_base(spec.ssh_config)
    sshbase = [*base, "-q", "-o", "ForwardAgent=no", "-tt"]

    class _RootMixin:
        def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("user", CLUSTER_USER)
            super().__init__(name, *args, **kwargs)  # type: ignore[call-arg]

        @property
        def sshcmd(self) -> list[str]:
            return self._netkv_sshcmd

        @sshcmd.setter
        def sshcmd(self, value: list[str]) -> None:
            # Mininet runs ``sudo -E -u USER ssh ... USER@serverIP``: as root, plain ssh, and to the
            # server's name, so the ssh config's entry for it (port, key) applies
            value = value[4:] if value[:3] == ["sudo", "-E", "-u"] else list(value)
            if value and value[-1] == f"{self.user}@{self.serverIP}":  # type: ignore[attr-defined]
                value[-1] = f"{self.user}@{self.server}"  # type: ignore[attr-defined]
            self._netkv_sshcmd = value

        def _popen(self, cmd: Any, sudo: bool = True, tt: bool = True, **params: Any) -> Any:
            """Remote: over ssh, as root already (no sudo). Here, a command in a node (``mnexec``):
            plain Mininet (``Node._popen``), because Mininet's remote mixin puts the child in a
            process group of its own, and then ``mnexec -d`` forks, so terminating the ``Popen``
            would leave the command running (an orphan holding its pipes)."""
            if not getattr(self, "isRemote", False):
                argv = cmd.split() if isinstance(cmd, str) else list(cmd)
                if argv[:1] == ["mnexec"]:
                    return Node._popen(self, argv, **params)
                return RemoteMixin._popen(self, argv, sudo=True, tt=tt, **params)
            return RemoteMixin._popen(self, cmd, sudo=False, tt=tt, **params)

    class ClusterHost(_RootMixin, RemoteHost):
        """A GPU host on its pod's server."""

    ClusterHost.sshbase = sshbase

    class ClusterSwitch(_RootMixin, RemoteOVSSwitch):
        """An Open vSwitch bridge on its pod's server (cores: on localhost)."""

        @classmethod
        def batchStartup(cls, switches: Any, **_kwargs: Any) -> Any:  # noqa: N802 -- Mininet's name
            """One ``ovs-vsctl`` per server, as Mininet's ``RemoteOVSSwitch`` does, but not typed into
            a node's shell: a shell's terminal cuts lines at 4095 characters, which a few dozen
            bridges' commands exceed. Here: run directly, or as an ssh command on the other servers."""
            from mininet.node import OVSSwitch

            for server, group in groupby(sorted(switches, key=attrgetter("server")), attrgetter("server")):
                nodes = tuple(group)
                if server == LOCAL_SERVER:
                    OVSSwitch.batchStartup(nodes)
                else:
                    OVSSwitch.batchStartup(nodes, run=lambda c, node=nodes[0], **_kw: node.rcmd(c))
            return switches

    ClusterSwitch.sshbase = sshbase

    from mininet.util import decode

    from topology.mininet_topo import ShapedIntf

    class ClusterLink(RemoteLink):
        """A shaped link (HTB on both ends): a veth pair within a server; between two, an Ethernet
        tunnel over ssh (Mininet's ``RemoteLink``) whose tap devices get numbers of their own
        (Mininet's ``tap9`` on both ends would be one device when two servers share a kernel) and
        whose ssh uses the cluster's config."""

        def __init__(self, node1: Any, node2: Any, **params: Any) -> None:
            params.setdefault("cls1", ShapedIntf)
            params.setdefault("cls2", ShapedIntf)
            super().__init__(node1, node2, **params)

        def makeTunnel(self, node1: Any, node2: Any, intfname1: str, intfname2: str,  # noqa: N802 -- Mininet's
                       addr1: str | None = None, addr2: str | None = None) -> Any:
            if node1.server != LOCAL_SERVER:  # the ssh runs here: this machine's end first
                node1, node2, intfname1, intfname2, addr1, addr2 = node2, node1, intfname2, intfname1, addr2, addr1
            if node1.server != LOCAL_SERVER:
                raise ClusterError(f"link {intfname1} <-> {intfname2} joins two other servers ({node1.server}, "
                                   f"{node2.server}); the placement keeps one end of every tunnel here")
            n1, n2 = next(_TAP_NUMBERS), next(_TAP_NUMBERS)
            for node, n in ((node1, n1), (node2, n2)):
                out = node.rcmd(f"ip tuntap add dev {TAP_PREFIX}{n} mode tap")
                if out.strip():
                    raise ClusterError(f"creating {TAP_PREFIX}{n} on {node.server} for {node}: {out.strip()}")
            cmd = [*base, "-n", "-o", TUNNEL_MARK, "-w", f"{n1}:{n2}", f"{CLUSTER_USER}@{node2.server}",
                   "echo @"]
            self.cmd = cmd
            tunnel = node1.rpopen(cmd, sudo=False)
            ch = decode(tunnel.stdout.read(1))
            if ch != "@":
                raise ClusterError(f"ssh tunnel {node1.server}:{intfname1} <-> {node2.server}:{intfname2} failed: "
                                   f"{ch + decode(tunnel.stdout.read())} (command: {' '.join(cmd)})")
            for node, n, intf, addr in ((node1, n1, intfname1, addr1), (node2, n2, intfname2, addr2)):
                self.moveIntf(f"{TAP_PREFIX}{n}", node)
                out = node.cmd(f"ip link set {TAP_PREFIX}{n} name {intf}" + (f" address {addr}" if addr else ""))
                if out.strip():
                    raise ClusterError(f"renaming {TAP_PREFIX}{n} to {intf} on {node.server}: {out.strip()}")
            return tunnel

    return {"host": ClusterHost, "switch": ClusterSwitch, "link": ClusterLink}


def tunnels(net: Any) -> list[Any]:
    """The ssh processes (``Popen``) of the running tunnels between servers of ``net``."""
    return [link.tunnel for link in net.links if getattr(link, "tunnel", None) is not None]


def stop_tunnels(net: Any) -> None:
    """Stop every tunnel's ssh (the far end's sshd session and tap go with it)."""
    for proc in tunnels(net):
        if proc.poll() is None:
            proc.terminate()
    for proc in tunnels(net):
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def cluster_net(spec: ClusterSpec, tree: FatTree, classes: dict[str, Any], **mininet_params: Any) -> Any:
    """A ``MininetCluster`` over ``spec``'s servers with :func:`placement` and ``classes``
    (:func:`mininet_classes`); ``mininet_params`` as for ``Mininet`` (topo, build, ...). ``switch`` may
    be a partial of OVS options: they are moved onto the cluster switch class. The ssh control folder
    MininetCluster makes (``~/.ssh/mn``) is removed again when it did not exist before."""
    import os

    from mininet.examples.cluster import MininetCluster, Placer

    switch_opts = {}
    given = mininet_params.pop("switch", None)
    if isinstance(given, partial):
        switch_opts = dict(given.keywords)
    place = placement(tree, spec.servers)

    class PodPlacer(Placer):
        """Pods in contiguous blocks per server, cores on localhost (:func:`placement`)."""

        def place(self, node: str) -> str:
            return place[node]

    class NetKVCluster(MininetCluster):
        def addController(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 -- Mininet's name
            """Mininet's plain ``addController``: MininetCluster's swaps a loopback controller address
            for the interface routing to another server, which on loopback-only servers (one machine)
            does not exist; the switches here are told the address explicitly."""
            from mininet.net import Mininet

            return Mininet.addController(self, *args, **kwargs)

    cdir = Path(os.environ.get("HOME", "/root")) / ".ssh"
    made = [d for d in (cdir, cdir / "mn") if not d.exists()]
    try:
        net = NetKVCluster(servers=list(spec.servers), serverIP=spec.address, user=CLUSTER_USER, precheck=False,
                           placement=PodPlacer, host=classes["host"], link=classes["link"],
                           switch=partial(classes["switch"], **switch_opts), **mininet_params)
    finally:
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:
                pass
    return net
