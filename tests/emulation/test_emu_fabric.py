"""Emulated fabric end to end (root, Mininet, Open vSwitch; ~2 minutes on a 2-core VM).

One 64-GPU fabric (module fixture) serves the reachability, no-flooding, path, telemetry,
goodput and controller-restart tests; then it is torn down and checked, and small 8-GPU fabrics
exercise teardown after an exception, after SIGTERM, and recovery from a crashed owner.
Measured figures are printed (run with ``-s`` to see them).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from topology.model import FatTree, FatTreeConfig

pytestmark = pytest.mark.emulation

ROOT = Path(__file__).resolve().parents[2]
OFP_PORT, REST_PORT = 16653, 18080
SMALL = FatTreeConfig(pods=2, tors_per_pod=1, servers_per_tor=2, gpus_per_server=2, aggs_per_pod=2, cores=2)
UP_TARGET_S, DOWN_TARGET_S, GOODPUT_TARGET = 20.0, 10.0, 0.90
GOODPUT_ATTEMPTS = 3
"""Runs of a tier under its goodput floor before the test judges it (by the best run)."""
_PORT_RE = re.compile(r"port\s+(\d+): rx pkts=(\d+), bytes=(\d+).*?tx pkts=(\d+), bytes=(\d+)", re.S)


def _no_foreign_fabric() -> None:
    from topology import cleanup

    state = cleanup.read_state()
    if state and cleanup.owner_alive(state):
        pytest.skip(f"a fabric is already running (owner pid {state['owner_pid']}); run `netkv fabric down` first")


def _leftovers(tree: FatTree, state: dict | None = None):
    from topology import cleanup

    return cleanup.leftovers([tree], state)


def _dump_ports(tree: FatTree) -> dict[tuple[str, int], tuple[int, int, int, int]]:
    """(switch, port) -> (rx_pkts, rx_bytes, tx_pkts, tx_bytes) from ovs-ofctl."""
    out = {}
    for sw in tree.switch_names():
        text = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-ports", sw],
                              capture_output=True, text=True, check=True).stdout
        for m in _PORT_RE.finditer(text):
            out[(sw, int(m.group(1)))] = tuple(int(m.group(i)) for i in range(2, 6))
    return out


def _tx_ports(tree: FatTree, src: int, dst: int) -> set[tuple[str, int]]:
    """Switch ports whose tx carries the src->dst path (model path, port conventions)."""
    from topology.model import switch_ports

    nodes = tree.path_nodes(src, dst)
    ports = set()
    for u, v in zip(nodes, nodes[1:]):
        if u in tree.switch_names():
            ports.add((u, next(p for p, n in switch_ports(tree, u).items() if n == v)))
    return ports


def _path_links(tree: FatTree, src: int, dst: int) -> list[str]:
    return [tree.link_name(i) for i in tree.path(src, dst)]


def _iperf_server(host, port: int) -> None:
    host.cmd(f"iperf3 -s -1 -D -p {port}")
    time.sleep(0.3)


@pytest.fixture(scope="module")
def fabric(tmp_path_factory):
    from controller.process import controlled_fabric
    from topology.mininet_topo import DEFAULT_SCALE

    _no_foreign_fabric()
    fab = controlled_fabric(FatTree(), DEFAULT_SCALE, tmp_path_factory.mktemp("fabric"), ofp_port=OFP_PORT,
                            rest_port=REST_PORT)
    fab.start()
    print(f"\n[measured] 64-GPU fabric up {fab.timings['up_s']:.1f} s (target <= {UP_TARGET_S:.0f} s): "
          f"build {fab.timings['build_s']:.1f} s, start {fab.timings['start_s']:.1f} s")
    try:
        yield fab
    finally:
        fab.stop()


def test_fabric_up_every_tier_reachable(fabric):
    assert fabric.timings["up_s"] < 2 * UP_TARGET_S
    assert fabric.controller.status()["switches_ready"] == sorted(fabric.tree.switch_names())
    assert all(r["ok"] for r in fabric.reachability.values()) and sorted(fabric.reachability) == [0, 1, 2, 3]
    tree = fabric.tree
    # more sources than the start-up check: every tier from 4 hosts spread over the tree
    for src in (0, 21, 42, 63):
        host = fabric.host(tree.gpu_name(src))
        for tier in range(4):
            dst = next(d for d in range(tree.n_gpus) if d != src and tree.tier(src, d) == tier)
            out = host.cmd(f"ping -c1 -W1 -q {fabric.peer_ip(src, dst)}")
            assert " 0% packet loss" in out, f"tier {tier} {tree.gpu_name(src)}->{tree.gpu_name(dst)}: {out}"


def test_hosts_transport_settings(fabric):
    """Every host runs the transport the calibration figures were measured with, in its own
    namespace (the VM's defaults stay untouched)."""
    from topology.host_setup import HOST_RTO_MIN_MS, HOST_SLOW_START_AFTER_IDLE, HOST_TCP_CONGESTION

    for g in (0, 37, 63):
        host = fabric.host(fabric.tree.gpu_name(g))
        out = host.cmd("sysctl -n net.ipv4.tcp_congestion_control net.ipv4.tcp_slow_start_after_idle").split()
        assert out == [HOST_TCP_CONGESTION, str(HOST_SLOW_START_AFTER_IDLE)], out
        routes = host.cmd("ip route show")
        assert all(re.search(rf"rto_min (lock )?{HOST_RTO_MIN_MS}ms", line) for line in routes.splitlines()
                   if "dev" in line and "scope link" in line), routes


def test_routing_no_loops_no_flooding(fabric):
    tree = fabric.tree
    for sw in ("p0t0s0", "p0t0", "p0a0", "c0"):
        flows = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", sw],
                               capture_output=True, text=True, check=True).stdout
        assert "FLOOD" not in flows.upper() and "ALL" not in flows.split("actions=")[-1].upper()
        assert re.search(r"priority=0 actions=drop", flows), f"{sw}: no table-miss drop\n{flows}"
    src, dst, n = 0, 63, 50
    expected = _tx_ports(tree, src, dst) | _tx_ports(tree, dst, src)
    before = _dump_ports(tree)
    out = fabric.host(tree.gpu_name(src)).cmd(f"ping -c{n} -i 0.01 -W1 -q {fabric.peer_ip(src, dst)}")
    assert f"{n} received" in out, out
    after = _dump_ports(tree)
    on_path = {k: after[k][2] - before[k][2] for k in expected}
    off_path = {k: after[k][2] - before[k][2] for k in after if k not in expected and k in before}
    assert all(v >= n for v in on_path.values()), on_path
    noisy = {k: v for k, v in off_path.items() if v > 2}
    assert not noisy, f"packets on ports off the path (flooding/loops): {noisy}"


