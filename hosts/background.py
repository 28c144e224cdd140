"""Background traffic for congestion scenarios: a TCP sender (greedy or paced) and a sink.

::

    python -m hosts.background --listen 10.0.0.2:5201 [--duration 30]        # sink
    python -m hosts.background --dst 10.0.0.2:5201 --rate-mbit 40 --duration 10  # paced sender
    python -m hosts.background --dst 10.0.0.2:5201 --duration 10              # greedy sender

    python -m hosts.background --dst 10.0.0.2:5201 --standby [--rate-mbit 40]  # flow slot

The paced sender is a token bucket refilled continuously at the target rate; it writes chunks of
about one millisecond of traffic (1-64 KiB) and holds at most two chunks of burst, so rates from a
few to hundreds of Mbit/s are followed closely. A greedy sender writes as fast as TCP allows.
Both stop at ``--duration`` or on SIGTERM/SIGINT and print one JSON summary line on stdout
(``{"mode", "bytes", "seconds", "mbit_s", ...}``). The sink accepts any number of connections
(one thread each), discards the bytes and prints a summary per connection and a total at exit.
Exit status: 0 on success, 1 when the connection cannot be made or breaks.

A **standby** sender (``--standby``) is a flow slot started ahead of time and switched by signals
(:mod:`hosts.standby`).
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

from hosts.standby import START_SIGNAL, STOP_SIGNAL, run_standby
from hosts.tcpflow import (
    POLL_S,
    BackgroundError,
    FlowStats,
    abort_on_close,
    connect,
    family,
    pace_chunk,
    parse_endpoint,
    send_some,
)

__all__ = ["START_SIGNAL", "STOP_SIGNAL", "BackgroundError", "FlowStats", "run_sender", "run_sink", "run_standby"]


def run_sender(host: str, port: int, duration: float, rate_mbit: float | None = None,
               stop: threading.Event | None = None, connect_timeout: float = 10.0,
               congestion: str | None = None) -> FlowStats:
    """Send to ``host:port`` for ``duration`` seconds, greedy or paced at ``rate_mbit``, with
    the kernel's congestion control ``congestion`` (e.g. "bbr"; None = the system default)."""
    if rate_mbit is not None and rate_mbit <= 0:
        raise ValueError(f"rate_mbit must be > 0, got {rate_mbit}")
    stop = stop or threading.Event()
    sock = socket.socket(family(host), socket.SOCK_STREAM)
    try:
        connect(sock, host, port, connect_timeout, congestion)
        sock.settimeout(POLL_S)
        rate_bps = rate_mbit * 1e6 if rate_mbit is not None else None
        chunk = pace_chunk(rate_bps) if rate_bps else 64 << 10
        view = memoryview(bytes(chunk))
        sent = 0
        t0 = time.monotonic()
        deadline = t0 + duration
        try:
            if rate_bps is None:
                while not stop.is_set() and time.monotonic() < deadline:
                    sent += send_some(sock, view, stop)
            else:
                sent = _paced(sock, view, rate_bps / 8, deadline, stop)
        except OSError as exc:
            raise BackgroundError(f"sending to {host}:{port} failed after {sent} bytes: {exc}"
                                  ) from exc
        seconds = time.monotonic() - t0
        return FlowStats("send", sent, seconds, f"{host}:{port}", rate_mbit)
    finally:
        if stop.is_set():  # stopped (the scenario's flow_stop): end at once, as the fluid model's flow
            abort_on_close(sock)
        sock.close()




def _paced(sock: socket.socket, view: memoryview, rate_Bps: float, deadline: float,
           stop: threading.Event) -> int:
    chunk = len(view)
    burst = 2 * chunk
    tokens = float(chunk)
    last = time.monotonic()
    sent = 0
    while not stop.is_set():
        now = time.monotonic()
        if now >= deadline:
            break
        tokens = min(burst, tokens + (now - last) * rate_Bps)
        last = now
        if tokens >= chunk:
            sent += send_some(sock, view, stop)
            tokens -= chunk
        else:
            time.sleep(min((chunk - tokens) / rate_Bps, deadline - now))
    return sent


CLAMP_RCVBUF_FACTOR = 4
"""SO_RCVBUF of a clamped sink, as a multiple of its window clamp: large enough that the clamp, not
the buffer, bounds the advertised window (the kernel doubles SO_RCVBUF and advertises roughly half
to two thirds of it), small enough to stay a fixed buffer."""


def clamp_rcvbuf_bytes(window_clamp: int) -> int:
    """Receive buffer for a sink whose window is clamped at ``window_clamp`` bytes."""
    return max(CLAMP_RCVBUF_FACTOR * window_clamp, 1 << 16)


