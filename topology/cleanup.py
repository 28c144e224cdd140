"""Find and remove what an emulated fabric of this project created -- and nothing else.

Never ``mn -c``: it kills processes by broad name (Ryu included), deletes every OVS bridge on the
machine and removes /tmp/*.log. What is ours is known exactly:

* from the state file (``/run/netkv/fabric.json``) a fabric writes before it creates anything:
  its owner pid, controller pid, the shell pids of its Mininet hosts and switches;
* from the model's deterministic names: OVS bridges are the switch names (``p0t1``, ``c3``...),
  root-namespace veth ends are ``<switch>-eth<port>`` (host ends live in the hosts' network
  namespaces and disappear with them), userspace-datapath bridges also leave a tap device named
  like the bridge.

A recorded pid is only signalled after checking ``/proc/<pid>/cmdline`` still names the same
thing (pids get reused); processes started inside a host (iperf3, agents) are found by sharing
that host shell's network namespace, or, when the shell is gone (its owner was SIGKILLed), by the
namespace recorded in the state file and a command line of ours (:data:`HOST_PROCESS_MARKS`).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from topology.model import FatTree, FatTreeConfig, switch_ports

STATE_DIR = Path(os.environ.get("NETKV_STATE_DIR", "/run/netkv"))
STATE_FILE = STATE_DIR / "fabric.json"
CONTROLLER_MARK = "-m controller.run"
"""Substring of the controller's command line (``controller.process.CONTROLLER_MODULE``; a string, so
topology does not import the controller)."""
OWNER_MARKS = ("python",)
HOST_PROCESS_MARKS = ("-m hosts.agent", "-m hosts.background")
"""What the project starts inside a host: in a recorded namespace whose shell is gone, only
processes naming one of these are signalled (a namespace inode may be reused by someone else's)."""
"""A fabric owner is a Python process (the ``fabric up`` daemon, pytest, a user script)."""


class StopSignal(SystemExit):
    """A stop signal (SIGTERM, SIGHUP) arrived while a fabric was up. Raised from the fabric's signal
    handler so every ``with`` block unwinds and tears down what it made; uncaught, the process exits
    128 + the signal number, as a shell reports a process killed by it."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.signame = signal.Signals(signum).name


class CleanupError(RuntimeError):
    """A leftover could not be removed; the message names it and the command's error."""


# --------------------------------------------------------------------------- names
def switch_intf_name(switch: str, port: int) -> str:
    """Name of the root-namespace veth end of ``switch``'s OpenFlow port ``port``."""
    return f"{switch}-eth{port}"


def bridge_names(tree: FatTree) -> list[str]:
    return list(tree.switch_names())


def switch_intf_names(tree: FatTree) -> list[str]:
    """Every root-namespace veth end a fabric of ``tree`` creates."""
    return [switch_intf_name(sw, port) for sw in tree.switch_names() for port in switch_ports(tree, sw)]


# --------------------------------------------------------------------------- state file
def read_state(path: Path = STATE_FILE) -> dict | None:
    """The recorded fabric state, or None when there is none (or it is unreadable garbage)."""
    try:
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None


def write_state(state: dict, path: Path = STATE_FILE) -> None:
    """Atomically replace the state file (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=1)
    os.replace(tmp, path)


def remove_state(path: Path = STATE_FILE) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------- processes
def cmdline(pid: int) -> str:
    """``/proc/<pid>/cmdline`` with spaces, '' when the process is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def pid_matches(pid: int | None, mark: str) -> bool:
    """True when ``pid`` is alive and its command line contains ``mark``."""
    if not pid:
        return False
    return mark in cmdline(int(pid))


def owner_alive(state: dict) -> bool:
    """True when the process that owns the recorded fabric still runs (and is not us)."""
    pid = state.get("owner_pid")
    if not pid or int(pid) == os.getpid():
        return False
    line = cmdline(int(pid))
    return bool(line) and any(m in line for m in OWNER_MARKS) and state.get("owner_cmdline", line) == line


def netns_id(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def pids_in_netns(ns: str) -> list[int]:
    """Every process whose network namespace is ``ns`` (as read from /proc/<pid>/ns/net)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and netns_id(int(entry)) == ns:
            out.append(int(entry))
    return out


def host_processes(state: dict) -> list[int]:
    """Host shells recorded in ``state`` that are still theirs, plus everything in their netns."""
    root_ns = netns_id(1) or netns_id(os.getpid())  # pid 1's may be unreadable (a VM's init): ours then
    found: set[int] = set()
    recorded = state.get("host_netns") or {}
    for name, pid in (state.get("host_pids") or {}).items():
        if not pid_matches(pid, f"mininet:{name}"):
            ns = recorded.get(name)
            if ns and ns != root_ns:  # the shell is gone: only what we started there
                found.update(p for p in pids_in_netns(ns) if any(m in cmdline(p) for m in HOST_PROCESS_MARKS))
            continue
        ns = netns_id(int(pid))
        found.add(int(pid))
        if ns and ns != root_ns:
            found.update(pids_in_netns(ns))
    return sorted(found)


def switch_shells(state: dict) -> list[int]:
    return [int(pid) for name, pid in (state.get("switch_pids") or {}).items() if pid_matches(pid, f"mininet:{name}")]


def kill_pids(pids: list[int], grace_s: float = 2.0) -> list[int]:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL; returns the pids that were signalled."""
    sent = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            sent.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    alive = list(sent)
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _alive(p)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return sent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


# --------------------------------------------------------------------------- bridges and links
def present_bridges(names: list[str]) -> list[str]:
    """Those of ``names`` that exist as OVS bridges (empty when OVS is not running)."""
    try:
        done = subprocess.run(["ovs-vsctl", "--timeout=5", "list-br"], capture_output=True, text=True, check=False)
    except OSError:
        return []
    if done.returncode:
        return []
    have = set(done.stdout.split())
    return [n for n in names if n in have]


def present_links(names: list[str]) -> list[str]:
    """Those of ``names`` that exist as network devices in the root namespace."""
    have = set(os.listdir("/sys/class/net"))
    return [n for n in names if n in have]


def delete_bridges(names: list[str]) -> None:
    if not names:
        return
    cmd = ["ovs-vsctl", "--timeout=20"]
    for n in names:
        cmd += ["--", "--if-exists", "del-br", n]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise CleanupError(f"ovs-vsctl del-br {' '.join(names)} failed: {done.stderr.strip()}")


def delete_links(names: list[str]) -> None:
    if not names:
        return
    batch = "".join(f"link del dev {n}\n" for n in names)
    done = subprocess.run(["ip", "-force", "-batch", "-"], input=batch, capture_output=True, text=True, check=False)
    still = present_links(names)
    if still:
        raise CleanupError(f"could not delete {len(still)} interfaces ({', '.join(still[:5])}...): "
                           f"{done.stderr.strip()}")


@dataclass
class CleanupReport:
    """What :func:`remove_leftovers` removed."""

    processes: list[int] = field(default_factory=list)
    bridges: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.processes or self.bridges or self.links)

    def __str__(self) -> str:
        return (f"{len(self.processes)} processes, {len(self.bridges)} OVS bridges, "
                f"{len(self.links)} interfaces")


def leftovers(trees: list[FatTree], state: dict | None = None) -> CleanupReport:
    """What of ours exists now (nothing is removed)."""
    bridges: list[str] = []
    links: list[str] = []
    for tree in trees:
        bridges += [b for b in bridge_names(tree) if b not in bridges]
        links += [n for n in switch_intf_names(tree) if n not in links]
    procs: list[int] = []
    if state:
        procs = host_processes(state) + switch_shells(state)
        ctl = state.get("controller_pid")
        if ctl is not None and pid_matches(ctl, CONTROLLER_MARK):
            procs.append(int(ctl))
        procs += [int(h["pid"]) for h in state.get("helpers", []) if pid_matches(h.get("pid"), str(h.get("mark")))]
    return CleanupReport(sorted(set(procs)), present_bridges(bridges), present_links(links + bridges))


def helper_folders(state: dict | None) -> list[Path]:
    """Temporary folders of the helper processes a run recorded (:meth:`Fabric.record_process`)
    that still exist; only folders under the system's temporary directory named ``netkv-*``."""
    tmp = Path(tempfile.gettempdir())
    found = []
    for h in (state or {}).get("helpers", []):
        folder = Path(h["folder"]) if h.get("folder") else None
        if folder is not None and folder.parent == tmp and folder.name.startswith("netkv-") and folder.is_dir():
            found.append(folder)
    return found


def remove_leftovers(trees: list[FatTree], state: dict | None = None) -> CleanupReport:
    """Remove our processes, bridges and interfaces (by state file and model names).

    Order: processes inside host namespaces (their namespaces, and the host veth ends, go with
    them), the controller, switch shells, then bridges in one ovs-vsctl call, then whatever
    root-namespace interfaces of ours remain, in one ``ip -batch``."""
    found = leftovers(trees, state)
    kill_pids(found.processes)
    for folder in helper_folders(state):
        shutil.rmtree(folder, ignore_errors=True)
    delete_bridges(found.bridges)
    delete_links(present_links(found.links))
    if state and isinstance(state.get("cluster"), dict):
        remove_remote(state)
    return found


def remove_remote(state: dict) -> None:
    """A cluster-mode fabric (:mod:`topology.cluster`): remove, over ssh, the host and switch shells,
    bridges and switch-side interfaces the state file places on the other servers. CleanupError
    naming the server when one cannot be reached or keeps some of them."""
    from topology import cluster

    raw = state["cluster"]
    place: dict[str, str] = raw.get("placement", {})
    topo = state.get("topology")
    tree = FatTree(FatTreeConfig(**topo)) if isinstance(topo, dict) else FatTree()
    plan: dict[str, tuple[list[str], list[str], list[int]]] = {}
    for server in set(place.values()):
        bridges = [b for b in bridge_names(tree) if place.get(b) == server]
        links = [switch_intf_name(sw, port) for sw in bridges for port in switch_ports(tree, sw)]
        pids = [int(pid) for kind in ("host_pids", "switch_pids") for name, pid in (state.get(kind) or {}).items()
                if place.get(name) == server and pid]
        plan[server] = (bridges, links, pids)
    try:
        left = cluster.remove_remote(cluster.ClusterSpec.from_dict(raw), plan)
    except cluster.ClusterError as exc:
        raise CleanupError(str(exc)) from None
    kept = {server: names for server, names in left.items() if names}
    if kept:
        raise CleanupError("still present on other servers: " + "; ".join(
            f"{server}: {', '.join(names[:5])}" for server, names in kept.items()))
