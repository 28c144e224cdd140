"""Host agent: models its GPU instance's compute, moves synthetic KV-cache bytes over real TCP
and reports timings.

Run one per emulated GPU host (inside its network namespace)::

    python -m hosts.agent --name p0t0s0g0 --gpu 0 --listen-host 10.0.0.1 --port 9470 \\
        --control RUN/control.sock

It connects to the orchestrator's ``ControlServer`` (``hosts.control``; every message:
``hosts.messages``), says hello, then serves (the work of one instance: the orchestrator only
decides and records):

* compute (``reset``, ``prefill``, ``expect``): the instance's prefill FIFO or decode batch,
  modelled by ``hosts.compute.ComputeEngine`` with the simulator's timing model
  (``scheduler.model.instance.InstanceModel``) on the agent's own clock. A prefill agent streams the
  KV bytes when a prompt's prefill ends (with ``timing.kv_streaming = "layer-wise"``: from its
  first layer on, each layer's bytes as that layer completes); a decode agent admits a request
  when its KV has been received and reports ``first_token`` and ``finished``;
* incoming: each accepted TCP connection carries transfers one after another (``hosts.kvstream``:
  a DATA header, the payload, a DONE back); each is reported as ``received``;
* outgoing: on ``send``, and when a prefill ends, it takes an idle pooled connection to
  ``dst_ip:dst_port`` (``warm`` opens them ahead of time) or connects, streams the transfer,
  waits for the DONE and reports ``sent``; one thread per transfer.

The agent exits 0 on ``stop``, on SIGTERM/SIGINT and when the control connection closes; open
transfer sockets are closed so no thread blocks exit. ``--bench`` runs one loopback transfer
in-process without a control socket and prints the throughput.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from hosts.compute import ComputeEngine
from hosts.control import AgentClient
from hosts.framing import KV_PORT, FramingError
from hosts.kvstream import (
    PATTERN,
    TransferError,
    bench,
    check_schedule,
    connect,
    peer_name,
    receive_transfer,
    send_on,
)
from hosts.messages import (
    Command,
    ControlError,
    Error,
    Expect,
    Hello,
    Ping,
    Pong,
    Prefill,
    ProtocolError,
    Report,
    Reset,
    Send,
    Stop,
    Warm,
    Warmed,
)
from hosts.tcpflow import accept_loop


def idle_alive(sock: socket.socket) -> bool:
    """Whether an idle pooled KV connection still works: its receiver sends nothing unprompted, so
    one that is readable while idle has been closed or reset by its peer."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def take_idle(pool: dict[tuple[str, int], list[socket.socket]], peer: tuple[str, int],
              drop: Callable[[socket.socket], None]) -> socket.socket | None:
    """A pooled connection to ``peer`` that still works, or None; the ones its peer closed
    meanwhile (the peer restarted) go to ``drop``. The caller holds the pool's lock."""
    idle = pool.get(peer)
    while idle:
        sock = idle.pop()
        if idle_alive(sock):
            return sock
        drop(sock)
    return None


