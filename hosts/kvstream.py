"""KV-cache streams between host agents: one transfer on a TCP connection, either direction.

A transfer is one DATA header (``hosts.framing``) then ``total`` payload bytes from one
preallocated pattern buffer (``sendall`` of memoryview slices); the receiver counts them with
``recv_into`` on a large buffer and, when asked (``FLAG_ACK_REQ``), answers with a DONE header,
so the sender learns when the last byte reached the receiving application. A connection may carry
any number of transfers one after another (the agents pool them, ``hosts.agent``).

Times are ``time.time()``. Receiver: ``t_start`` = first header byte arrived, ``t_end`` = last
payload byte read. Sender: ``t_start`` = just before the first header byte is written (after
connect; ``t_connect`` is the moment before connect), ``t_end`` = DONE received,
``t_local_end`` = last byte handed to the local kernel. Results are the ``Sent``/``Received``
reports of ``hosts.messages``.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Any

from hosts.framing import (
    FLAG_ACK_REQ,
    FLAG_SYNTHETIC,
    HEADER_LEN,
    MSG_DATA,
    MSG_DONE,
    FramingError,
    decode_header,
    encode_header,
)
from hosts.messages import Received, Sent

CHUNK = 1 << 20
"""Bytes per ``sendall``/``recv_into`` call; the per-call socket timeout applies to one chunk."""
PATTERN = bytes(range(256)) * (CHUNK // 256)
"""The synthetic payload: one chunk of a repeating byte ramp (shared, never written)."""


class TransferError(RuntimeError):
    """A transfer failed; ``nbytes`` payload bytes had been moved."""

    def __init__(self, reason: str, nbytes: int = 0, transfer_id: int | None = None,
                 request_id: int | None = None) -> None:
        super().__init__(reason)
        self.nbytes = nbytes
        self.transfer_id, self.request_id = transfer_id, request_id


def _recv_exact(sock: socket.socket, n: int) -> tuple[bytes, float]:
    """Read exactly ``n`` (> 0) bytes; returns them and the time the first byte arrived."""
    buf = bytearray()
    t_first = 0.0
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise TransferError(f"connection closed after {len(buf)} of {n} header bytes")
        if not buf:
            t_first = time.time()
        buf += chunk
    return bytes(buf), t_first


def peer_name(sock: socket.socket) -> str:
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


def check_schedule(schedule: Any, nbytes: int) -> list[tuple[float, int]]:
    """A layer schedule (``[[wall time, bytes so far], ...]``, see ``hosts.compute``) as a list
    of (time, bytes): times non-decreasing, bytes non-decreasing within 0..``nbytes``, the last
    entry ``nbytes``; raises ``TransferError`` otherwise. ``schedule`` is whatever the command's JSON
    held, hence ``Any``: anything that is not such a list is refused here."""
    try:
        steps = [(float(t), int(b)) for t, b in schedule]
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
            stop: threading.Event | None = None) -> Sent:
    """Send one transfer on a connected socket and wait for the receiver's DONE (the socket
    stays open for the next transfer); raises ``TransferError``.

    ``schedule`` (:func:`check_schedule`): the payload is released step by step, never more than
    ``bytes`` of it before ``time`` (``time.time()`` stamps): layer-wise KV streaming, each layer's
    bytes written once that layer is computed. ``stop`` aborts a wait for the next step."""
    view = payload if payload is not None else memoryview(PATTERN)
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
            if wait > 0:
                if stop is None:
                    time.sleep(wait)
                elif stop.wait(wait):
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
    return Sent(transfer_id, request_id, nbytes, t_start, t_end, "send", f"{dst_ip}:{dst_port}",
                src_gpu, dst_gpu, t_start if t_connect is None else t_connect, t_local_end)


def send_transfer(dst_ip: str, dst_port: int, transfer_id: int, request_id: int, nbytes: int,
                  src_gpu: int, dst_gpu: int, *, connect_timeout: float = 10.0,
                  io_timeout: float = 120.0, sndbuf: int = 0,
                  payload: memoryview | None = None,
                  register: set[socket.socket] | None = None) -> Sent:
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
                     eof_ok: bool = False) -> Received | None:
    """Read one transfer from an accepted connection, answer DONE; raises ``TransferError``.

    ``my_gpu`` (when given) must match the header's ``dst_gpu``: a mismatch means the
    orchestrator addressed the wrong host, and the stream is refused. With ``eof_ok`` a
    connection closed cleanly before the next header returns None (persistent connections)."""
    peer = peer_name(conn)
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
    return Received(hdr.transfer_id, hdr.request_id, got, t_start, t_end, "recv", peer,
                    hdr.src_gpu, hdr.dst_gpu)


def bench(nbytes: int, sndbuf: int = 0, host: str = "127.0.0.1") -> dict[str, float]:
    """One in-process loopback transfer of ``nbytes``; returns throughput figures."""
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind((host, 0))
    lst.listen(1)
    port = lst.getsockname()[1]
    results: list[Received | None] = []
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
    assert recv is not None  # eof_ok is off: a transfer or an error
    dur = sent.t_end - sent.t_start
    return {"bytes": nbytes, "seconds": dur, "gbit_s": nbytes * 8 / dur / 1e9,
            "recv_seconds": recv.t_end - recv.t_start}