def test_tcp_transfer_crosses_expected_switches(fabric):
    tree = fabric.tree
    src, dst, nbytes = 5, 50, 3_000_000  # p0t0s1g1 -> p3t0s0g2, cross-pod
    expected = _tx_ports(tree, src, dst)
    assert [sw for sw, _ in sorted(expected, key=lambda k: tree.path_nodes(src, dst).index(k[0]))] == \
        tree.path_nodes(src, dst)[1:-1]
    _iperf_server(fabric.host(tree.gpu_name(dst)), 5301)
    before = _dump_ports(tree)
    res = json.loads(fabric.host(tree.gpu_name(src)).cmd(
        f"iperf3 -c {fabric.peer_ip(src, dst)} -p 5301 -n {nbytes} -J"))
    time.sleep(0.5)
    after = _dump_ports(tree)
    # iperf3 stops the receiver at the end of the test, so count what the receiver got: every
    # one of those bytes (plus headers) crossed every switch port of the path.
    # (`-n` ends the count when the sender's last write returns: what the 6 egress queues and the
    # socket buffers still hold is not counted; 79.9% was counted once in CI under CPU load)
    received = res["end"]["sum_received"]["bytes"]
    assert received >= 0.5 * nbytes
    delta = {k: after[k][3] - before[k][3] for k in after if k in before}
    for k in expected:
        assert delta[k] >= received, f"path port {k} carried only {delta[k]} of {received} bytes"
    big_off = {k: v for k, v in delta.items() if k not in expected and v > 0.05 * received}
    reverse = _tx_ports(tree, dst, src)  # ACKs
    assert set(big_off) <= reverse, f"data left the expected path: {big_off}"


