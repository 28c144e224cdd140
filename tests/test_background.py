"""Background traffic knobs that keep the emulator's queues short: the sink's window clamp and the
sender's congestion control choice (loopback, no root)."""
from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from hosts.background import BackgroundError, run_sender, run_sink
from hosts.scenario_exec import BACKGROUND_WINDOW_SEGMENTS, MSS, background_window_bytes
from scheduler.config import build_config
from topology.model import FatTree

_TCP_INFO_SND_WND = 228  # offset of tcpi_snd_wnd in struct tcp_info (Linux >= 5.19)


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


def _peer_window_after_sending(port: int) -> int:
    """Send for a moment, then read the receive window the sink advertises (our snd_wnd)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setblocking(False)
        payload = bytes(64 << 10)
        deadline = time.monotonic() + 0.4
        while time.monotonic() < deadline:
            try:
                sock.send(payload)
            except BlockingIOError:
                time.sleep(0.001)
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 512)
    if len(info) < _TCP_INFO_SND_WND + 4:
        pytest.skip(f"kernel's tcp_info ({len(info)} bytes) has no snd_wnd field")
    return struct.unpack_from("I", info, _TCP_INFO_SND_WND)[0]


def test_sink_window_clamp_bounds_what_a_greedy_sender_keeps_in_flight():
    clamp = 3 * MSS
    port, stop, t = _sink(clamp)
    try:
        clamped = _peer_window_after_sending(port)
    finally:
        stop.set()
        t.join(timeout=3)
    port, stop, t = _sink(None)
    try:
        free = _peer_window_after_sending(port)
    finally:
        stop.set()
        t.join(timeout=3)
    # the kernel rounds the clamp to its window scale; it stays within a segment of the request
    assert 0 < clamped <= clamp + MSS
    assert free > 4 * clamped


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


@pytest.mark.parametrize("nic, time_scale, want", [
    (200, 1.0, BACKGROUND_WINDOW_SEGMENTS * MSS),  # 10 Mbit/s tor-agg: 2.5 kB per RTT < 3 segments
    (400, 1.0, 5000),  # 20 Mbit/s x 2 ms
    (800, 1.0, 10000),
    (800, 2.0, 5000),  # dilated time: half the emulated rate, half the window
])
def test_background_window_fills_the_fastest_switch_link_for_one_rtt(nic, time_scale, want):
    tree = FatTree(build_config(overrides=[f"topology.nic_gbit_s={nic}"]).topology)
    assert background_window_bytes(tree, 2.5e-5, time_scale) == want
