"""Out-of-band control channel between the orchestrator and the host agents.

Transport: newline-delimited JSON (UTF-8, one object per line, at most ``MAX_LINE`` bytes) over a
Unix stream socket. Unix sockets live in the filesystem, so agents inside Mininet hosts' network
namespaces reach a socket in the run folder that the orchestrator created in the root namespace.

Direction: the **orchestrator listens** (``ControlServer(path)``) and every **agent connects**
(``AgentClient``). An agent's first line must be ``hello``; the server files the connection under
the agent's name. An agent exits when its control connection closes, so a dead orchestrator
leaves no agents behind.

Orchestrator -> agent::

    {"op": "send", "transfer_id": int, "request_id": int, "dst_ip": str, "dst_port": int,
     "bytes": int, "dst_gpu": int}
    {"op": "warm", "peers": [[ip, port], ...]} -> agent opens one persistent connection to each
                                          peer and answers {"ev": "warmed", "peers": n}; sends
                                          reuse idle connections (no handshake on the path)
    {"op": "ping", "seq": any}            -> agent answers {"ev": "pong", "seq": ..., "t": time}
    {"op": "stop"}                        -> agent finishes cleanly and exits

Compute (the agent models its instance with ``scheduler.instance.InstanceModel``, the simulator's
timing; virtual seconds = (time.time() - t_reset) / time_scale, reported as wall stamps)::

    {"op": "reset", "config": ExperimentConfig.to_dict(), "role": "prefill" | "decode",
     "time_scale": float > 0}             -> fresh instance, clock restarted; answers
                                             {"ev": "reset", "role": ..., "t_reset": time}
    {"op": "prefill", "request_id": int, "transfer_id": int, "input_tokens": int,
     "cached_tokens": int, "bytes": int, "dst_ip": str, "dst_port": int, "dst_gpu": int}
                                          -> (prefill role) queued on the instance's FIFO; at its
                                             end {"ev": "prefilled", "request_id", "transfer_id",
                                             "t_start", "t_end"}, then the KV bytes are streamed
                                             to the decode agent exactly as by "send" (with the
                                             config's timing.kv_streaming = "layer-wise" the
                                             stream starts at the first layer's end and sends
                                             each layer's bytes as it completes, hosts.compute)
    {"op": "expect", "request_id": int, "transfer_id": int, "input_tokens": int,
     "output_tokens": int}                -> (decode role) once transfer ``transfer_id`` has been
                                             received (before or after this message) the request
                                             joins the decode batch or waits FIFO;
                                             {"ev": "first_token", "request_id", "transfer_id",
                                             "t_join", "t_first"} and {"ev": "finished",
                                             "request_id", "transfer_id", "t_finish"} follow when
                                             those times come

Agent -> orchestrator::

    {"ev": "hello", "name": str, "gpu": int, "pid": int, "listen_ip": str, "listen_port": int}
    {"ev": "sent" | "received", "transfer_id", "request_id", "bytes", "t_start", "t_end",
     "role": "send" | "recv", "peer": "ip:port", "src_gpu", "dst_gpu", ...}
    {"ev": "reset" | "prefilled" | "first_token" | "finished", ...} (above)
    {"ev": "error", "transfer_id": int | null, "reason": str, ...}

An invalid command is answered with an ``error`` whose reason starts with the op's name
(``"prefill: field 'bytes' must be int, got 'lots'"``) and carries its ``transfer_id`` when it
has one.

The server adds ``"agent": <name>`` to every event it queues, and queues
``{"ev": "disconnected", "agent": name}`` when an agent's connection closes.
"""
from __future__ import annotations

import json
import os
import queue
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

MAX_LINE = 1 << 16
SEND_FIELDS: dict[str, type] = {
    "transfer_id": int, "request_id": int, "dst_ip": str, "dst_port": int, "bytes": int,
    "dst_gpu": int,
}
PREFILL_FIELDS: dict[str, type] = {**SEND_FIELDS, "input_tokens": int, "cached_tokens": int}
EXPECT_FIELDS: dict[str, type] = {
    "transfer_id": int, "request_id": int, "input_tokens": int, "output_tokens": int,
}
ROLES = ("prefill", "decode")  # = scheduler.instance.ROLES; not imported, so agents start without numpy
Message = dict[str, Any]