def run_sink(host: str, port: int, duration: float | None = None,
             stop: threading.Event | None = None,
             on_ready: Callable[[int], None] | None = None,
             on_flow: Callable[[FlowStats], None] | None = None,
             window_clamp: int | None = None) -> FlowStats:
    """Accept connections on ``host:port`` and discard their bytes until ``duration`` passes or
    ``stop`` is set. ``on_ready(port)`` runs once listening (``port`` 0 picks one).
    ``window_clamp`` (bytes) caps the receive window every connection advertises, hence the
    bytes each sender keeps in flight."""
    stop = stop or threading.Event()
    lst = socket.socket(family(host), socket.SOCK_STREAM)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if window_clamp:
        # A fixed receive buffer (SOCK_RCVBUF_LOCK) keeps the kernel's receive-buffer autotuning
        # off: tcp_rcv_space_adjust() otherwise raises window_clamp along with the buffer
        # ("make the window clamp follow along") and the clamp silently stops holding.
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, clamp_rcvbuf_bytes(int(window_clamp)))
        lst.setsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP, int(window_clamp))
    total = [0]
    lock = threading.Lock()
    threads: list[threading.Thread] = []

    def drain(conn: socket.socket, peer: str) -> None:
        buf = bytearray(1 << 20)
        got = 0
        t0 = time.monotonic()
        conn.settimeout(POLL_S)
        if window_clamp:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP, int(window_clamp))
        try:
            while not stop.is_set():
                try:
                    n = conn.recv_into(buf)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if n == 0:
                    break
                got += n
                with lock:
                    total[0] += n
        finally:
            conn.close()
        if on_flow is not None:
            on_flow(FlowStats("sink-flow", got, time.monotonic() - t0, peer))

    try:
        lst.bind((host, port))
        lst.listen(64)
        lst.settimeout(POLL_S)
        bound = lst.getsockname()[1]
        if on_ready is not None:
            on_ready(bound)
        t0 = time.monotonic()
        while not stop.is_set() and (duration is None or time.monotonic() - t0 < duration):
            try:
                conn, addr = lst.accept()
            except TimeoutError:
                continue
            th = threading.Thread(target=drain, args=(conn, f"{addr[0]}:{addr[1]}"), daemon=True)
            th.start()
            threads.append(th)
        stop.set()
        for th in threads:
            th.join(timeout=2)
        return FlowStats("sink", total[0], time.monotonic() - t0, f"{host}:{bound}")
    finally:
        lst.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m hosts.background",
                                 description="background TCP sender (greedy/paced) or sink")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dst", type=parse_endpoint, help="send to HOST:PORT")
    mode.add_argument("--listen", type=parse_endpoint, help="sink on HOST:PORT")
    ap.add_argument("--rate-mbit", type=float, default=None,
                    help="paced rate in Mbit/s (omit for a greedy sender)")
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds (required for --dst; sink runs until SIGTERM when omitted)")
    ap.add_argument("--connect-timeout", type=float, default=10.0)
    ap.add_argument("--congestion", default=None,
                    help="sender: TCP congestion control (e.g. bbr, cubic; default: the system's)")
    ap.add_argument("--window-clamp", type=int, default=None,
                    help="sink: cap every connection's receive window at this many bytes")
    ap.add_argument("--standby", action="store_true",
                    help="sender: a flow slot, sending only between SIGUSR1 and SIGUSR2, until SIGTERM")
    args = ap.parse_args(argv)
    if args.standby and args.dst is None:
        ap.error("--standby needs --dst")
    if args.standby and args.duration is not None:
        ap.error("--standby runs until SIGTERM: no --duration")
    if args.dst is not None and not args.standby and (args.duration is None or args.duration <= 0):
        ap.error("--dst needs --duration > 0 (or --standby)")
    if args.dst is not None and args.dst[1] == 0:
        ap.error("--dst needs a non-zero port")
    if args.rate_mbit is not None and args.rate_mbit <= 0:
        ap.error("--rate-mbit must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.standby:
        try:
            host, port = args.dst
            run_standby(host, port, args.rate_mbit, args.connect_timeout, args.congestion,
                        lambda d: print(json.dumps(d), flush=True))
        except (BackgroundError, OSError) as exc:
            print(f"background: {exc}", file=sys.stderr)
            return 1
        return 0
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if args.dst is not None:
            host, port = args.dst
            stats = run_sender(host, port, args.duration, args.rate_mbit, stop,
                               args.connect_timeout, args.congestion)
        else:
            def ready(port: int) -> None:
                print(json.dumps({"mode": "sink", "listening": f"{args.listen[0]}:{port}"}),
                      flush=True)

            def flow(st: FlowStats) -> None:
                print(json.dumps(st.summary()), flush=True)

            host, port = args.listen
            stats = run_sink(host, port, args.duration, stop, ready, flow, args.window_clamp)
    except (BackgroundError, OSError) as exc:
        print(f"background: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(stats.summary()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
