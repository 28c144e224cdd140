"""`netkv fabric up|status|down|exec`: the emulated fat-tree as a background service (root only).

``up`` starts a background owner process (``python -m scripts.cmd_fabric serve``, its own session,
log in the run folder) that builds the fabric and keeps it until ``down``; it returns once the
fabric is ready (all switches connected with routes, one ping per tier answered) and prints the
hosts, the controller's REST URL and how to run commands inside a host. ``up --foreground`` keeps
the fabric in the calling process until Ctrl-C instead. ``status`` reads the state file
(``/run/netkv/fabric.json``) and asks the controller and the system what is really there.
``down`` asks the owner to tear down (SIGTERM), then removes whatever of ours is left (never
``mn -c``). ``exec HOST CMD...`` runs a command inside a host's namespaces (``mnexec -a PID``).
The fabric and its controller are composed here (:func:`controller.process.controlled_fabric`).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from controller.settings import DEFAULT_OFP_PORT, DEFAULT_POLL_INTERVAL_S, DEFAULT_REST_PORT
from scheduler.paths import RESULTS_DIR

UP_TIMEOUT_S = 120.0
"""``up`` gives the background owner this long to report the fabric ready."""
DOWN_TIMEOUT_S = 30.0
"""``down`` gives the owner this long to tear down after SIGTERM before killing it."""
SERVE_MODULE = "scripts.cmd_fabric"
"""Run as ``python -m scripts.cmd_fabric serve ...``: the background owner ``up`` starts."""


def register(subparsers) -> None:
    """Add ``fabric`` with its sub-commands to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "fabric", help="emulated fat-tree (Mininet + Open vSwitch + Ryu): up/status/down/exec (root)",
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n  sudo netkv fabric up\n  sudo netkv fabric up --set topology.pods=2 --out results/fab1\n"
               "  sudo netkv fabric exec p0t0s0g0 -- ping -c1 10.1.0.1\n  sudo netkv fabric status\n"
               "  sudo netkv fabric down",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="fabric_cmd", required=True, metavar="{up,status,down,exec}")
    up = sub.add_parser("up", help="build the fabric and keep it running in the background")
    up.add_argument("--topology", default="{}", metavar="JSON",
                    help='FatTreeConfig overrides, e.g. \'{"pods": 2}\' (default: 64-GPU tree)')
    up.add_argument("--set", action="append", metavar="topology.FIELD=VALUE", dest="overrides",
                    help="override a topology constant as the experiment commands do, e.g. topology.pods=2 "
                         "(repeatable; applied after --topology)")
    up.add_argument("--scale", type=float, default=None,
                    help="emulated Mbit/s per real Mbit/s (default 2.5e-5: NIC 10, NVLink 90 Mbit/s)")
    up.add_argument("--nvlink-cap-mbit", type=float, default=None, help="cap the NVLink link rate (Mbit/s)")
    up.add_argument("--ofp-port", type=int, default=DEFAULT_OFP_PORT,
                    help=f"controller OpenFlow port (default {DEFAULT_OFP_PORT})")
    up.add_argument("--rest-port", type=int, default=DEFAULT_REST_PORT,
                    help=f"controller REST port on 127.0.0.1 (default {DEFAULT_REST_PORT})")
    up.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL_S,
                    help=f"port-stats poll interval, s (default {DEFAULT_POLL_INTERVAL_S:g})")
    up.add_argument("--out", "--run-dir", dest="run_dir", default=None, metavar="DIR",
                    help="folder for logs (default results/fabric/<time>)")
    up.add_argument("--foreground", action="store_true", help="keep the fabric in this process until Ctrl-C")
    add_cluster_options(up)
    sub.add_parser("status", help="what is running: owner, switches connected, links present")
    sub.add_parser("down", help="tear the fabric down and remove every leftover of ours")
    ex = sub.add_parser("exec", help="run a command inside a GPU host, e.g. exec p0t0s0g0 -- ping -c1 10.1.0.1")
    ex.add_argument("host", help="GPU host name (p0t0s0g0)")
    ex.add_argument("command", nargs=argparse.REMAINDER, help="command and arguments (after --)")
    p.set_defaults(func=run)


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    """``--cluster`` and ``--ssh-config`` (``fabric up`` and ``emulate``)."""
    p.add_argument("--cluster", default=None, metavar="SERVER[,SERVER...]",
                   help="place the fabric over these servers with Mininet's cluster mode: localhost (this machine: "
                        "controller, core switches) and others reached by root ssh with a key; whole pods per server "
                        "(docs/distributed.md#the-fabric-across-machines)")
    p.add_argument("--ssh-config", default=None, metavar="FILE",
                   help="ssh config file for --cluster's servers (host name, port, key); default ~/.ssh/config")


