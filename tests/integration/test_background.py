"""Background traffic knobs that keep the emulator's queues short: the sender's congestion control
choice and the window clamp's sizing, and the standby senders (flow slots) on/off scenarios
switch by signal (loopback, no root). That the clamp bounds a flow's window on the fabric is
checked in tests/emulation/test_emu_parts.py (loopback's 64 kB segments make it unobservable here: the
kernel advertises a whole segment or nothing). Also the background sender as a user runs it."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port

from hosts.background import START_SIGNAL, STOP_SIGNAL, BackgroundError, run_sender, run_sink
from scheduler.emulate.scenario_exec import (
    BACKGROUND_BASE_RTT_S,
    BACKGROUND_WINDOW_SEGMENTS,
    MSS,
    background_window_bytes,
)
from scheduler.model.config import build_config
from topology.model import FatTree

MB = 1_000_000
ROOT = Path(__file__).resolve().parents[2]



def _sink(window_clamp: int | None):
    stop = threading.Event()
    ports: list[int] = []
    t = threading.Thread(target=run_sink, args=("127.0.0.1", 0, None, stop, ports.append),
                         kwargs={"window_clamp": window_clamp}, daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    while not ports and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ports, "sink did not start"
    return ports[0], stop, t


def test_sender_congestion_control_is_selectable_and_errors_name_it():
    port, stop, t = _sink(None)
    try:
        stats = run_sender("127.0.0.1", port, 0.2, congestion="reno")
        assert stats.bytes > 0
        with pytest.raises(BackgroundError, match="no-such-cc"):
            run_sender("127.0.0.1", port, 0.2, congestion="no-such-cc")
    finally:
        stop.set()
        t.join(timeout=3)


def test_background_window_is_the_paths_bdp_plus_two_segments():
    tree = FatTree(build_config(overrides=["topology.nic_gbit_s=200"]).topology)
    # cross-pod at scale 2.5e-5: NIC and core hops 5 Mbit/s, ToR-agg 10 Mbit/s. One 1514-byte
    # frame's store-and-forward: 4 x 2.4224 ms + 2 x 1.2112 ms = 12.112 ms, + the base RTT
    base = BACKGROUND_BASE_RTT_S
    extra = BACKGROUND_WINDOW_SEGMENTS * MSS
    assert tree.tier(0, 20) == 3
    assert background_window_bytes(tree, 2.5e-5, 1.0, 0, 20) == int(5e6 / 8 * (base + 0.012112) + extra)
    # dilated time: every hop twice as slow, the base RTT unchanged
    assert background_window_bytes(tree, 2.5e-5, 2.0, 0, 20) == int(2.5e6 / 8 * (base + 2 * 0.012112) + extra)
    # a shorter path (same ToR) needs less window than a cross-pod one
    assert background_window_bytes(tree, 2.5e-5, 1.0, 0, 4) < background_window_bytes(tree, 2.5e-5, 1.0, 0, 20)


def _standby(port: int, *extra: str):
    """A standby sender subprocess; returns it once it printed its ready line."""
    proc = subprocess.Popen([sys.executable, "-m", "hosts.background", "--dst", f"127.0.0.1:{port}", "--standby",
                             *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = json.loads(proc.stdout.readline())
    assert ready == {"mode": "standby", "ready": True, "peer": f"127.0.0.1:{port}",
                     "rate_mbit_target": float(extra[1]) if extra else None}
    return proc


def test_standby_sender_sends_only_between_start_and_stop_signals():
    """A flow slot: a new connection per start signal, reset at the stop signal (the sink sees
    the flow end at once), one summary per flow, exit 0 on SIGTERM."""
    flows: list = []
    stop = threading.Event()
    ports: list[int] = []
    t = threading.Thread(target=run_sink, args=("127.0.0.1", 0, None, stop, ports.append, flows.append), daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    while not ports and time.monotonic() < deadline:
        time.sleep(0.01)
    proc = _standby(ports[0], "--rate-mbit", "40")
    try:
        time.sleep(0.3)
        assert flows == []  # standby: no connection yet
        reports = []
        for _ in range(2):
            proc.send_signal(START_SIGNAL)
            time.sleep(0.5)
            t_stop = time.monotonic()
            proc.send_signal(STOP_SIGNAL)
            reports.append(json.loads(proc.stdout.readline()))
            assert time.monotonic() - t_stop < 0.2  # reported at once, not at the next send
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        stop.set()
        t.join(3)
    assert [r["activation"] for r in reports] == [1, 2]
    for r in reports:  # paced at 40 Mbit/s for ~0.5 s
        assert r["mode"] == "send" and r["rate_mbit_target"] == 40.0
        assert r["mbit_s"] == pytest.approx(40.0, rel=0.2), r
    assert len([f for f in flows if f.mode == "sink-flow"]) == 2  # one connection per activation


def test_standby_sender_ends_a_running_flow_on_sigterm_and_rejects_bad_options():
    port, stop, t = _sink(None)
    try:
        proc = _standby(port)
        proc.send_signal(START_SIGNAL)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        last = json.loads(proc.stdout.readline())
        assert last["activation"] == 1 and last["bytes"] > 0 and last["rate_mbit_target"] is None
    finally:
        stop.set()
        t.join(3)
    bad = subprocess.run([sys.executable, "-m", "hosts.background", "--dst", "127.0.0.1:1", "--standby",
                          "--duration", "3"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--standby runs until SIGTERM" in bad.stderr


# --------------------------------------------------------------------------- background traffic
@pytest.fixture
def sink() -> Iterator[tuple[int, threading.Event, dict]]:
    stop = threading.Event()
    ports: list[int] = []
    out: dict = {}
    th = threading.Thread(target=lambda: out.update(
        total=run_sink("127.0.0.1", 0, None, stop, ports.append)), daemon=True)
    th.start()
    deadline = time.monotonic() + 5
    while not ports and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield ports[0], stop, out
    finally:
        stop.set()
        th.join(timeout=5)


def _background(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hosts.background", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_paced_background_sender_holds_rate(sink: tuple[int, threading.Event, dict]) -> None:
    port, stop, out = sink
    proc = _background("--dst", f"127.0.0.1:{port}", "--rate-mbit", "80", "--duration", "2")
    stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert 1.9 <= summary["seconds"] <= 2.5
    assert 80 * 0.85 <= summary["mbit_s"] <= 80 * 1.15, summary
    time.sleep(0.3)
    stop.set()
    time.sleep(0.5)
    received = out["total"].bytes
    assert received == summary["bytes"]
    assert 0.85 * 20 * MB <= received <= 1.15 * 20 * MB


def test_greedy_background_sender_stops_on_sigterm(sink: tuple[int, threading.Event, dict]
                                                   ) -> None:
    port, _, _ = sink
    proc = _background("--dst", f"127.0.0.1:{port}", "--duration", "60")
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=5)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["seconds"] < 5 and summary["bytes"] > 10 * MB
    assert summary["rate_mbit_target"] is None


def test_background_sender_reports_unreachable_sink() -> None:
    proc = _background("--dst", f"127.0.0.1:{free_port()}", "--duration", "1")
    _, stderr = proc.communicate(timeout=15)
    assert proc.returncode == 1 and "refused" in stderr.lower()
