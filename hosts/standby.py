"""A standby background sender ("flow slot", ``python -m hosts.background --standby``).

Started ahead of time, it prints ``{"mode": "standby", "ready": true}`` once its signal handlers
are in place and then sends only between :data:`START_SIGNAL` (a new connection) and
:data:`STOP_SIGNAL` (the connection is reset, and ``{"mode": "send", ..., "activation": k}``
printed for it), as often as asked, until SIGTERM. The scenario executor starts every flow slot a
scenario needs before the clock starts, so an on/off scenario switching dozens of flows costs two
signals per flow, not the start-up of dozens of Python processes while the replay runs
(docs/calibration.md#flow-slots).
"""
from __future__ import annotations

import os
import select
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType

from hosts.tcpflow import POLL_S, BackgroundError, FlowStats, abort_on_close, connect, family, pace_chunk

START_SIGNAL, STOP_SIGNAL = signal.SIGUSR1, signal.SIGUSR2
"""A standby sender starts a flow on SIGUSR1 and ends it on SIGUSR2."""


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _activation(host: str, port: int, rate_mbit: float | None, connect_timeout: float,
                congestion: str | None, running: Callable[[], bool], wake: int) -> FlowStats:
    """One flow of a standby sender: connect, send (greedy or paced) while ``running()``, then
    reset the connection. ``wake`` is a descriptor that turns readable when a signal arrived
    (``signal.set_wakeup_fd``), so a stop is seen at once, not at the next send."""
    sock = socket.socket(family(host), socket.SOCK_STREAM)
    sent = 0
    t0 = time.monotonic()
    try:
        connect(sock, host, port, connect_timeout, congestion)
        sock.setblocking(False)
        rate_Bps = rate_mbit * 1e6 / 8 if rate_mbit is not None else None
        chunk = pace_chunk(rate_Bps * 8) if rate_Bps else 64 << 10
        view = memoryview(bytes(chunk))
        tokens, last = float(chunk), time.monotonic()
        while running():
            wait = POLL_S
            if rate_Bps is not None:  # token bucket, as the one-shot paced sender
                now = time.monotonic()
                tokens = min(2 * chunk, tokens + (now - last) * rate_Bps)
                last = now
                if tokens < chunk:
                    wait = min(POLL_S, (chunk - tokens) / rate_Bps)
            readable, writable, _ = select.select([wake], [sock] if rate_Bps is None or tokens >= chunk else [],
                                                  [], wait)
            if readable:
                _drain(wake)
            if writable:
                try:
                    n = sock.send(view)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise BackgroundError(f"sending to {host}:{port} failed after {sent} bytes: {exc}") from exc
                sent += n
                tokens -= n
        return FlowStats("send", sent, time.monotonic() - t0, f"{host}:{port}", rate_mbit)
    finally:
        abort_on_close(sock)
        sock.close()


def run_standby(host: str, port: int, rate_mbit: float | None = None, connect_timeout: float = 10.0,
                congestion: str | None = None, emit: Callable[[dict], None] = print) -> None:
    """A flow slot (main thread only: it owns the process's signals): wait; on
    :data:`START_SIGNAL` open a connection to ``host:port`` and send until
    :data:`STOP_SIGNAL`, then ``emit`` the flow's summary (with ``activation``: 1, 2, ...); again
    on every start; return on SIGTERM/SIGINT (a running flow is ended and reported first).
    Raises :class:`BackgroundError` when a flow cannot connect or breaks."""
    if rate_mbit is not None and rate_mbit <= 0:
        raise ValueError(f"rate_mbit must be > 0, got {rate_mbit}")
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    state = {"on": False, "stop": False}

    def on_start(signum: int, frame: FrameType | None) -> None:
        state["on"] = True

    def on_stop(signum: int, frame: FrameType | None) -> None:
        state["on"] = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        state["stop"] = True

    old_fd = signal.set_wakeup_fd(wake_w)
    handlers = {START_SIGNAL: on_start, STOP_SIGNAL: on_stop, signal.SIGTERM: on_term, signal.SIGINT: on_term}
    old = {sig: signal.signal(sig, fn) for sig, fn in handlers.items()}
    try:
        emit({"mode": "standby", "ready": True, "peer": f"{host}:{port}", "rate_mbit_target": rate_mbit})
        k = 0
        while not state["stop"]:
            if not state["on"]:
                select.select([wake_r], [], [])  # until a signal (the wakeup fd is written first)
                _drain(wake_r)
                continue
            k += 1
            stats = _activation(host, port, rate_mbit, connect_timeout, congestion,
                                lambda: state["on"] and not state["stop"], wake_r)
            emit({**stats.summary(), "activation": k})
    finally:
        for sig, fn in old.items():
            signal.signal(sig, fn)
        signal.set_wakeup_fd(old_fd)
        os.close(wake_r)
        os.close(wake_w)

