"""Background traffic knobs that keep the emulator's queues short: the sender's congestion control
choice and the window clamp's sizing (loopback, no root). That the clamp bounds a flow's window on
the fabric is checked in tests/test_emu_parts.py (loopback's 64 kB segments make it unobservable
here: the kernel advertises a whole segment or nothing)."""
from __future__ import annotations

import threading
import time

import pytest

from hosts.background import BackgroundError, run_sender, run_sink
from hosts.scenario_exec import BACKGROUND_BASE_RTT_S, BACKGROUND_WINDOW_SEGMENTS, MSS, background_window_bytes
from scheduler.config import build_config
from topology.model import FatTree



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
