"""Socket steps the background sender, sink and flow slot share (:mod:`hosts.background`,
:mod:`hosts.standby`): endpoints, flow summaries, pacing chunk, connect, reset on close."""
from __future__ import annotations

import argparse
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass

POLL_S = 0.2  # how often blocked calls look at the stop flag


class BackgroundError(RuntimeError):
    """The background flow could not be established or broke."""


@dataclass
class FlowStats:
    mode: str
    bytes: int
    seconds: float
    peer: str
    rate_mbit_target: float | None = None

    @property
    def mbit_s(self) -> float:
        return self.bytes * 8 / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, object]:
        return {**asdict(self), "mbit_s": round(self.mbit_s, 3)}


def parse_endpoint(text: str) -> tuple[str, int]:
    """``"10.0.0.2:5201"`` or ``"[::1]:5201"`` -> (host, port); port 0 = any (sink only)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def pace_chunk(rate_bps: float) -> int:
    """Chunk size for a paced sender: about 1 ms of traffic, clamped to 1..64 KiB."""
    return int(min(64 << 10, max(1 << 10, rate_bps / 8 / 1000)))


def send_some(sock: socket.socket, view: memoryview, stop: threading.Event) -> int:
    """Write all of ``view`` unless ``stop`` is set; returns bytes written."""
    done = 0
    while done < len(view) and not stop.is_set():
        try:
            done += sock.send(view[done:])
        except TimeoutError:
            continue
    return done


def connect(sock: socket.socket, host: str, port: int, timeout: float, congestion: str | None) -> None:
    """Set the congestion control (None: the system default) and connect; BackgroundError names
    what failed."""
    if congestion:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, congestion.encode())
        except OSError as exc:
            raise BackgroundError(f"congestion control {congestion!r} unavailable: {exc}") from exc
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except OSError as exc:
        raise BackgroundError(f"connect to {host}:{port} failed: {exc}") from exc


def abort_on_close(sock: socket.socket) -> None:
    """Make ``close`` reset the connection (SO_LINGER 0) instead of the kernel sending on the
    unsent bytes of the socket buffer after the process is gone."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


def accept_loop(listener: socket.socket, stop: threading.Event, handle: Callable[[socket.socket], None]) -> None:
    """Hand every connection ``listener`` accepts to ``handle`` until ``stop`` is set or the
    listener closes; ``listener`` has a timeout, so ``stop`` is seen within it."""
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        handle(conn)