def test_telemetry_reflects_iperf_load(fabric):
    tree = fabric.tree
    src, dst = 9, 30  # p0t1s0g1 -> p1t1s1g2, cross-pod: 6 directed links
    rate, length = 6e6, 1000
    wire_bps = rate * (length + 8 + 20 + 14) / length  # UDP + IPv4 + Ethernet headers, as switches count
    _iperf_server(fabric.host(tree.gpu_name(dst)), 5302)
    client = fabric.host(tree.gpu_name(src)).popen(
        f"iperf3 -c {fabric.peer_ip(src, dst)} -p 5302 -u -b {int(rate)} -l {length} -t 6 -J")
    try:
        t0 = time.time()
        time.sleep(0.5 + 2 * fabric.controller.poll_interval_s + 1.0)  # iperf start-up + two polls + a full 1 s
        errors = []
        for _ in range(2):
            snap = fabric.telemetry()
            assert snap["time"] > t0
            for name in _path_links(tree, src, dst):
                link = snap["links"][name]
                errors.append((name, link["tx_bps"] / wire_bps - 1))
                assert link["sample_time"] >= t0
            idle = [n for n, link in snap["links"].items()
                    if n not in _path_links(tree, src, dst) and link["tx_bps"] > 0.02 * wire_bps]
            assert not idle, f"links without the load report traffic: {idle[:5]}"
            time.sleep(1.0)
        worst = max(errors, key=lambda e: abs(e[1]))
        print(f"\n[measured] telemetry vs iperf3 UDP load ({wire_bps / 1e6:.2f} Mbit/s on the wire), "
              f"6 path links x 2 snapshots: worst error {worst[1] * 100:+.1f}% ({worst[0]}), "
              f"mean |error| {sum(abs(e) for _, e in errors) / len(errors) * 100:.1f}%")
        assert abs(worst[1]) <= 0.10, errors
        util = snap["links"][_path_links(tree, src, dst)[0]]["utilisation"]
        assert util == pytest.approx(wire_bps / (fabric.topo.rates_mbit["nic"] * 1e6), rel=0.1)
    finally:
        client.wait(timeout=15)


def test_single_transfer_goodput_per_tier(fabric, goodput_bounds):
    """iperf3 over one pair per tier; the floors are conftest's. Goodput is a ceiling property: a
    correct shaper lets a lone transfer reach its rate, noise only lowers it. So a tier under its
    floor is measured again, up to GOODPUT_ATTEMPTS times, and judged by its best run (NVLink is
    bound by the userspace datapath's forwarding thread, whose share of a core varies with the
    machine). A wrong rate, unit or ceil is wrong in every attempt."""
    from topology.fabric import tier_samples

    tree = fabric.tree
    rates = fabric.topo.rates_mbit
    results = {}
    for tier, (src, dst) in tier_samples(tree).items():
        configured = min(rates[tree.link_kind(i)] for i in tree.path(src, dst))
        floor, _ceiling = goodput_bounds(tier)
        tries = []
        while len(tries) < GOODPUT_ATTEMPTS and (not tries or max(tries) / configured < floor):
            _iperf_server(fabric.host(tree.gpu_name(dst)), 5303)
            res = json.loads(fabric.host(tree.gpu_name(src)).cmd(
                f"iperf3 -c {fabric.peer_ip(src, dst)} -p 5303 -t 3 -O 1 -J"))
            tries.append(res["end"]["sum_received"]["bits_per_second"] / 1e6)
        results[tier] = (max(tries), configured, max(tries) / configured, tries)
    print("\n[measured] single TCP transfer goodput per tier (iperf3 3 s, after 1 s omitted; best of the attempts):")
    for tier, (g, c, r, tries) in results.items():
        print(f"  tier {tier}: {g:7.2f} Mbit/s of {c:6.1f} configured = {r * 100:5.1f}% "
              f"(target >= {GOODPUT_TARGET:.0%})"
              + (f"; attempts {', '.join(f'{t:.1f}' for t in tries)}" if len(tries) > 1 else ""))
    for tier, (_g, _c, r, tries) in results.items():
        floor, ceiling = goodput_bounds(tier)
        assert floor <= r <= ceiling, f"tier {tier} goodput {r:.1%} of configured (attempts, Mbit/s: {tries})"


def test_controller_restart_keeps_flows_and_telemetry_resumes(fabric):
    tree = fabric.tree
    host = fabric.host(tree.gpu_name(1))
    ip = fabric.peer_ip(1, 62)
    proc = fabric.controller.proc
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)
    time.sleep(1.0)
    out = host.cmd(f"ping -c3 -i 0.2 -W1 -q {ip}")
    assert " 0% packet loss" in out, f"flows lost while the controller was down: {out}"
    fabric.controller.proc = proc  # restart_controller kills the (already dead) recorded process
    took = fabric.restart_controller()
    t0 = time.time()
    time.sleep(3 * fabric.controller.poll_interval_s)
    snap = fabric.telemetry()
    assert snap["time"] > t0
    print(f"\n[measured] controller restart: routes re-installed on all switches {took:.1f} s after the kill")


