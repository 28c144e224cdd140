"""The fabric across servers (Mininet's cluster mode) on one machine (root, Mininet, Open vSwitch, sshd).

CI has one machine, so the test names it twice: ``localhost`` and an ssh alias for a private sshd the
test starts on a loopback address with a host key and a client key it makes, through an ssh config
file it writes (``--ssh-config``); nothing of the system's ssh setup is read or touched. Mininet's
remote code path runs for real: the alias's pods' shells run over ssh, its switches are configured
over ssh, and the aggregation-core links between the two "servers" are Ethernet tunnels over ssh. The test builds
the small fabric with ``netkv fabric up --cluster localhost,ALIAS``, checks every tier answers a
ping (tier 3 across the tunnels), the controller has every switch, then ``fabric down`` and checks
nothing is left: bridges, interfaces, host namespaces' shells, ssh processes, the sshd, its folder;
the same after the owner was SIGKILLed; and an unreachable server is refused by name.
Figures are printed (``-s``).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from topology.model import FatTree, FatTreeConfig, switch_ports

pytestmark = pytest.mark.emulation

ROOT = Path(__file__).resolve().parents[2]
OFP_PORT, REST_PORT = 16663, 18090
SMALL = FatTreeConfig(pods=2, tors_per_pod=1, servers_per_tor=2, gpus_per_server=2, aggs_per_pod=2, cores=2)
ALIAS = "netkv-peer"
"""The second server's name: this machine again, over ssh."""
PEER_ADDRESS = "127.0.0.1"
"""The private sshd's address."""
SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")
"""sshd refuses to start without its privilege-separation folder; made (and removed) when absent."""


@dataclass
class PrivateSshd:
    """A running private sshd: its folder, the ssh config naming it ``ALIAS``, the process."""

    folder: Path
    ssh_config: Path
    proc: subprocess.Popen


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((PEER_ADDRESS, 0))
        return int(s.getsockname()[1])


@contextmanager
def private_sshd() -> Iterator[PrivateSshd]:
    """Start an sshd on ``PEER_ADDRESS`` (keys, config, log in a temporary folder) and write an ssh
    config file for ``ALIAS``; stop it and remove everything on exit."""
    if not os.path.exists(SSHD):
        pytest.skip("openssh-server is not installed (scripts/setup_emulation.sh installs it)")
    folder = Path(tempfile.mkdtemp(prefix="netkv-sshd-"))
    made_privsep = not PRIVSEP_DIR.exists()
    proc = None
    try:
        for key in ("host_ed25519", "client_ed25519"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True)
        shutil.copy(folder / "client_ed25519.pub", folder / "authorized_keys")
        port = _free_port()
        (folder / "sshd_config").write_text(
            f"HostKey {folder}/host_ed25519\nAuthorizedKeysFile {folder}/authorized_keys\nPidFile {folder}/sshd.pid\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nUseDNS no\nMaxStartups 500\nMaxSessions 500\nPermitTunnel ethernet\n")
        ssh_config = folder / "ssh_config"
        ssh_config.write_text(
            f"Host {ALIAS}\n  HostName {PEER_ADDRESS}\n  Port {port}\n  User root\n"
            f"  IdentityFile {folder}/client_ed25519\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        with open(folder / "sshd.log", "wb") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config"), "-p", str(port),
                                     "-o", f"ListenAddress={PEER_ADDRESS}"],
                                    stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done = subprocess.run(["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", "-n", ALIAS, "true"],
                                  capture_output=True, text=True, check=False)
            if done.returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"private sshd not answering: {(folder / 'sshd.log').read_text()[-500:]}")
        yield PrivateSshd(folder, ssh_config, proc)
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
        if made_privsep:
            shutil.rmtree(PRIVSEP_DIR, ignore_errors=True)


