"""Host agents' compute model end to end: prefill and decode with the simulator's timing,
layer-wise streaming, a replay through real agents, lifecycle and errors, and agents across two
network namespaces when root (agents run as real subprocesses; the fleet is fleet.py).
(Over 400 lines: every compute test drives the same agent fleet and reset protocol.)"""
from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from fleet import MB, NETNS, ROOT, Fleet
from fleet import check_pair as _check_pair
from fleet import wait_event as _wait_event

from hosts.codec import encode
from hosts.control import ControlError, ControlServer, ControlTimeout
from hosts.framing import MSG_DONE, encode_header
from hosts.kvstream import bench
from hosts.messages import (
    Error,
    Expect,
    Finished,
    FirstToken,
    Ping,
    Pong,
    Prefill,
    Prefilled,
    Received,
    Report,
    Reset,
    ResetDone,
    Send,
    Sent,
    Stop,
)

# --------------------------------------------------------------------------- compute ops
TS = 2.0  # time scale of the compute tests: every virtual second lasts two wall seconds


def _reset(fleet: Fleet, roles: dict[str, str], cfg, time_scale: float = TS) -> dict[str, ResetDone]:
    for name, role in roles.items():
        fleet.server.send(name, Reset(cfg.to_dict(), role, time_scale))
    got = {}
    while len(got) < len(roles):
        ev = _wait_event(fleet.server, lambda e: isinstance(e, (ResetDone, Error)), timeout=30)
        assert isinstance(ev, ResetDone), ev
        got[ev.agent] = ev
    assert {n: e.role for n, e in got.items()} == roles
    return got


def _collect(server: ControlServer, done: Callable[[list[Report]], bool],
             timeout: float = 20.0) -> list[Report]:
    """Reports until ``done(reports)``; ``_RX[id(report)]`` is the time each arrived."""
    out: list[Report] = []
    deadline = time.monotonic() + timeout
    while not done(out):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"events incomplete after {timeout} s: {out}")
        try:
            ev = server.events.get(timeout=left)
        except queue.Empty:
            continue
        assert not isinstance(ev, Error), ev
        _RX[id(ev)] = time.time()
        out.append(ev)
    return out


_RX: dict[int, float] = {}
"""Arrival time of each report ``_collect`` returned, by ``id`` (reports are frozen)."""


def _prefill_cmd(fleet: Fleet, dst: str, tid: int, tokens: int, cached: int, nbytes: int) -> Prefill:
    hello = fleet.server.agents()[dst]
    return Prefill(tid, tid * 10, tokens, cached, nbytes, hello.listen_ip, hello.listen_port, hello.gpu)


def _by(events: list[Report], kind: type, tid: int) -> Any:
    return next(e for e in events if isinstance(e, kind) and e.transfer_id == tid)