def cluster_spec(args: argparse.Namespace, command: str):
    """The checked :class:`topology.cluster.ClusterSpec` of ``--cluster``/``--ssh-config`` (None without
    ``--cluster``); prints the error naming the server and returns False when one cannot be used."""
    from topology.cluster import ClusterError, check_servers

    if args.cluster is None:
        return None
    try:
        return check_servers(args.cluster_servers, Path(args.ssh_config) if args.ssh_config else None)
    except ClusterError as exc:
        print(f"netkv {command}: {exc}", file=sys.stderr)
        return False


def parse_cluster(args: argparse.Namespace) -> None:
    """Validate ``--cluster``'s names (ValueError naming the problem) into ``args.cluster_servers``."""
    from topology.cluster import parse_servers

    if args.ssh_config is not None and args.cluster is None:
        raise ValueError("--ssh-config applies to --cluster")
    args.cluster_servers = None if args.cluster is None else parse_servers(args.cluster)


def run(args: argparse.Namespace) -> int:
    cmd = args.fabric_cmd
    if cmd == "up":  # bad input is refused before anything else, root or not
        try:
            args.topology_cfg = _topology(args)
            parse_cluster(args)
        except ValueError as exc:  # JSON, ConfigError, TopologyError, --cluster
            print(f"netkv fabric up: error: {exc}", file=sys.stderr)
            return 2
    if cmd != "status" and os.geteuid() != 0:
        print(f"netkv fabric {cmd}: needs root: the emulated fabric creates network namespaces, veth pairs, "
              "tc (HTB) qdiscs and Open vSwitch bridges. Run it with sudo.", file=sys.stderr)
        return 1
    return {"up": _up, "status": _status, "down": _down, "exec": _exec}[cmd](args)