def _netkv(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.netkv", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _ssh_processes(folder: Path, sshd_pid: int | None = None) -> list[str]:
    """Processes still alive that belong to the test's ssh setup: ssh clients (and the sshd) whose
    command line names its folder, and the private sshd's session children."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == sshd_pid:
            continue
        try:
            line = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if str(folder) in line or (sshd_pid is not None and ppid == sshd_pid):
            out.append(f"{entry}: {line.strip()}")
    return out


@pytest.fixture(scope="module")
def require_root_ovs():
    if os.geteuid() != 0:
        pytest.skip("emulation tests need root")
    from topology.fabric import FabricError, require_ovs

    try:
        require_ovs()
    except FabricError as exc:
        pytest.skip(str(exc))
    from topology import cleanup

    state = cleanup.read_state()
    if state and cleanup.owner_alive(state):
        pytest.skip(f"a fabric is already running (owner pid {state['owner_pid']})")


def test_fabric_up_across_two_servers_and_down_leaves_nothing(require_root_ovs, tmp_path):
    from topology import cleanup

    tree = FatTree(SMALL)
    home_ssh = Path(os.environ.get("HOME", "/root")) / ".ssh"
    home_ssh_before = sorted(os.listdir(home_ssh)) if home_ssh.exists() else None
    with private_sshd() as sshd:
        t0 = time.monotonic()
        up = _netkv("fabric", "up", "--topology", json.dumps(SMALL.to_dict()), "--cluster", f"localhost,{ALIAS}",
                    "--ssh-config", str(sshd.ssh_config), "--ofp-port", str(OFP_PORT), "--rest-port", str(REST_PORT),
                    "--out", str(tmp_path / "fab"))
        up_s = time.monotonic() - t0
        try:
            assert up.returncode == 0, up.stdout + up.stderr
            state = cleanup.read_state()
            assert state is not None and state["status"] == "ready"
            place = state["cluster"]["placement"]
            assert {place[h] for h in tree.gpu_names if h.startswith("p1")} == {ALIAS}
            assert {place[h] for h in tree.gpu_names if h.startswith("p0")} == {"localhost"}
            # the alias's host shells run over ssh: each is a child of an sshd session
            remote_host = next(h for h in tree.gpu_names if place[h] == ALIAS)
            pid = state["host_pids"][remote_host]
            ancestry = _ancestry(pid)
            assert any(line.startswith("sshd") for line in ancestry), ancestry
            # every tier answers, tier 3 across the tunnels between the two servers
            for src, dst in ((0, 1), (0, 2), (0, tree.n_gpus - 1), (tree.n_gpus - 1, 0)):
                ip = _peer_ip(tree, src, dst)
                ex = _netkv("fabric", "exec", tree.gpu_name(src), "--", "ping", "-c2", "-W2", "-q", ip, timeout=30)
                assert " 0% packet loss" in ex.stdout, (tree.gpu_name(src), ip, ex.stdout, ex.stderr)
            # the agg-core links of the alias's pod are ssh tunnels (tap devices), the rest veths
            kinds = {n: _kind(n) for n in cleanup.switch_intf_names(tree)}
            crossing = {f"{sw}-eth{port}" for sw in tree.switch_names() for port, nb in switch_ports(tree, sw).items()
                        if nb in tree.switch_names() and {place[sw], place[nb]} == {"localhost", ALIAS}}
            assert crossing and {kinds[n] for n in crossing} == {"tun"}, kinds
            assert {k for n, k in kinds.items() if n not in crossing} == {"veth"}, kinds
            status = _netkv("fabric", "status", timeout=30)
            assert status.returncode == 0, status.stdout + status.stderr
        finally:
            t1 = time.monotonic()
            down = _netkv("fabric", "down", timeout=120)
            down_s = time.monotonic() - t1
        assert down.returncode == 0, down.stdout + down.stderr
        print(f"\ncluster fabric ({tree.n_gpus} GPUs, localhost + {ALIAS}): up {up_s:.1f} s (command), "
              f"down {down_s:.1f} s")
        assert cleanup.leftovers([tree], state).empty()
        assert cleanup.read_state() is None
        assert not [n for n in os.listdir("/sys/class/net") if n.startswith("tap7")]
        deadline = time.monotonic() + 5  # sshd reaps its sessions' children as their clients hang up
        while _ssh_processes(sshd.folder, sshd.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _ssh_processes(sshd.folder, sshd.proc.pid) == []
        folder = sshd.folder
    assert not folder.exists()
    assert _ssh_processes(folder) == []
    assert (sorted(os.listdir(home_ssh)) if home_ssh.exists() else None) == home_ssh_before


def test_fabric_down_after_the_owner_was_killed_removes_everything_on_both_servers(require_root_ovs, tmp_path):
    """SIGKILL leaves no teardown: ``fabric down`` works from the state file alone (the tunnels'
    ssh processes are recorded there, the remote server is cleaned over ssh)."""
    from topology import cleanup

    tree = FatTree(SMALL)
    with private_sshd() as sshd:
        up = _netkv("fabric", "up", "--topology", json.dumps(SMALL.to_dict()), "--cluster", f"localhost,{ALIAS}",
                    "--ssh-config", str(sshd.ssh_config), "--ofp-port", str(OFP_PORT), "--rest-port", str(REST_PORT),
                    "--out", str(tmp_path / "fab"))
        try:
            assert up.returncode == 0, up.stdout + up.stderr
            state = cleanup.read_state()
            assert state is not None
            assert any(h["mark"] == "Tunnel=ethernet" for h in state.get("helpers", []))
            os.kill(int(state["owner_pid"]), signal.SIGKILL)
            time.sleep(0.5)
        finally:
            down = _netkv("fabric", "down", timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        assert cleanup.leftovers([tree], state).empty()
        assert cleanup.read_state() is None
        assert not [n for n in os.listdir("/sys/class/net") if n.startswith("tap7")]
        deadline = time.monotonic() + 5
        while _ssh_processes(sshd.folder, sshd.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _ssh_processes(sshd.folder, sshd.proc.pid) == []


def test_unreachable_server_is_refused_naming_it(require_root_ovs, tmp_path):
    from topology import cleanup

    config = tmp_path / "ssh_config"
    config.write_text(f"Host {ALIAS}\n  HostName {PEER_ADDRESS}\n  Port {_free_port()}\n  StrictHostKeyChecking no\n"
                      "  UserKnownHostsFile /dev/null\n")
    done = _netkv("fabric", "up", "--topology", json.dumps(SMALL.to_dict()), "--cluster", f"localhost,{ALIAS}",
                  "--ssh-config", str(config), "--ofp-port", str(OFP_PORT), "--rest-port", str(REST_PORT),
                  "--out", str(tmp_path / "fab"), timeout=60)
    assert done.returncode != 0
    assert ALIAS in done.stderr
    assert cleanup.read_state() is None
    assert cleanup.leftovers([FatTree(SMALL)]).empty()


def _ancestry(pid: int) -> list[str]:
    """Command lines from ``pid`` up to init."""
    out = []
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            break
        out.append(line.strip())
        pid = int(stat.rsplit(") ", 1)[1].split()[1])
    return out


def _kind(intf: str) -> str:
    done = subprocess.run(["ip", "-d", "-o", "link", "show", "dev", intf], capture_output=True, text=True, check=False)
    for kind in ("veth", "tun"):
        if f" {kind} " in done.stdout:
            return kind
    return ""


def _peer_ip(tree: FatTree, src: int, dst: int) -> str:
    from topology.model import peer_ip

    return peer_ip(tree, src, dst)