def test_agents_model_prefill_and_decode_with_the_simulators_timing(pair: Fleet) -> None:
    from scheduler.model.config import build_config
    from scheduler.model.instance import InstanceModel
    from scheduler.model.timing import TimingModel

    cfg = build_config()
    timing = TimingModel(cfg)
    resets = _reset(pair, {"p0t0s0g0": "prefill", "p0t0s0g1": "decode"}, cfg)
    t_reset_d = resets["p0t0s0g1"].t_reset
    reqs = {1: (3000, 0, 12), 2: (2000, 1024, 8)}  # tid -> (input, cached, output tokens)
    for tid, (tokens, _, out) in reqs.items():
        pair.server.send("p0t0s0g1", Expect(tid, tid * 10, tokens, out))
    t_sent = time.time()
    for tid, (tokens, cached, _) in reqs.items():
        pair.server.send("p0t0s0g0", _prefill_cmd(pair, "p0t0s0g1", tid, tokens, cached, 200_000 * tid))
    evs = _collect(pair.server, lambda es: sum(isinstance(e, Finished) for e in es) == 2)

    # prefill: a FIFO with the timing model's durations, stretched by the time scale
    p1, p2 = _by(evs, Prefilled, 1), _by(evs, Prefilled, 2)
    assert p1.agent == p2.agent == "p0t0s0g0" and p1.request_id == 10
    assert p1.t_start == pytest.approx(t_sent, abs=0.05)
    assert p1.t_end - p1.t_start == pytest.approx(timing.prefill_s(3000, 0) * TS, abs=1e-6)
    assert p2.t_start == pytest.approx(p1.t_end, abs=1e-6)  # queued behind request 1
    assert p2.t_end - p2.t_start == pytest.approx(timing.prefill_s(2000, 1024) * TS, abs=1e-6)
    for p in (p1, p2):  # reported when the prefill ends, not before
        assert p.t_end - 0.005 <= _RX[id(p)] <= p.t_end + 0.1
    # then the KV bytes crossed to the decode agent
    for tid, p in ((1, p1), (2, p2)):
        sent, recv = _by(evs, Sent, tid), _by(evs, Received, tid)
        assert recv.agent == "p0t0s0g1" and recv.bytes == 200_000 * tid
        assert p.t_end <= sent.t_start <= recv.t_end <= p.t_end + 0.1
    # decode: the same batch the simulator's DecodeBatch runs, fed the measured KV arrivals
    model = InstanceModel(cfg, "decode")
    for tid in (1, 2):
        t_kv = (_by(evs, Received, tid).t_end - t_reset_d) / TS
        model.kv_arrived(t_kv, tid, reqs[tid][0], reqs[tid][2])
    want = {(e.kind, e.key): e for e in model.due(float("inf"))}
    for tid in (1, 2):
        first, fin = _by(evs, FirstToken, tid), _by(evs, Finished, tid)
        assert first.agent == fin.agent == "p0t0s0g1" and first.request_id == tid * 10
        assert first.t_join == pytest.approx(_by(evs, Received, tid).t_end, abs=1e-6)
        assert first.t_join == pytest.approx(t_reset_d + want["first_token", tid].t_join * TS, abs=1e-6)
        assert first.t_first == pytest.approx(t_reset_d + want["first_token", tid].time * TS, abs=1e-6)
        assert fin.t_finish == pytest.approx(t_reset_d + want["finished", tid].time * TS, abs=1e-6)
        for ev, stamp in ((first, first.t_first), (fin, fin.t_finish)):
            assert stamp - 0.005 <= _RX[id(ev)] <= stamp + 0.1
    first1 = _by(evs, FirstToken, 1)
    assert first1.t_first - first1.t_join == pytest.approx(timing.decode_step_s(3000) * TS, abs=1e-6)
    # every request's events arrive in causal order
    for tid in (1, 2):
        order = [e.KIND for e in evs if getattr(e, "transfer_id", None) == tid and not isinstance(e, Sent)]
        assert order == ["prefilled", "received", "first_token", "finished"]


def test_kv_received_before_expect_is_held_until_expect(pair: Fleet) -> None:
    from scheduler.model.config import build_config
    from scheduler.model.timing import TimingModel

    cfg = build_config()
    _reset(pair, {"p0t0s0g0": "prefill", "p0t0s0g1": "decode"}, cfg, time_scale=1.0)
    pair.server.send("p0t0s0g0", _prefill_cmd(pair, "p0t0s0g1", 5, 1000, 0, 1000))
    evs = _collect(pair.server, lambda es: any(isinstance(e, Received) for e in es))
    time.sleep(0.2)
    while not pair.server.events.empty():
        evs.append(pair.server.events.get())
    assert [e.KIND for e in evs] == ["prefilled", "received", "sent"] or \
        [e.KIND for e in evs] == ["prefilled", "sent", "received"]  # nothing joins without expect
    t_expect = time.time()
    pair.server.send("p0t0s0g1", Expect(5, 50, 1000, 3))
    evs += _collect(pair.server, lambda es: any(isinstance(e, Finished) for e in es))
    first = _by(evs, FirstToken, 5)
    assert first.t_join == pytest.approx(t_expect, abs=0.05)
    assert first.t_join > _by(evs, Received, 5).t_end + 0.15
    step = TimingModel(cfg).decode_step_s(1000)
    assert first.t_first - first.t_join == pytest.approx(step, abs=1e-6)


