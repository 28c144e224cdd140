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

A **standby** sender (``--standby``, see :func:`run_standby`) is a flow slot started ahead of
time: it prints ``{"mode": "standby", "ready": true}`` once its signal handlers are in place and
then sends only between SIGUSR1 (start: a new connection) and SIGUSR2 (stop: the connection is
reset, and ``{"mode": "send", ..., "activation": k}`` printed for it), as often as asked, until
SIGTERM. The scenario executor starts every flow slot a scenario needs before the clock starts,
so an on/off scenario switching dozens of flows costs two signals per flow, not the start-up of
dozens of Python processes while the replay runs (measured: ~1 s of both cores at every switch of
decode-flap, during which KV transfers on idle paths ran 5-17x their line-rate time).
"""
from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass
from types import FrameType
from typing import Callable, Sequence

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


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def pace_chunk(rate_bps: float) -> int:
    """Chunk size for a paced sender: about 1 ms of traffic, clamped to 1..64 KiB."""
    return int(min(64 << 10, max(1 << 10, rate_bps / 8 / 1000)))


def _send_some(sock: socket.socket, view: memoryview, stop: threading.Event) -> int:
    """Write all of ``view`` unless ``stop`` is set; returns bytes written."""
    done = 0
    while done < len(view) and not stop.is_set():
        try:
            done += sock.send(view[done:])
        except TimeoutError:
            continue
    return done


def _connect(sock: socket.socket, host: str, port: int, timeout: float, congestion: str | None) -> None:
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


def run_sender(host: str, port: int, duration: float, rate_mbit: float | None = None,
               stop: threading.Event | None = None, connect_timeout: float = 10.0,
               congestion: str | None = None) -> FlowStats:
    """Send to ``host:port`` for ``duration`` seconds, greedy or paced at ``rate_mbit``, with
    the kernel's congestion control ``congestion`` (e.g. "bbr"; None = the system default)."""
    if rate_mbit is not None and rate_mbit <= 0:
        raise ValueError(f"rate_mbit must be > 0, got {rate_mbit}")
    stop = stop or threading.Event()
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        _connect(sock, host, port, connect_timeout, congestion)
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
                    sent += _send_some(sock, view, stop)
            else:
                sent = _paced(sock, view, rate_bps / 8, deadline, stop)
        except OSError as exc:
            raise BackgroundError(f"sending to {host}:{port} failed after {sent} bytes: {exc}"
                                  ) from exc
        seconds = time.monotonic() - t0
        return FlowStats("send", sent, seconds, f"{host}:{port}", rate_mbit)
    finally:
        if stop.is_set():  # stopped (the scenario's flow_stop): end at once, as the fluid model's flow
            _abort_on_close(sock)
        sock.close()


def _abort_on_close(sock: socket.socket) -> None:
    """Make ``close`` reset the connection (SO_LINGER 0) instead of the kernel sending on the
    unsent bytes of the socket buffer after the process is gone."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


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
            sent += _send_some(sock, view, stop)
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
    lst = socket.socket(_family(host), socket.SOCK_STREAM)
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
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sent = 0
    t0 = time.monotonic()
    try:
        _connect(sock, host, port, connect_timeout, congestion)
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
        _abort_on_close(sock)
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
            run_standby(*args.dst, args.rate_mbit, args.connect_timeout, args.congestion,
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
            stats = run_sender(*args.dst, args.duration, args.rate_mbit, stop,
                               args.connect_timeout, args.congestion)
        else:
            def ready(port: int) -> None:
                print(json.dumps({"mode": "sink", "listening": f"{args.listen[0]}:{port}"}),
                      flush=True)

            def flow(st: FlowStats) -> None:
                print(json.dumps(st.summary()), flush=True)

            stats = run_sink(*args.listen, args.duration, stop, ready, flow, args.window_clamp)
    except (BackgroundError, OSError) as exc:
        print(f"background: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(stats.summary()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