class ControlError(RuntimeError):
    """The control channel failed (not connected, closed, unknown agent)."""


class ProtocolError(ControlError):
    """A control line is not a valid message."""


class ControlTimeout(ControlError, TimeoutError):
    """Waiting for agents or events timed out; the message says what is missing."""


def encode_line(msg: Message) -> bytes:
    line = json.dumps(msg, separators=(",", ":")).encode() + b"\n"
    if len(line) > MAX_LINE:
        raise ProtocolError(f"control message of {len(line)} bytes exceeds {MAX_LINE}")
    return line


def decode_line(line: bytes) -> Message:
    try:
        msg = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"expected a JSON object, got {type(msg).__name__}")
    return msg


def _check_fields(op: str, msg: Message, fields: dict[str, type]) -> None:
    """Every field present with its type (bools are not ints) and every int >= 0."""
    for key, typ in fields.items():
        value = msg.get(key)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise ProtocolError(f"{op}: field {key!r} must be {typ.__name__}, got {value!r}")
    negative = [k for k, typ in fields.items() if typ is int and msg[k] < 0]
    if negative:
        raise ProtocolError(f"{op}: {', '.join(negative)} must be >= 0")


def _check_port(op: str, msg: Message) -> None:
    if not 0 < msg["dst_port"] < 65536:
        raise ProtocolError(f"{op}: dst_port {msg['dst_port']} out of range")


def validate_send(msg: Message) -> None:
    """Raise ``ProtocolError`` unless ``msg`` is a well-formed ``send`` command."""
    _check_fields("send", msg, SEND_FIELDS)
    _check_port("send", msg)


def validate_reset(msg: Message) -> None:
    """Raise ``ProtocolError`` unless ``msg`` is a well-formed ``reset`` command (the config's
    contents are checked when it is built, by ``scheduler.config.config_from_dict``)."""
    if not isinstance(msg.get("config"), dict):
        raise ProtocolError(f"reset: field 'config' must be an object (ExperimentConfig.to_dict()), "
                            f"got {msg.get('config')!r}")
    if msg.get("role") not in ROLES:
        raise ProtocolError(f"reset: field 'role' must be one of {', '.join(ROLES)}, got {msg.get('role')!r}")
    ts = msg.get("time_scale")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not 0 < ts < float("inf"):
        raise ProtocolError(f"reset: field 'time_scale' must be a number > 0, got {ts!r}")


def validate_prefill(msg: Message) -> None:
    """Raise ``ProtocolError`` unless ``msg`` is a well-formed ``prefill`` command."""
    _check_fields("prefill", msg, PREFILL_FIELDS)
    _check_port("prefill", msg)
    if msg["cached_tokens"] > msg["input_tokens"]:
        raise ProtocolError(f"prefill: cached_tokens {msg['cached_tokens']} exceed input_tokens "
                            f"{msg['input_tokens']}")


def validate_expect(msg: Message) -> None:
    """Raise ``ProtocolError`` unless ``msg`` is a well-formed ``expect`` command."""
    _check_fields("expect", msg, EXPECT_FIELDS)


def read_lines(sock: socket.socket) -> Iterator[bytes]:
    """Yield complete lines (without the newline) until EOF or a socket error."""
    buf = b""
    while True:
        try:
            chunk = sock.recv(MAX_LINE)
        except OSError:
            return
        if not chunk:
            return
        buf += chunk
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = buf[:nl], buf[nl + 1:]
            if line.strip():
                yield line
        if len(buf) > MAX_LINE:
            raise ProtocolError(f"control line longer than {MAX_LINE} bytes")