def test_layer_wise_prefill_streams_each_layer_as_it_is_computed(pair: Fleet) -> None:
    """timing.kv_streaming = layer-wise: the prefill agent opens the stream once the first layer
    is computed and the last bytes leave at the prefill's end (after-prefill: the stream starts
    at the end, as the test above checks)."""
    from scheduler.model.config import build_config

    cfg = build_config(overrides=["timing.kv_streaming=layer-wise"])
    layers = cfg.model.layers
    _reset(pair, {"p0t0s0g0": "prefill", "p0t0s0g1": "decode"}, cfg)
    pair.server.send("p0t0s0g1", Expect(3, 30, 6000, 4))
    pair.server.send("p0t0s0g0", _prefill_cmd(pair, "p0t0s0g1", 3, 6000, 0, 3_200_000))
    evs = _collect(pair.server, lambda es: any(isinstance(e, Finished) for e in es))
    p, sent, recv = _by(evs, Prefilled, 3), _by(evs, Sent, 3), _by(evs, Received, 3)
    first_layer = p.t_start + (p.t_end - p.t_start) / layers
    assert p.t_end - p.t_start > 0.3  # long enough to tell the first layer from the end
    assert sent.t_start == pytest.approx(first_layer, abs=0.02)
    assert recv.t_start == pytest.approx(first_layer, abs=0.03)
    assert p.t_end <= recv.t_end <= p.t_end + 0.05  # the last layer left at the end
    assert recv.bytes == 3_200_000


def test_send_on_follows_a_layer_schedule() -> None:
    """``send_on`` with a schedule writes no byte before its step's time; the receiver's count
    at every instant stays within the schedule (plus the header)."""
    from hosts.framing import HEADER_LEN
    from hosts.kvstream import check_schedule, send_on

    a, b = socket.socketpair()
    seen: list[tuple[float, int]] = []

    def read() -> None:
        got = 0
        while got < HEADER_LEN + 40_000:
            chunk = b.recv(1 << 16)
            if not chunk:
                return
            got += len(chunk)
            seen.append((time.time(), got))
        b.sendall(encode_header(MSG_DONE, 9, 9, 40_000, 0, 1))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    t0 = time.time() + 0.05
    steps = check_schedule([[t0 + 0.06 * k, 10_000 * (k + 1)] for k in range(4)], 40_000)
    try:
        res = send_on(a, "socketpair", 0, 9, 9, 40_000, 0, 1, schedule=steps)
    finally:
        reader.join(5)
        a.close()
        b.close()
    assert res.bytes == 40_000 and res.t_start < t0
    for t, got in seen:
        allowed = max((upto for ts, upto in steps if ts <= t), default=0) + HEADER_LEN
        assert got <= allowed, (t - t0, got, allowed)
    assert seen[-1][0] >= steps[-1][0]
    with pytest.raises(Exception, match="non-decreasing"):
        check_schedule([[2.0, 10], [1.0, 20]], 20)
    with pytest.raises(Exception, match="ending at 30"):
        check_schedule([[1.0, 10], [2.0, 20]], 30)