class Agent:
    """Listener + control loop of one host agent."""

    def __init__(self, name: str, gpu: int, listen_host: str, port: int, control: str | Path,
                 *, sndbuf: int = 0, io_timeout: float = 120.0,
                 connect_timeout: float = 10.0, control_timeout: float = 10.0) -> None:
        self.name, self.gpu = name, gpu
        self.sndbuf, self.io_timeout, self.connect_timeout = sndbuf, io_timeout, connect_timeout
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._payload = memoryview(PATTERN)
        self._pool: dict[tuple[str, int], list[socket.socket]] = {}
        self.compute = ComputeEngine(self._emit, lambda cmd: self._spawn(self._send, cmd))
        family = socket.AF_INET6 if ":" in listen_host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((listen_host, port))
            self.listener.listen(512)
        except OSError:
            self.listener.close()
            raise
        self.listener.settimeout(0.2)
        self.listen_ip, self.port = self.listener.getsockname()[:2]
        try:
            self.client = AgentClient(control, Hello(name, gpu, os.getpid(), self.listen_ip, self.port),
                                      connect_timeout=control_timeout)
        except ControlError:
            self.listener.close()
            raise

    # ------------------------------------------------------------------ plumbing
    def _spawn(self, target: Any, *args: Any) -> None:
        t = threading.Thread(target=self._run_tracked, args=(target, *args), daemon=True)
        with self._lock:
            self._threads.add(t)
        t.start()

    def _run_tracked(self, target: Any, *args: Any) -> None:
        try:
            target(*args)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _emit(self, msg: Report) -> None:
        if self._stop.is_set() and isinstance(msg, Error):
            return  # aborted by our own shutdown: nobody is listening for it
        try:
            self.client.emit(msg)
        except ControlError:
            self.request_stop()

    # ------------------------------------------------------------------ work
    def _accept_loop(self) -> None:
        accept_loop(self.listener, self._stop, self._accepted)

    def _accepted(self, conn: socket.socket) -> None:
        self._open.add(conn)
        self._spawn(self._receive, conn)

    def _receive(self, conn: socket.socket) -> None:
        """Serve transfers on one (persistent) connection until the peer closes it."""
        try:
            while not self._stop.is_set():
                res = receive_transfer(conn, my_gpu=self.gpu, io_timeout=self.io_timeout, eof_ok=True)
                if res is None:
                    return
                self._emit(res)  # before the compute hears of it: received < first_token
                self.compute.kv_received(res.transfer_id, res.t_end)
        except TransferError as exc:
            self._emit(Error(exc.transfer_id, str(exc), role="recv", request_id=exc.request_id,
                             bytes=exc.nbytes, peer=peer_name(conn)))
        finally:
            self._open.discard(conn)
            conn.close()

    def _take(self, peer: tuple[str, int]) -> tuple[socket.socket, float | None]:
        """An idle pooled connection to ``peer`` (None as connect time) or a new one. Pooled ones
        the peer has closed meanwhile (its agent restarted) are dropped here."""
        with self._lock:
            pooled = take_idle(self._pool, peer, self._drop)
        if pooled is not None:
            return pooled, None
        t_connect = time.time()
        sock = connect(peer[0], peer[1], connect_timeout=self.connect_timeout, sndbuf=self.sndbuf)
        self._open.add(sock)
        return sock, t_connect

    def _give_back(self, peer: tuple[str, int], sock: socket.socket) -> None:
        with self._lock:
            self._pool.setdefault(peer, []).append(sock)

    def _drop(self, sock: socket.socket) -> None:
        self._open.discard(sock)
        sock.close()

    def _warm(self, peers: Sequence[tuple[str, int]]) -> None:
        """Open one persistent connection to each peer ahead of time (like the long-lived
        connections or queue pairs of a KV transfer engine), so no TCP handshake - and no SYN
        lost behind a congested queue, a one-second timeout - lies on a transfer's path."""
        for ip, port in peers:
            try:
                sock, _ = self._take((ip, port))
                self._give_back((ip, port), sock)
            except TransferError as exc:
                self._emit(Error(None, f"warm: {exc}"))
                return
        self._emit(Warmed(len(peers)))

    def _send(self, cmd: Send) -> None:
        peer = (cmd.dst_ip, cmd.dst_port)
        try:
            schedule = cmd.layer_schedule
            steps = check_schedule(schedule, cmd.bytes) if schedule is not None else None
            for attempt in (1, 2):
                sock, t_connect = self._take(peer)
                try:
                    res = send_on(sock, peer[0], peer[1], cmd.transfer_id, cmd.request_id,
                                  cmd.bytes, self.gpu, cmd.dst_gpu, io_timeout=self.io_timeout,
                                  payload=self._payload, t_connect=t_connect, schedule=steps,
                                  stop=self._stop)
                except TransferError as exc:
                    self._drop(sock)
                    # a pooled connection the peer closed meanwhile: retry once on a new one
                    if attempt == 1 and t_connect is None and exc.nbytes == 0:
                        continue
                    raise
                self._give_back(peer, sock)
                self._emit(res)
                return
        except (TransferError, FramingError, OSError) as exc:
            self._emit(Error(cmd.transfer_id, str(exc), role="send", request_id=cmd.request_id,
                             bytes=getattr(exc, "nbytes", 0), peer=f"{cmd.dst_ip}:{cmd.dst_port}"))

    def _compute(self, cmd: Reset | Prefill | Expect) -> None:
        """A (decoded, so well-formed) compute command, handed to the compute engine; what it
        refuses (wrong role, no instance, bad config) is answered with an ``Error``."""
        try:
            if isinstance(cmd, Reset):
                self._emit(self.compute.reset(cmd.config, cmd.role, cmd.time_scale))
            elif isinstance(cmd, Prefill):
                self.compute.prefill(cmd)
            else:
                self.compute.expect(cmd)
        except ProtocolError as exc:
            self._emit(Error(getattr(cmd, "transfer_id", None), str(exc),
                             request_id=getattr(cmd, "request_id", None)))

    def handle(self, cmd: Command) -> bool:
        """Act on one (decoded) command; False means stop."""
        match cmd:
            case Send():
                self._spawn(self._send, cmd)
            case Reset() | Prefill() | Expect():
                self._compute(cmd)
            case Warm(peers=peers):
                self._spawn(self._warm, peers)
            case Ping(seq=seq):
                self._emit(Pong(seq, time.time(), len(self._threads)))
            case Stop():
                return False
        return True

    def request_stop(self) -> None:
        """Thread- and signal-safe: make ``run`` return soon."""
        self._stop.set()
        self.client.shutdown()

    def run(self) -> None:
        acceptor = threading.Thread(target=self._accept_loop, name="accept", daemon=True)
        acceptor.start()
        try:
            for msg in self.client.messages():
                if self._stop.is_set() or not self.handle(msg):
                    break
        finally:
            self._stop.set()
            self.compute.close()
            self.listener.close()
            for sock in list(self._open):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            acceptor.join(timeout=2)
            with self._lock:
                threads = list(self._threads)
            for t in threads:
                t.join(timeout=2)
            self.client.close()


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B").rstrip("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m hosts.agent", description=__doc__.split("\n")[0])
    ap.add_argument("--name", help="host name, e.g. p0t0s0g0")
    ap.add_argument("--gpu", type=int, help="GPU index of this host")
    ap.add_argument("--listen-host", default="127.0.0.1",
                    help="address the data port binds to (default 127.0.0.1; never 0.0.0.0 "
                         "unless given explicitly)")
    ap.add_argument("--port", type=int, default=KV_PORT,
                    help=f"data port (default {KV_PORT}; 0 = ephemeral, reported in hello)")
    ap.add_argument("--control", help="orchestrator's Unix control socket")
    ap.add_argument("--sndbuf", type=int, default=0,
                    help="SO_SNDBUF bytes for outgoing streams (0 = kernel autotuning)")
    ap.add_argument("--io-timeout", type=float, default=120.0,
                    help="seconds without progress before a transfer fails")
    ap.add_argument("--connect-timeout", type=float, default=10.0,
                    help="seconds to connect a KV stream to its destination")
    ap.add_argument("--control-timeout", type=float, default=10.0,
                    help="seconds to keep retrying the control socket at start-up")
    ap.add_argument("--bench", action="store_true",
                    help="run one loopback transfer in-process and print its throughput")
    ap.add_argument("--bytes", type=_size, default=1 << 30, help="--bench size (e.g. 1G)")
    args = ap.parse_args(argv)
    if not args.bench and (args.name is None or args.gpu is None or args.control is None):
        ap.error("--name, --gpu and --control are required (or use --bench)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bench:
        print(json.dumps(bench(args.bytes, args.sndbuf)))
        return 0
    # Handlers go in before the hello is sent, so a signal right after hello is never lost.
    stop_requested = threading.Event()
    agent: Agent | None = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()
        if agent is not None:
            agent.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent = Agent(args.name, args.gpu, args.listen_host, args.port, args.control,
                      sndbuf=args.sndbuf, io_timeout=args.io_timeout,
                      connect_timeout=args.connect_timeout,
                      control_timeout=args.control_timeout)
    except (OSError, ControlError) as exc:
        print(f"agent {args.name}: {exc}", file=sys.stderr)
        return 1
    if stop_requested.is_set():
        agent.request_stop()
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