def test_teardown_leaves_nothing(fabric):
    from topology import cleanup

    state = dict(fabric.state)
    pids = list(state["host_pids"].values()) + list(state["switch_pids"].values()) + [fabric.controller.pid]
    fabric.stop()
    print(f"\n[measured] 64-GPU fabric down {fabric.timings['down_s']:.1f} s (target <= {DOWN_TARGET_S:.0f} s)")
    assert fabric.timings["down_s"] < 2 * DOWN_TARGET_S
    assert _leftovers(fabric.tree, state).empty()
    assert not [p for p in pids if cleanup.cmdline(p)]
    assert cleanup.read_state() is None


def _small(tmp_path: Path):
    from controller.process import controlled_fabric
    from topology.mininet_topo import DEFAULT_SCALE

    return controlled_fabric(FatTree(SMALL), DEFAULT_SCALE, tmp_path, ofp_port=OFP_PORT, rest_port=REST_PORT)


def test_exception_during_start_leaves_nothing(tmp_path, monkeypatch):
    from topology import cleanup
    from topology.fabric import Fabric

    _no_foreign_fabric()
    seen = {}

    def boom(self):
        seen.update(self.state)
        raise RuntimeError("injected after the network was built")

    monkeypatch.setattr(Fabric, "_configure_hosts", boom)
    fab = _small(tmp_path)
    with pytest.raises(RuntimeError, match="injected"):
        fab.start()
    assert seen["host_pids"]
    assert _leftovers(fab.tree, seen).empty()
    assert not [p for p in seen["host_pids"].values() if cleanup.cmdline(p)]
    assert cleanup.read_state() is None


def test_exception_while_running_leaves_nothing(tmp_path):
    from topology import cleanup

    _no_foreign_fabric()
    fab = _small(tmp_path)
    with pytest.raises(RuntimeError, match="mid-run failure"), fab:
        state = dict(fab.state)
        fab.host("p0t0s0g0").cmd("sleep 300 &")  # a process inside a host must go too
        assert " 0% packet loss" in fab.host("p0t0s0g0").cmd(f"ping -c1 -W1 {fab.peer_ip(0, 7)}")
        raise RuntimeError("mid-run failure")
    assert _leftovers(fab.tree, state).empty()
    assert not [p for p in state["host_pids"].values() if cleanup.cmdline(p)]
    assert cleanup.read_state() is None


def _serve(tmp_path: Path) -> subprocess.Popen:
    from topology import cleanup

    cmd = [sys.executable, "-m", "scripts.cmd_fabric", "serve", "--topology", json.dumps(SMALL.to_dict()),
           "--run-dir", str(tmp_path), "--ofp-port", str(OFP_PORT), "--rest-port", str(REST_PORT)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = cleanup.read_state()
        if state and state.get("owner_pid") == proc.pid and state.get("status") == "ready":
            return proc
        assert proc.poll() is None, "fabric serve process died during start-up"
        time.sleep(0.2)
    proc.kill()
    pytest.fail("fabric serve process not ready in 60 s")


def test_sigterm_tears_down(tmp_path):
    from topology import cleanup

    _no_foreign_fabric()
    proc = _serve(tmp_path)
    state = cleanup.read_state()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert _leftovers(FatTree(SMALL), state).empty()
    assert cleanup.read_state() is None


def test_crashed_owner_leftovers_removed_by_next_start(tmp_path):
    from topology import cleanup

    _no_foreign_fabric()
    proc = _serve(tmp_path / "crashed")
    state = cleanup.read_state()
    host, shell = next(iter(state["host_pids"].items()))
    # a process of ours inside a host whose shell dies too (seen after an emulate run was SIGKILLed:
    # its background sinks outlived the shells, keeping their namespaces)
    sink = subprocess.Popen(["mnexec", "-a", str(shell), sys.executable, "-m", "hosts.background", "--listen",
                             "0.0.0.0:5399"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    time.sleep(1.0)
    proc.kill()  # no teardown at all: bridges, veths, host shells, controller stay behind
    proc.wait(timeout=10)
    os.kill(shell, signal.SIGKILL)
    time.sleep(0.5)
    assert sink.poll() is None and not cleanup.pid_matches(shell, f"mininet:{host}")
    assert state["host_netns"][host] == cleanup.netns_id(sink.pid)
    assert not _leftovers(FatTree(SMALL), state).empty()
    assert sink.pid in _leftovers(FatTree(SMALL), state).processes
    fab = _small(tmp_path / "next")
    with fab:
        assert fab.removed_at_start is not None and fab.removed_at_start.bridges
        assert all(r["ok"] for r in fab.reachability.values())
    assert sink.wait(timeout=10) is not None  # the orphaned sink was found by its namespace and stopped
    assert _leftovers(FatTree(SMALL), state).empty()
    assert not cleanup.cmdline(state["controller_pid"])