def test_realtime_replay_through_real_agents_matches_the_simulator() -> None:
    """The whole chain without root: RealtimeReplay + AgentTransport driving four agent
    processes on loopback (2 prefill, 2 decode), against the simulator on the same requests."""
    import numpy as np

    from scheduler.decision.telemetry import TelemetryHistory
    from scheduler.emulate.replay import Clock, RealtimeReplay
    from scheduler.emulate.transport import AgentTransport
    from scheduler.model.config import build_config
    from scheduler.model.trace import Request
    from scheduler.policies import REGISTRY
    from scheduler.sim.simulator import Simulator
    from topology.model import FatTree

    cfg = build_config(overrides=["topology.pods=1", "topology.tors_per_pod=1", "topology.servers_per_tor=1",
                                 "cluster.placement=mixed", "cluster.reserved_servers_per_pod=0"])
    tree = FatTree(cfg.topology)
    rng = np.random.default_rng(5)
    reqs = [Request(i, 0.15 * i, int(rng.integers(800, 4000)), 16, tuple(range(i * 100, i * 100 + 8)))
            for i in range(8)]
    holder: list[AgentTransport] = []
    tmp = Path(tempfile.mkdtemp(prefix="nkvtest-"))
    procs: list[subprocess.Popen] = []
    server = ControlServer(tmp / "ctl.sock", on_event=lambda m: holder and holder[0].on_event(m),
                           queue_events=False)
    try:
        for g in range(tree.n_gpus):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "hosts.agent", "--name", tree.gpu_name(g), "--gpu", str(g),
                 "--listen-host", "127.0.0.1", "--port", "0", "--control", str(server.path)], cwd=ROOT))
        hellos = server.wait_hello(tree.gpu_names, timeout=15)
        ports = {h.gpu: h.listen_port for h in hellos.values()}
        transport = AgentTransport(server, tree, address=lambda src, dst: ("127.0.0.1", ports[dst]),
                                   reset_timeout_s=20)
        holder.append(transport)

        class NoActions:
            def apply(self, action) -> None:
                raise AssertionError("no scenario here")

        replay = RealtimeReplay(cfg, reqs, REGISTRY["round-robin"](), [], transport, NoActions(),
                                TelemetryHistory(), Clock(1.0), byte_scale=1e-4)
        recs = replay.run()
    finally:
        server.close()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    sim = Simulator(cfg, reqs, REGISTRY["round-robin"]()).run()
    print("\n[measured] queue delta ms", [round((r.queue_s - s.queue_s) * 1e3, 1) for r, s in zip(recs, sim)],
          "ttft delta ms", [round((r.ttft_s - s.ttft_s) * 1e3, 1) for r, s in zip(recs, sim)])
    assert [(r.prefill, r.decode) for r in recs] == [(r.prefill, r.decode) for r in sim]
    for r, s in zip(recs, sim):
        assert r.kv_bytes == s.kv_bytes
        assert r.prefill_s == pytest.approx(s.prefill_s, abs=1e-6)  # the agents' own compute model
        # control-channel and scheduling jitter of a shared 2-core machine: tens of ms at worst
        assert r.queue_s == pytest.approx(s.queue_s, abs=0.05)
        assert 0 <= r.transfer_s < 0.03  # loopback, not the fabric (and no Nagle stall: 40 ms)
        assert r.tbt_mean_ms == pytest.approx(s.tbt_mean_ms, abs=0.05)
        assert r.ttft_s == pytest.approx(s.ttft_s, abs=0.08)


@pytest.mark.parametrize("target,msg,needle", [
    ("p0t0s0g0", {"op": "prefill", "request_id": 1, "transfer_id": 1, "input_tokens": 10,
                  "cached_tokens": 0, "bytes": 1, "dst_ip": "127.0.0.1", "dst_port": 1,
                  "dst_gpu": 1}, "prefill: this agent has no instance yet"),
    ("p0t0s0g0", {"op": "reset", "config": {}, "role": "both", "time_scale": 1.0}, "reset: field 'role'"),
    ("p0t0s0g0", {"op": "reset", "config": {}, "role": "decode", "time_scale": 0}, "time_scale"),
    ("p0t0s0g0", {"op": "reset", "config": "default", "role": "decode", "time_scale": 1}, "reset: field 'config'"),
    ("p0t0s0g0", {"op": "reset", "config": {"topology": {"pods": 0}}, "role": "decode", "time_scale": 1},
     "reset: bad config: .*pods"),
    ("p0t0s0g1", {"op": "expect", "request_id": 1, "transfer_id": 4, "input_tokens": 10,
                  "output_tokens": -1}, "expect: output_tokens must be >= 0"),
])
def test_invalid_compute_commands_yield_errors(pair: Fleet, target: str, msg: dict, needle: str) -> None:
    pair.server.send(target, msg)  # raw wire objects: some are malformed
    ev = _wait_event(pair.server, lambda e: isinstance(e, (Error, ResetDone)))
    assert isinstance(ev, Error) and re.search(needle, ev.reason), ev
    if isinstance(msg.get("transfer_id"), int):
        assert ev.transfer_id == msg["transfer_id"] and ev.request_id == msg["request_id"]