# --------------------------------------------------------------------------- up
def _up(args: argparse.Namespace) -> int:
    from controller.process import controlled_fabric
    from topology.cleanup import STATE_FILE, owner_alive, read_state
    from topology.fabric import FabricError, require_ovs
    from topology.mininet_topo import DEFAULT_SCALE
    from topology.model import FatTree, FatTreeConfig, TopologyError

    scale = DEFAULT_SCALE if args.scale is None else args.scale
    topo_cfg = args.topology_cfg
    try:
        tree = FatTree(FatTreeConfig(**topo_cfg))
    except TopologyError as exc:
        print(f"netkv fabric up: error: {exc}", file=sys.stderr)
        return 2
    try:
        require_ovs()
    except FabricError as exc:
        print(f"netkv fabric up: {exc}", file=sys.stderr)
        return 1
    old = read_state()
    if old and owner_alive(old):
        print(f"netkv fabric up: a fabric is already running (owner pid {old['owner_pid']}, "
              f"{old.get('rest_url')}); run `netkv fabric down` first", file=sys.stderr)
        return 1
    spec = cluster_spec(args, "fabric up")
    if spec is False:
        return 1
    run_dir = _run_dir(args.run_dir)
    if args.foreground:
        fabric = controlled_fabric(tree, scale, run_dir, args.ofp_port, args.rest_port, args.poll_interval,
                                   nvlink_cap_mbit=args.nvlink_cap_mbit, **({"cluster": spec} if spec else {}))
        try:
            with fabric:
                _print_ready(fabric.state, foreground=True)
                while True:
                    signal.pause()
        except KeyboardInterrupt:
            print(f"fabric down in {fabric.timings.get('down_s', 0.0):.1f} s")
            return 0
        except FabricError as exc:
            print(f"netkv fabric up: {exc}", file=sys.stderr)
            return 1
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "fabric.log"
    cmd = [sys.executable, "-m", SERVE_MODULE, "serve", "--topology", json.dumps(topo_cfg),
           "--scale", repr(scale), "--run-dir", str(run_dir), "--ofp-port", str(args.ofp_port),
           "--rest-port", str(args.rest_port), "--poll-interval", str(args.poll_interval)]
    if args.nvlink_cap_mbit is not None:
        cmd += ["--nvlink-cap-mbit", str(args.nvlink_cap_mbit)]
    if spec:
        cmd += ["--cluster-spec", json.dumps(spec.to_dict())]
    t0 = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    where = f" over {', '.join(spec.servers)}" if spec else ""
    print(f"building the fabric ({tree.n_gpus} GPUs, scale {scale:g}{where}); log {log_path}", file=sys.stderr)
    while time.monotonic() - t0 < UP_TIMEOUT_S:
        state = read_state(STATE_FILE)
        if state and state.get("owner_pid") == proc.pid and state.get("status") == "ready":
            _print_ready(state, foreground=False)
            return 0
        if proc.poll() is not None:
            print(f"netkv fabric up: failed (exit {proc.returncode}); last lines of {log_path}:\n"
                  + _tail(log_path), file=sys.stderr)
            return 1
        time.sleep(0.2)
    print(f"netkv fabric up: not ready after {UP_TIMEOUT_S:.0f} s; stopping it. Log: {log_path}", file=sys.stderr)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=DOWN_TIMEOUT_S)
    return 1


def _run_dir(given: str | None) -> Path:
    """The fabric's folder for logs: ``given``, or ``results/fabric/<time>``."""
    return Path(given) if given else RESULTS_DIR / "fabric" / time.strftime("%Y%m%d-%H%M%S")


def _topology(args: argparse.Namespace) -> dict:
    """FatTreeConfig fields from ``--topology`` JSON, then ``--set topology.X=V`` (validated as the
    experiment commands validate them). Raises ValueError naming the option."""
    import dataclasses

    from scheduler.model.config import build_config
    from topology.model import FatTreeConfig

    try:
        cfg = json.loads(args.topology)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--topology {args.topology!r}: not JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"--topology {args.topology!r}: expected a JSON object of topology fields")
    known = {f.name for f in dataclasses.fields(FatTreeConfig)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"--topology: unknown field(s) {unknown} (known: {', '.join(sorted(known))})")
    overrides = args.overrides or []
    for item in overrides:
        if not item.strip().startswith("topology."):
            raise ValueError(f"--set {item!r}: the fabric takes topology.* constants only")
    base = [f"topology.{k}={v}" for k, v in cfg.items()]
    return build_config(overrides=base + overrides).topology.to_dict()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _print_ready(state: dict, foreground: bool) -> None:
    hosts = state.get("hosts", {})
    names = sorted(hosts, key=lambda n: hosts[n]["pid"])
    print(f"fabric up in {state.get('up_seconds', 0):.1f} s: {len(hosts)} hosts, {len(state.get('bridges', []))} "
          f"switches, {state.get('links')} links; datapath {state.get('datapath')}; "
          f"link rates (Mbit/s) {state.get('link_rates_mbit')}")
    print(f"controller REST: {state.get('rest_url')}  (telemetry: {state.get('telemetry_url')}, "
          f"status: {state.get('rest_url')}/netkv/status)")
    print(f"run folder: {state.get('run_dir')}")
    print("hosts (name  NIC/eth0  NVLink/eth1  pid):")
    for n in names:
        h = hosts[n]
        print(f"  {n:10s} {h['nic_ip']:12s} {h['nvlink_ip']:15s} {h['pid']}")
    if names:
        first = names[0]
        print("run a command in a host:")
        print(f"  netkv fabric exec {first} -- ping -c1 {hosts[names[-1]]['nic_ip']}")
        print(f"  mnexec -a {hosts[first]['pid']} ip addr      # same thing, by the host shell's pid")
        print("tier-0 peers (same server) are addressed by their NVLink IP (eth1), all others by the NIC IP (eth0)")
    print("stop: Ctrl-C" if foreground else "stop: netkv fabric down")
    sys.stdout.flush()


