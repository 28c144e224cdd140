"""Background traffic knobs that keep the emulator's queues short: the sink's window clamp and the
sender's congestion control choice (loopback, no root)."""
from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from hosts.background import BackgroundError, run_sender, run_sink
from hosts.scenario_exec import BACKGROUND_BASE_RTT_S, BACKGROUND_WINDOW_SEGMENTS, MSS, background_window_bytes
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


def _peer_windows_while_sending(port: int, seconds: float = 2.0, stop_below: int = 0) -> list[int]:
    """Send for up to ``seconds`` and sample the receive window the sink advertises (our
    ``snd_wnd``) every few ms; stops early once it reads ``stop_below`` or less. The sink accepts
    on a poll loop, so the first samples may still show the unclamped initial window."""
    samples: list[int] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setblocking(False)
        payload = bytes(64 << 10)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                sock.send(payload)
            except BlockingIOError:
                time.sleep(0.002)
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 512)
            if len(info) < _TCP_INFO_SND_WND + 4:
                pytest.skip(f"kernel's tcp_info ({len(info)} bytes) has no snd_wnd field")
            samples.append(struct.unpack_from("I", info, _TCP_INFO_SND_WND)[0])
            if samples[-1] <= stop_below:
                break
    return samples


def test_sink_window_clamp_bounds_what_a_greedy_sender_keeps_in_flight():
    clamp = 3 * MSS
    port, stop, t = _sink(clamp)
    try:
        clamped = _peer_windows_while_sending(port, stop_below=clamp + MSS)
    finally:
        stop.set()
        t.join(timeout=3)
    port, stop, t = _sink(None)
    try:
        free = _peer_windows_while_sending(port, seconds=0.5)
    finally:
        stop.set()
        t.join(timeout=3)
    # once the sink has the connection, the window stays at the clamp (the kernel rounds it to
    # its window scale, within a segment); unclamped it grows far beyond
    assert 0 < clamped[-1] <= clamp + MSS, clamped[-10:]
    assert max(free) > 4 * (clamp + MSS)


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