def test_compute_commands_for_the_wrong_role_or_twice_are_refused(pair: Fleet) -> None:
    from scheduler.model.config import build_config

    _reset(pair, {"p0t0s0g0": "prefill", "p0t0s0g1": "decode"}, build_config())
    expect = Expect(70, 7, 10, 2)
    pair.server.send("p0t0s0g0", expect)
    ev = _wait_event(pair.server, lambda e: isinstance(e, Error))
    assert ev.reason == "expect: this agent is a prefill instance" and ev.transfer_id == 70
    pair.server.send("p0t0s0g1", expect)
    pair.server.send("p0t0s0g1", expect)
    ev = _wait_event(pair.server, lambda e: isinstance(e, Error))
    assert "already expected" in ev.reason
    bad = _prefill_cmd(pair, "p0t0s0g1", 71, 100, 200, 1)
    pair.server.send("p0t0s0g0", bad)
    ev = _wait_event(pair.server, lambda e: isinstance(e, Error))
    assert "cached_tokens 200 exceed input_tokens 100" in ev.reason
    pair.server.send("p0t0s0g1", _prefill_cmd(pair, "p0t0s0g1", 72, 100, 0, 1))
    ev = _wait_event(pair.server, lambda e: isinstance(e, Error))
    assert ev.reason == "prefill: this agent is a decode instance"
    pair.server.send("p0t0s0g0", {**encode(_prefill_cmd(pair, "p0t0s0g1", 73, 100, 0, 1)), "bytes": "lots"})
    ev = _wait_event(pair.server, lambda e: isinstance(e, Error))
    assert ev.reason.startswith("prefill: field 'bytes' must be int")


def test_ping_pong(pair: Fleet) -> None:
    before = time.time()
    pair.server.send("p0t0s0g1", Ping("abc"))
    ev = _wait_event(pair.server, lambda e: isinstance(e, Pong))
    assert ev.seq == "abc" and ev.agent == "p0t0s0g1" and ev.t >= before


@pytest.mark.parametrize("how", ["stop", "sigterm", "sigint", "control-close"])
def test_agent_exits_cleanly(fleet: Fleet, how: str) -> None:
    fleet.start("p0t0s0g0", 0)
    proc = fleet.procs["p0t0s0g0"]
    if how == "stop":
        fleet.server.send("p0t0s0g0", Stop())
    elif how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    elif how == "sigint":
        proc.send_signal(signal.SIGINT)
    else:
        fleet.server.close()
    assert proc.wait(timeout=5) == 0
    assert not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() == "zombie"
    if how != "control-close":
        fleet.server.wait_disconnect("p0t0s0g0", timeout=5)
        assert "p0t0s0g0" not in fleet.server.agents()


def test_stop_during_transfer_exits(pair: Fleet) -> None:
    """An agent told to stop mid-transfer does not hang on its open sockets."""
    pair.send("p0t0s0g0", "p0t0s0g1", 21, 4_000 * MB)
    time.sleep(0.3)
    for name in pair.procs:
        pair.server.send(name, Stop())
    for proc in pair.procs.values():
        assert proc.wait(timeout=10) == 0


def test_server_rejects_duplicate_names_and_unknown_agents(fleet: Fleet) -> None:
    fleet.start("p0t0s0g0", 0)
    with pytest.raises(ControlError, match="not connected"):
        fleet.server.send("nobody", Ping())
    with pytest.raises(ControlTimeout, match="nobody"):
        fleet.server.wait_hello(["p0t0s0g0", "nobody"], timeout=0.3)
    dup = subprocess.Popen([sys.executable, "-m", "hosts.agent", "--name", "p0t0s0g0", "--gpu",
                            "0", "--port", "0", "--control", str(fleet.server.path)], cwd=ROOT)
    try:
        ev = _wait_event(fleet.server, lambda e: isinstance(e, Error))
        assert "duplicate" in ev.reason
        assert dup.wait(timeout=5) == 0
    finally:
        if dup.poll() is None:
            dup.kill()
            dup.wait()
    assert fleet.server.agents()["p0t0s0g0"].pid == fleet.procs["p0t0s0g0"].pid