# --------------------------------------------------------------------------- status
def _status(args: argparse.Namespace) -> int:
    from topology import cleanup
    from topology.model import FatTree, FatTreeConfig

    state = cleanup.read_state()
    if state is None:
        print("no fabric recorded (state file absent)")
        if os.geteuid() == 0:
            left = cleanup.leftovers([FatTree()])
            if not left.empty():
                print(f"but leftovers of ours exist: {left}; run `netkv fabric down`")
                return 1
        return 1
    alive = cleanup.owner_alive(state)
    tree = FatTree(FatTreeConfig(**state.get("topology", {})))
    bridges = cleanup.present_bridges(cleanup.bridge_names(tree)) if os.geteuid() == 0 else []
    veths = cleanup.present_links(cleanup.switch_intf_names(tree))
    print(f"fabric: {state.get('status')}; owner pid {state.get('owner_pid')} {'alive' if alive else 'GONE'}; "
          f"run folder {state.get('run_dir')}")
    print(f"  hosts {len(state.get('hosts', {}))}, OVS bridges present {len(bridges)}/{len(state.get('bridges', []))}"
          f"{'' if os.geteuid() == 0 else ' (needs root to list)'}, switch-side veths present "
          f"{len(veths)}/{len(cleanup.switch_intf_names(tree))}, links {state.get('links')}")
    healthy = alive and state.get("status") == "ready"
    from controller.client import ControllerUnavailable, get_json

    try:
        st = get_json(f"{state['rest_url']}/netkv/status", timeout_s=2.0, what="controller status")
        print(f"  controller {state['rest_url']}: {len(st['switches_connected'])}/{st['switches_expected']} switches "
              f"connected, {len(st['switches_ready'])} with routes ({st['flows_installed']} flows), "
              f"{st['polls']} polls every {st['poll_interval_s']} s")
        healthy = healthy and len(st["switches_ready"]) == st["switches_expected"]
    except (ControllerUnavailable, KeyError) as exc:
        print(f"  controller {state.get('rest_url')}: unreachable ({exc})")
        healthy = False
    if not alive:
        print("  the owner process is gone: run `netkv fabric down` to remove the leftovers")
    return 0 if healthy else 1


# --------------------------------------------------------------------------- down
def _down(args: argparse.Namespace) -> int:
    from topology import cleanup
    from topology.model import FatTree, FatTreeConfig

    t0 = time.monotonic()
    state = cleanup.read_state()
    trees = [FatTree()]
    if state and isinstance(state.get("topology"), dict):
        trees.insert(0, FatTree(FatTreeConfig(**state["topology"])))
    if state and cleanup.owner_alive(state):
        pid = int(state["owner_pid"])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + DOWN_TIMEOUT_S
        while time.monotonic() < deadline and cleanup.cmdline(pid):
            time.sleep(0.1)
        if cleanup.cmdline(pid):
            print(f"owner pid {pid} did not finish teardown in {DOWN_TIMEOUT_S:.0f} s; killing it", file=sys.stderr)
            cleanup.kill_pids([pid], grace_s=1.0)
    try:
        left = cleanup.remove_leftovers(trees, state)
    except cleanup.CleanupError as exc:
        print(f"netkv fabric down: {exc}", file=sys.stderr)
        return 1
    still = cleanup.leftovers(trees, state)
    if not still.empty():
        print(f"netkv fabric down: still present: {still}", file=sys.stderr)
        return 1
    cleanup.remove_state()
    if state is None and left.empty():
        print("no fabric was running; nothing of ours to remove")
    else:
        extra = f" (removed leftovers: {left})" if not left.empty() else ""
        print(f"fabric down in {time.monotonic() - t0:.1f} s{extra}")
    return 0