class _Conn:
    """One agent connection on the server side: a socket and a lock for writers."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.name: str | None = None
        self.hello: Message | None = None

    def send(self, msg: Message) -> None:
        data = encode_line(msg)
        with self.lock:
            self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class ControlServer:
    """Orchestrator side: accepts agents on Unix socket ``path``.

    Events (dicts, ``"agent"`` added) go to ``on_event`` when given, and always to ``events``
    (a ``queue.Queue``) unless ``queue_events`` is False. Completed transfers are also indexed
    for ``wait_transfers``. One accept thread plus one reader thread per agent; ``on_event``
    runs on a reader thread and must not raise or block for long."""

    def __init__(self, path: str | Path, on_event: Callable[[Message], None] | None = None,
                 queue_events: bool = True, backlog: int = 256) -> None:
        self.path = Path(path)
        self.on_event = on_event
        self.queue_events = queue_events
        self.events: queue.Queue[Message] = queue.Queue()
        self._conns: dict[str, _Conn] = {}
        self._all: set[_Conn] = set()
        self._cond = threading.Condition()
        self._transfers: dict[int, dict[str, Message]] = {}
        self._closed = False
        self._remove_stale_socket()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            self._sock.listen(backlog)
        except OSError:
            self._sock.close()
            raise
        self._sock.settimeout(0.2)
        self._accept_thread = threading.Thread(target=self._accept_loop, name="ctl-accept",
                                               daemon=True)
        self._accept_thread.start()

    def _remove_stale_socket(self) -> None:
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{self.path} exists and is not a socket; refusing to replace it")
        self.path.unlink()

    # ------------------------------------------------------------------ threads
    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            conn = _Conn(sock)
            with self._cond:
                self._all.add(conn)
            threading.Thread(target=self._read_loop, args=(conn,), name="ctl-read",
                             daemon=True).start()

    def _read_loop(self, conn: _Conn) -> None:
        try:
            for line in read_lines(conn.sock):
                try:
                    msg = decode_line(line)
                except ProtocolError as exc:
                    self._emit({"ev": "error", "transfer_id": None, "agent": conn.name,
                                "reason": f"bad control line from agent: {exc}"})
                    continue
                if conn.name is None:
                    if not self._register(conn, msg):
                        return
                    continue
                msg["agent"] = conn.name
                self._emit(msg)
        except ProtocolError as exc:
            self._emit({"ev": "error", "transfer_id": None, "agent": conn.name,
                        "reason": str(exc)})
        finally:
            with self._cond:
                self._all.discard(conn)
                if conn.name is not None and self._conns.get(conn.name) is conn:
                    del self._conns[conn.name]
                self._cond.notify_all()
            conn.close()
            if conn.name is not None and not self._closed:
                self._emit({"ev": "disconnected", "agent": conn.name})

    def _register(self, conn: _Conn, msg: Message) -> bool:
        name = msg.get("name")
        if msg.get("ev") != "hello" or not isinstance(name, str) or not name:
            self._emit({"ev": "error", "transfer_id": None, "agent": None,
                        "reason": f"first line from an agent must be hello with a name: {msg!r}"})
            return False
        with self._cond:
            if name in self._conns:
                dup = True
            else:
                dup = False
                conn.name, conn.hello = name, msg
                self._conns[name] = conn
                self._cond.notify_all()
        if dup:
            self._emit({"ev": "error", "transfer_id": None, "agent": name,
                        "reason": f"duplicate agent name {name!r}; second connection closed"})
            return False
        msg["agent"] = name
        self._emit(msg)
        return True

    def _emit(self, msg: Message) -> None:
        tid = msg.get("transfer_id")
        if msg.get("ev") in ("sent", "received", "error") and isinstance(tid, int):
            with self._cond:
                evs = self._transfers.setdefault(tid, {})
                if msg["ev"] == "error":
                    evs.setdefault("error", msg)  # the first error explains the failure
                else:
                    evs[msg["ev"]] = msg
                self._cond.notify_all()
        if self.queue_events:
            self.events.put(msg)
        if self.on_event is not None:
            self.on_event(msg)

    # ------------------------------------------------------------------ API
    def agents(self) -> dict[str, Message]:
        """Connected agents: name -> hello message."""
        with self._cond:
            return {n: dict(c.hello or {}) for n, c in self._conns.items()}

    def send(self, name: str, msg: Message) -> None:
        """Send one command to agent ``name``; ``ControlError`` if it is not connected."""
        with self._cond:
            conn = self._conns.get(name)
        if conn is None:
            raise ControlError(f"agent {name!r} is not connected")
        try:
            conn.send(msg)
        except OSError as exc:
            raise ControlError(f"sending to agent {name!r} failed: {exc}") from exc

    def wait_hello(self, names: Iterable[str], timeout: float) -> dict[str, Message]:
        """Block until every agent in ``names`` has said hello; returns their hellos."""
        wanted = set(names)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                missing = wanted - self._conns.keys()
                if not missing:
                    return {n: dict(self._conns[n].hello or {}) for n in wanted}
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ControlTimeout(
                        f"{len(missing)} agent(s) did not connect within {timeout:g} s: "
                        f"{', '.join(sorted(missing)[:10])}")
                self._cond.wait(left)

    def wait_disconnect(self, name: str, timeout: float) -> None:
        """Block until agent ``name`` is no longer connected."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while name in self._conns:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ControlTimeout(f"agent {name!r} still connected after {timeout:g} s")
                self._cond.wait(left)

    def wait_transfers(self, transfer_ids: Iterable[int], timeout: float
                       ) -> dict[int, dict[str, Message]]:
        """Wait until each transfer has both ``sent`` and ``received`` events, or an ``error``.

        Returns ``{transfer_id: {"sent": ev, "received": ev}}`` (or ``{"error": ev, ...}``) and
        forgets the returned transfers. Raises ``ControlTimeout`` naming unfinished ids."""
        ids = list(transfer_ids)
        deadline = time.monotonic() + timeout

        def done(tid: int) -> bool:
            evs = self._transfers.get(tid, {})
            return "error" in evs or ("sent" in evs and "received" in evs)

        with self._cond:
            while True:
                pending = [t for t in ids if not done(t)]
                if not pending:
                    return {t: self._transfers.pop(t) for t in ids}
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ControlTimeout(f"{len(pending)} transfer(s) unfinished after "
                                         f"{timeout:g} s: {pending[:10]}")
                self._cond.wait(left)

    def broadcast(self, msg: Message) -> list[str]:
        """Send ``msg`` to every connected agent; returns the names it reached."""
        reached = []
        for name in list(self.agents()):
            try:
                self.send(name, msg)
                reached.append(name)
            except ControlError:
                pass
        return reached

    def close(self) -> None:
        """Stop accepting, close every agent connection (agents then exit), remove the socket."""
        if self._closed:
            return
        self._closed = True
        self._sock.close()
        self._accept_thread.join(timeout=2)
        with self._cond:
            conns = list(self._all)
        for conn in conns:
            conn.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AgentClient:
    """Agent side: connects to the orchestrator's socket and says hello.

    ``emit`` is thread-safe; ``messages`` yields decoded commands until the connection closes
    (bad lines are answered with an ``error`` event and skipped)."""

    def __init__(self, path: str | Path, hello: Message, connect_timeout: float = 10.0) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        deadline = time.monotonic() + connect_timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if time.monotonic() >= deadline:
                    raise ControlError(f"cannot connect to control socket {self.path}: {exc}"
                                       ) from exc
                time.sleep(0.05)
        self.sock = sock
        self.emit({"ev": "hello", **hello})

    def emit(self, msg: Message) -> None:
        data = encode_line(msg)
        try:
            with self._lock:
                self.sock.sendall(data)
        except OSError as exc:
            raise ControlError(f"control socket write failed: {exc}") from exc

    def messages(self) -> Iterator[Message]:
        try:
            for line in read_lines(self.sock):
                try:
                    yield decode_line(line)
                except ProtocolError as exc:
                    self.emit({"ev": "error", "transfer_id": None, "reason": str(exc)})
        except ProtocolError as exc:
            self.emit({"ev": "error", "transfer_id": None, "reason": str(exc)})

    def shutdown(self) -> None:
        """Unblock ``messages`` (safe from a signal handler or another thread)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.shutdown()
        self.sock.close()