def test_agent_without_orchestrator_fails_fast(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "hosts.agent", "--name", "x", "--gpu", "0",
                           "--port", "0", "--control", str(tmp_path / "none.sock"),
                           "--control-timeout", "0.5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "control socket" in proc.stderr


def test_agent_does_not_load_scapy() -> None:
    """64 agents share 2 cores: importing Scapy would cost each 0.3-2 s of CPU at start-up."""
    code = "import sys, hosts.agent; print(sorted(m for m in sys.modules if 'scapy' in m))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_agent_does_not_load_numpy_or_the_scheduler() -> None:
    """Agents start inside Mininet hosts: numpy and the timing model load only on ``reset``."""
    code = "import sys, hosts.agent; print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'scheduler'}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_loopback_throughput_1gb() -> None:
    res = bench(1 << 30)
    print(f"\nloopback 1 GiB transfer: {res['seconds']:.3f} s, {res['gbit_s']:.2f} Gbit/s")
    assert res["bytes"] == 1 << 30


# --------------------------------------------------------------------------- network namespaces
def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _delete_test_namespaces() -> None:
    existing = _ip("netns", "list", check=False).stdout.split()
    for ns in NETNS:
        if ns in existing:
            _ip("netns", "del", ns, check=False)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 'ip' is not installed")
    _delete_test_namespaces()  # leftovers of an interrupted earlier run (our names only)
    try:
        for ns in NETNS:
            _ip("netns", "add", ns)
        _ip("link", "add", "nkvtest-va", "netns", NETNS[0], "type", "veth",
            "peer", "name", "nkvtest-vb", "netns", NETNS[1])
        for ns, dev, addr in ((NETNS[0], "nkvtest-va", "10.250.0.1/30"),
                              (NETNS[1], "nkvtest-vb", "10.250.0.2/30")):
            _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield NETNS
    finally:
        _delete_test_namespaces()


def test_agents_in_two_namespaces(namespaces: tuple[str, str], fleet: Fleet) -> None:
    ha = fleet.start("p0t0s0g0", 0, host="10.250.0.1", netns=namespaces[0])
    hb = fleet.start("p1t0s0g0", 16, host="10.250.0.2", netns=namespaces[1])
    assert ha.listen_ip == "10.250.0.1" and hb.listen_ip == "10.250.0.2"
    fleet.send("p0t0s0g0", "p1t0s0g0", 1, 10 * MB)
    fleet.send("p1t0s0g0", "p0t0s0g0", 2, 10 * MB)
    res = fleet.server.wait_transfers([1, 2], timeout=60)
    for tid, src_ip in ((1, "10.250.0.1"), (2, "10.250.0.2")):
        assert "error" not in res[tid], res[tid]
        _check_pair(res[tid]["sent"], res[tid]["received"], tid, 10 * MB)
        assert res[tid]["received"].peer.startswith(f"{src_ip}:")
    # The data port is bound to the namespace's address, not reachable on the root loopback.
    fleet.server.send("p0t0s0g0", Send(3, 30, "127.0.0.1", hb.listen_port, MB, 16))
    assert "error" in fleet.server.wait_transfers([3], timeout=10)[3]


def test_a_pooled_connection_the_peer_closed_is_not_reused() -> None:
    """A decode agent restarted after a fault: the prefill agent's idle connection to the old one
    reads as closed and is dropped instead of carrying the next transfer into nothing."""
    import socket

    from hosts.agent import idle_alive

    a, b = socket.socketpair()
    try:
        assert idle_alive(a)
        b.close()
        assert not idle_alive(a)
    finally:
        a.close()
    assert not idle_alive(a)  # a closed socket is not alive either