# --------------------------------------------------------------------------- exec
def _exec(args: argparse.Namespace) -> int:
    from topology.cleanup import owner_alive, pid_matches, read_state

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("netkv fabric exec: give a command, e.g. netkv fabric exec p0t0s0g0 -- ip addr", file=sys.stderr)
        return 2
    state = read_state()
    if not state or not owner_alive(state):
        print("netkv fabric exec: no fabric is running (netkv fabric up)", file=sys.stderr)
        return 1
    pid = state.get("host_pids", {}).get(args.host)
    if pid is None or not pid_matches(pid, f"mininet:{args.host}"):
        print(f"netkv fabric exec: unknown host {args.host!r} (hosts look like p0t0s0g0)", file=sys.stderr)
        return 1
    server = (state.get("cluster") or {}).get("placement", {}).get(args.host, "localhost")
    if server != "localhost":  # a host on another server: the same command there, over ssh
        import shlex

        from topology.cluster import ClusterSpec, ssh_argv

        spec = ClusterSpec.from_dict(state["cluster"])
        argv = ssh_argv(spec.ssh_config, server, shlex.join(["mnexec", "-a", str(pid), *command]))
        os.execvp(argv[0], argv)
    os.execvp("mnexec", ["mnexec", "-a", str(pid), *command])
    return 0  # not reached


# --------------------------------------------------------------------------- background owner
def serve(argv: list[str] | None = None) -> int:
    """Own a fabric until SIGTERM/SIGINT (the process ``netkv fabric up`` leaves running)."""
    from controller.process import ControllerProcess, controlled_fabric
    from topology.fabric import FabricError
    from topology.mininet_topo import DEFAULT_SCALE
    from topology.model import FatTree, FatTreeConfig

    p = argparse.ArgumentParser(prog=f"python -m {SERVE_MODULE} serve")
    p.add_argument("--topology", default="{}", help="FatTreeConfig fields as JSON")
    p.add_argument("--scale", type=float, default=DEFAULT_SCALE)
    p.add_argument("--nvlink-cap-mbit", type=float, default=None)
    p.add_argument("--run-dir", default=None)
    p.add_argument("--ofp-port", type=int, default=DEFAULT_OFP_PORT)
    p.add_argument("--rest-port", type=int, default=DEFAULT_REST_PORT)
    p.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL_S)
    p.add_argument("--cluster-spec", default=None, help="topology.cluster.ClusterSpec as JSON (checked by up)")
    args = p.parse_args(argv)
    tree = FatTree(FatTreeConfig(**json.loads(args.topology)))
    options = {}
    if args.cluster_spec:
        from topology.cluster import ClusterSpec

        options["cluster"] = ClusterSpec.from_dict(json.loads(args.cluster_spec))
    fabric = controlled_fabric(tree, args.scale, _run_dir(args.run_dir), args.ofp_port, args.rest_port,
                               args.poll_interval, nvlink_cap_mbit=args.nvlink_cap_mbit, **options)
    controller = fabric.controller
    assert isinstance(controller, ControllerProcess)  # what controlled_fabric gives every fabric
    try:
        with fabric:
            print(f"[fabric] up in {fabric.timings['up_s']:.1f} s; {controller.rest_url}", flush=True)
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
        print(f"usage: python -m {SERVE_MODULE} serve [options]  (normally started by: netkv fabric up)",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(serve(sys.argv[2:]))
