"""Host agent: models its GPU instance's compute, moves synthetic KV-cache bytes over real TCP
and reports timings.

Run one per emulated GPU host (inside its network namespace)::

    python -m hosts.agent --name p0t0s0g0 --gpu 0 --listen-host 10.0.0.1 --port 9470 \\
        --control RUN/control.sock

It connects to the orchestrator's ``ControlServer`` (see ``hosts.control`` for every message),
says hello, then serves (the work of one instance: the orchestrator only decides and records):

* compute (``reset``, ``prefill``, ``expect``): the instance's prefill FIFO or decode batch,
  modelled by ``hosts.compute.ComputeEngine`` with the simulator's timing model
  (``scheduler.instance.InstanceModel``) on the agent's own clock. A prefill agent streams the
  KV bytes when a prompt's prefill ends (with ``timing.kv_streaming = "layer-wise"``: from its
  first layer on, each layer's bytes as that layer completes); a decode agent admits a request
  when its KV has been received and reports ``first_token`` and ``finished``;
* incoming: a TCP connection carries one DATA header (``hosts.framing``) then ``total`` payload
  bytes; the receiver counts them with ``recv_into`` on a large buffer, answers with a DONE
  header when asked (``FLAG_ACK_REQ``) and reports ``received``;
* outgoing: on ``{"op": "send"}``, and when a prefill ends, it connects to ``dst_ip:dst_port``
  (or reuses a pooled connection), writes the header and the payload from one preallocated
  buffer (``sendall`` of memoryview slices), waits for the DONE and reports ``sent``; one
  thread per transfer.

Times are ``time.time()``. Receiver: ``t_start`` = first header byte arrived, ``t_end`` = last
payload byte read. Sender: ``t_start`` = just before the first header byte is written (after
connect; ``t_connect`` is the moment before connect), ``t_end`` = DONE received (the last byte
reached the peer application), ``t_local_end`` = last byte handed to the local kernel.

The agent exits 0 on ``stop``, on SIGTERM/SIGINT and when the control connection closes; open
transfer sockets are closed so no thread blocks exit. ``--bench`` runs one loopback transfer
in-process without a control socket and prints the throughput.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Sequence

from hosts.compute import ComputeEngine
from hosts.control import (
    AgentClient,
    ControlError,
    Message,
    ProtocolError,
    validate_expect,
    validate_prefill,
    validate_reset,
    validate_send,
)
from hosts.framing import (
    FLAG_ACK_REQ,
    FLAG_SYNTHETIC,
    HEADER_LEN,
    KV_PORT,
    MSG_DATA,
    MSG_DONE,
    FramingError,
    decode_header,
    encode_header,
)

CHUNK = 1 << 20
"""Bytes per ``sendall``/``recv_into`` call; the per-call socket timeout applies to one chunk."""
_PATTERN = bytes(range(256)) * (CHUNK // 256)


class TransferError(RuntimeError):
    """A transfer failed; ``nbytes`` payload bytes had been moved."""

    def __init__(self, reason: str, nbytes: int = 0, transfer_id: int | None = None,
                 request_id: int | None = None) -> None:
        super().__init__(reason)
        self.nbytes = nbytes
        self.transfer_id, self.request_id = transfer_id, request_id


@dataclass
class TransferResult:
    transfer_id: int
    request_id: int
    bytes: int
    t_start: float
    t_end: float
    role: str  # "send" | "recv"
    peer: str  # "ip:port"
    src_gpu: int
    dst_gpu: int
    t_connect: float | None = None
    t_local_end: float | None = None

    def event(self) -> Message:
        ev = {"ev": "sent" if self.role == "send" else "received", **asdict(self)}
        return {k: v for k, v in ev.items() if v is not None}


def _recv_exact(sock: socket.socket, n: int) -> tuple[bytes, float | None]:
    """Read exactly ``n`` bytes; returns them and the time the first byte arrived."""
    buf = bytearray()
    t_first = None
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise TransferError(f"connection closed after {len(buf)} of {n} header bytes")
        if t_first is None:
            t_first = time.time()
        buf += chunk
    return bytes(buf), t_first


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


def connect(dst_ip: str, dst_port: int, *, connect_timeout: float = 10.0, sndbuf: int = 0) -> socket.socket:
    """A connected TCP socket to a peer agent; raises ``TransferError``.

    Nagle's algorithm is off (``TCP_NODELAY``): a transfer whose payload ends in a segment shorter
    than the MSS (every transfer below 64 KiB on loopback) would otherwise hold that tail until
    the header's delayed ACK, 40 ms later. Payload is written in large chunks, so nothing is lost."""
    sock = socket.socket(socket.AF_INET6 if ":" in dst_ip else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if sndbuf > 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        sock.settimeout(connect_timeout)
        sock.connect((dst_ip, dst_port))
    except OSError as exc:
        sock.close()
        raise TransferError(f"connect to {dst_ip}:{dst_port} failed: {exc}") from exc
    return sock


def check_schedule(schedule: object, nbytes: int) -> list[tuple[float, int]]:
    """A layer schedule (``[[wall time, bytes so far], ...]``, see ``hosts.compute``) as a list
    of (time, bytes): times non-decreasing, bytes non-decreasing within 0..``nbytes``, the last
    entry ``nbytes``; raises ``TransferError`` otherwise."""
    try:
        steps = [(float(t), int(b)) for t, b in schedule]  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise TransferError(f"layer_schedule must be [[time, bytes], ...]: {exc}") from None
    ok = bool(steps) and steps[-1][1] == nbytes and all(
        0 <= b1 <= b2 and t1 <= t2 for (t1, b1), (t2, b2) in zip(steps, steps[1:])) and steps[0][1] >= 0
    if not ok:
        raise TransferError(f"layer_schedule must have non-decreasing times and bytes ending at {nbytes}, "
                            f"got {steps[:3]}{'...' if len(steps) > 3 else ''}")
    return steps


def send_on(sock: socket.socket, dst_ip: str, dst_port: int, transfer_id: int, request_id: int,
            nbytes: int, src_gpu: int, dst_gpu: int, *, io_timeout: float = 120.0,
            payload: memoryview | None = None, t_connect: float | None = None,
            schedule: list[tuple[float, int]] | None = None,
            stop: threading.Event | None = None) -> TransferResult:
    """Send one transfer on a connected socket and wait for the receiver's DONE (the socket
    stays open for the next transfer); raises ``TransferError``.

    ``schedule`` (:func:`check_schedule`): the payload is released step by step, never more than
    ``bytes`` of it before ``time`` (``time.time()`` stamps): layer-wise KV streaming, each layer's
    bytes written once that layer is computed. ``stop`` aborts a wait for the next step."""
    view = payload if payload is not None else memoryview(_PATTERN)
    header = encode_header(MSG_DATA, transfer_id, request_id, nbytes, src_gpu, dst_gpu,
                           FLAG_ACK_REQ | FLAG_SYNTHETIC)
    sent = 0
    sock.settimeout(io_timeout)
    t_start = time.time()
    try:
        sock.sendall(header)
        chunk = len(view)
        for t_ready, upto in schedule or [(t_start, nbytes)]:
            wait = t_ready - time.time()
            if wait > 0 and (stop.wait(wait) if stop is not None else time.sleep(wait)):
                raise TransferError(f"stopped after {sent} of {nbytes} bytes (the agent is shutting down)", sent)
            while sent < upto:
                n = min(chunk, upto - sent)
                sock.sendall(view[:n])
                sent += n
        t_local_end = time.time()
        reply, _ = _recv_exact(sock, HEADER_LEN)
    except OSError as exc:
        raise TransferError(f"sending to {dst_ip}:{dst_port} failed after {sent} bytes: "
                            f"{exc}", sent) from exc
    except TransferError as exc:
        if sent < nbytes:  # stopped while waiting for a layer
            raise
        raise TransferError(f"no DONE from {dst_ip}:{dst_port}: {exc}", sent) from exc
    t_end = time.time()
    try:
        done = decode_header(reply)
    except FramingError as exc:
        raise TransferError(f"bad DONE from {dst_ip}:{dst_port}: {exc}", sent) from exc
    if done.msg_type != MSG_DONE or done.transfer_id != transfer_id or done.total != nbytes:
        raise TransferError(f"receiver acknowledged {done}, expected DONE for transfer "
                            f"{transfer_id} with {nbytes} bytes", sent)
    return TransferResult(transfer_id, request_id, nbytes, t_start, t_end, "send",
                          f"{dst_ip}:{dst_port}", src_gpu, dst_gpu,
                          t_start if t_connect is None else t_connect, t_local_end)


def send_transfer(dst_ip: str, dst_port: int, transfer_id: int, request_id: int, nbytes: int,
                  src_gpu: int, dst_gpu: int, *, connect_timeout: float = 10.0,
                  io_timeout: float = 120.0, sndbuf: int = 0,
                  payload: memoryview | None = None,
                  register: "set[socket.socket] | None" = None) -> TransferResult:
    """Connect, send one transfer, wait for the receiver's DONE, close; raises ``TransferError``.

    ``sndbuf`` > 0 sets SO_SNDBUF (which disables the kernel's send-buffer autotuning);
    ``register`` is a set the open socket is added to while the transfer runs, so another
    thread can close it to abort."""
    t_connect = time.time()
    sock = connect(dst_ip, dst_port, connect_timeout=connect_timeout, sndbuf=sndbuf)
    if register is not None:
        register.add(sock)
    try:
        return send_on(sock, dst_ip, dst_port, transfer_id, request_id, nbytes, src_gpu, dst_gpu,
                       io_timeout=io_timeout, payload=payload, t_connect=t_connect)
    finally:
        if register is not None:
            register.discard(sock)
        sock.close()


def receive_transfer(conn: socket.socket, *, my_gpu: int | None = None,
                     io_timeout: float | None = 120.0, buf: bytearray | None = None,
                     eof_ok: bool = False) -> TransferResult | None:
    """Read one transfer from an accepted connection, answer DONE; raises ``TransferError``.

    ``my_gpu`` (when given) must match the header's ``dst_gpu``: a mismatch means the
    orchestrator addressed the wrong host, and the stream is refused. With ``eof_ok`` a
    connection closed cleanly before the next header returns None (persistent connections)."""
    peer = _peer(conn)
    conn.settimeout(None if eof_ok else io_timeout)  # an idle persistent connection may wait
    try:
        if eof_ok:
            first = conn.recv(1)
            if not first:
                return None
            t_start = time.time()
            conn.settimeout(io_timeout)
            rest, _ = _recv_exact(conn, HEADER_LEN - 1)
            raw = first + rest
        else:
            raw, t_start = _recv_exact(conn, HEADER_LEN)
        hdr = decode_header(raw)
    except (OSError, FramingError) as exc:
        raise TransferError(f"bad or missing header from {peer}: {exc}") from exc
    if hdr.msg_type != MSG_DATA:
        raise TransferError(f"expected DATA from {peer}, got message type {hdr.msg_type}")
    if my_gpu is not None and hdr.dst_gpu != my_gpu:
        raise TransferError(f"misdelivered: transfer {hdr.transfer_id} from {peer} is for GPU "
                            f"{hdr.dst_gpu}, this agent is GPU {my_gpu}", 0, hdr.transfer_id,
                            hdr.request_id)
    view = memoryview(buf if buf is not None else bytearray(CHUNK))
    got = 0
    t_end = t_start
    try:
        while got < hdr.total:
            n = conn.recv_into(view, min(len(view), hdr.total - got))
            if n == 0:
                raise TransferError(f"transfer {hdr.transfer_id} from {peer} closed after "
                                    f"{got} of {hdr.total} bytes", got, hdr.transfer_id,
                                    hdr.request_id)
            got += n
        t_end = time.time()
        if hdr.flags & FLAG_ACK_REQ:
            conn.sendall(encode_header(MSG_DONE, hdr.transfer_id, hdr.request_id, got,
                                       hdr.src_gpu, hdr.dst_gpu))
    except OSError as exc:
        raise TransferError(f"transfer {hdr.transfer_id} from {peer} failed after {got} "
                            f"bytes: {exc}", got, hdr.transfer_id, hdr.request_id) from exc
    assert t_start is not None  # _recv_exact read at least one byte
    return TransferResult(hdr.transfer_id, hdr.request_id, got, t_start, t_end, "recv",
                          peer, hdr.src_gpu, hdr.dst_gpu)


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
        self._payload = memoryview(_PATTERN)
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
            self.client = AgentClient(control, {"name": name, "gpu": gpu, "pid": os.getpid(),
                                                "listen_ip": self.listen_ip,
                                                "listen_port": self.port},
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

    def _emit(self, msg: Message) -> None:
        if self._stop.is_set() and msg.get("ev") == "error":
            return  # aborted by our own shutdown: nobody is listening for it
        try:
            self.client.emit(msg)
        except ControlError:
            self.request_stop()

    # ------------------------------------------------------------------ work
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._open.add(conn)
            self._spawn(self._receive, conn)

    def _receive(self, conn: socket.socket) -> None:
        """Serve transfers on one (persistent) connection until the peer closes it."""
        try:
            while not self._stop.is_set():
                res = receive_transfer(conn, my_gpu=self.gpu, io_timeout=self.io_timeout, eof_ok=True)
                if res is None:
                    return
                self._emit(res.event())  # before the compute hears of it: received < first_token
                self.compute.kv_received(res.transfer_id, res.t_end)
        except TransferError as exc:
            self._emit({"ev": "error", "role": "recv", "transfer_id": exc.transfer_id,
                        "request_id": exc.request_id, "reason": str(exc), "bytes": exc.nbytes,
                        "peer": _peer(conn)})
        finally:
            self._open.discard(conn)
            conn.close()

    def _take(self, peer: tuple[str, int]) -> tuple[socket.socket, float | None]:
        """An idle pooled connection to ``peer`` (None as connect time) or a new one."""
        with self._lock:
            idle = self._pool.get(peer)
            if idle:
                return idle.pop(), None
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

    def _warm(self, peers: list) -> None:
        """Open one persistent connection to each peer ahead of time (like the long-lived
        connections or queue pairs of a KV transfer engine), so no TCP handshake - and no SYN
        lost behind a congested queue, a one-second timeout - lies on a transfer's path."""
        for ip, port in peers:
            try:
                sock, _ = self._take((str(ip), int(port)))
                self._give_back((str(ip), int(port)), sock)
            except TransferError as exc:
                self._emit({"ev": "error", "transfer_id": None, "reason": f"warm: {exc}"})
                return
        self._emit({"ev": "warmed", "peers": len(peers)})

    def _send(self, cmd: Message) -> None:
        peer = (cmd["dst_ip"], cmd["dst_port"])
        try:
            schedule = cmd.get("layer_schedule")
            steps = check_schedule(schedule, cmd["bytes"]) if schedule is not None else None
            for attempt in (1, 2):
                sock, t_connect = self._take(peer)
                try:
                    res = send_on(sock, peer[0], peer[1], cmd["transfer_id"], cmd["request_id"],
                                  cmd["bytes"], self.gpu, cmd["dst_gpu"], io_timeout=self.io_timeout,
                                  payload=self._payload, t_connect=t_connect, schedule=steps,
                                  stop=self._stop)
                except TransferError as exc:
                    self._drop(sock)
                    # a pooled connection the peer closed meanwhile: retry once on a new one
                    if attempt == 1 and t_connect is None and exc.nbytes == 0:
                        continue
                    raise
                self._give_back(peer, sock)
                self._emit(res.event())
                return
        except (TransferError, FramingError, OSError) as exc:
            self._emit({"ev": "error", "role": "send", "transfer_id": cmd["transfer_id"],
                        "request_id": cmd["request_id"], "reason": str(exc),
                        "bytes": getattr(exc, "nbytes", 0),
                        "peer": f"{cmd['dst_ip']}:{cmd['dst_port']}"})

    def _refuse(self, msg: Message, exc: ProtocolError) -> None:
        tid, rid = msg.get("transfer_id"), msg.get("request_id")
        ev: Message = {"ev": "error", "transfer_id": tid if isinstance(tid, int) else None,
                       "reason": str(exc)}
        if isinstance(rid, int):
            ev["request_id"] = rid
        self._emit(ev)

    def _compute_op(self, op: str, msg: Message) -> None:
        """``reset``, ``prefill`` or ``expect``: validated, then handed to the compute engine."""
        try:
            if op == "reset":
                validate_reset(msg)
                self._emit(self.compute.reset(msg["config"], msg["role"], float(msg["time_scale"])))
            elif op == "prefill":
                validate_prefill(msg)
                self.compute.prefill(msg)
            else:
                validate_expect(msg)
                self.compute.expect(msg)
        except ProtocolError as exc:
            self._refuse(msg, exc)

    def handle(self, msg: Message) -> bool:
        """Act on one control message; False means stop."""
        op = msg.get("op")
        if op == "send":
            try:
                validate_send(msg)
            except ProtocolError as exc:
                self._refuse(msg, exc)
                return True
            self._spawn(self._send, msg)
        elif op in ("reset", "prefill", "expect"):
            self._compute_op(op, msg)
        elif op == "warm":
            peers = msg.get("peers")
            if not isinstance(peers, list) or not all(isinstance(p, list) and len(p) == 2 for p in peers):
                self._emit({"ev": "error", "transfer_id": None, "reason": "warm needs peers: [[ip, port], ...]"})
                return True
            self._spawn(self._warm, peers)
        elif op == "ping":
            self._emit({"ev": "pong", "seq": msg.get("seq"), "t": time.time(),
                        "active": len(self._threads)})
        elif op == "stop":
            return False
        else:
            self._emit({"ev": "error", "transfer_id": None, "reason": f"unknown op {op!r}"})
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


def bench(nbytes: int, sndbuf: int = 0, host: str = "127.0.0.1") -> dict[str, float]:
    """One in-process loopback transfer of ``nbytes``; returns throughput figures."""
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind((host, 0))
    lst.listen(1)
    port = lst.getsockname()[1]
    results: list[TransferResult] = []
    errors: list[Exception] = []

    def serve() -> None:
        conn, _ = lst.accept()
        try:
            results.append(receive_transfer(conn, my_gpu=1))
        except TransferError as exc:
            errors.append(exc)
        finally:
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        sent = send_transfer(host, port, 1, 1, nbytes, 0, 1, sndbuf=sndbuf)
    finally:
        t.join(timeout=30)
        lst.close()
    if errors:
        raise errors[0]
    recv = results[0]
    dur = sent.t_end - sent.t_start
    return {"bytes": nbytes, "seconds": dur, "gbit_s": nbytes * 8 / dur / 1e9,
            "recv_seconds": recv.t_end - recv.t_start}


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
