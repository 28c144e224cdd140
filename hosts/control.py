"""Out-of-band control channel between the orchestrator and the host agents: the transport.

Newline-delimited JSON (one message per line, ``hosts.codec``; every message and its fields:
``hosts.messages``) over a Unix stream socket. Unix sockets live in the filesystem, so agents
inside Mininet hosts' network namespaces reach a socket in the run folder that the orchestrator
created in the root namespace.

Direction: the **orchestrator listens** (``ControlServer(path)``) and every **agent connects**
(``AgentClient``). An agent's first line must be a ``Hello``; the server files the connection
under the agent's name. An agent exits when its control connection closes, so a dead orchestrator
leaves no agents behind.

The server sets ``agent`` (the sender's name) on every report it queues, and queues a
``Disconnected`` when an agent's connection closes. A line that is not a valid message is
answered with an ``Error`` whose reason starts with the message's name
(``"prefill: field 'bytes' must be int, got 'lots'"``) and which carries its ``transfer_id`` when
it has one: by the agent for a command, by the server (as the agent's report) for a report.
"""
from __future__ import annotations

import dataclasses
import os
import queue
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from hosts.codec import MAX_LINE, decode_line, encode_line
from hosts.messages import (
    Command,
    ControlError,
    Disconnected,
    Error,
    Hello,
    ProtocolError,
    Received,
    Report,
    Sent,
)

__all__ = ["AgentClient", "ControlError", "ControlServer", "ControlTimeout", "ProtocolError"]
class ControlTimeout(ControlError, TimeoutError):  # noqa: N818 -- public name used by scheduler/ and tests
    """Waiting for agents or events timed out; the message says what is missing."""


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
        self.hello: Hello | None = None

    def send(self, msg: Command | dict[str, Any]) -> None:
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

    Reports (``agent`` set) go to ``on_event`` when given, and always to ``events``
    (a ``queue.Queue``) unless ``queue_events`` is False. Completed transfers are also indexed
    for ``wait_transfers``. One accept thread plus one reader thread per agent; ``on_event``
    runs on a reader thread and must not raise or block for long."""

    def __init__(self, path: str | Path, on_event: Callable[[Report], None] | None = None,
                 queue_events: bool = True, backlog: int = 256) -> None:
        self.path = Path(path)
        self.on_event = on_event
        self.queue_events = queue_events
        self.events: queue.Queue[Report] = queue.Queue()
        self._conns: dict[str, _Conn] = {}
        self._all: set[_Conn] = set()
        self._cond = threading.Condition()
        self._transfers: dict[int, dict[str, Report]] = {}
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
                    msg = decode_line(line, Report)
                except ProtocolError as exc:
                    if conn.name is None:
                        self._emit(Error(None, f"first line from an agent must be hello with a name: {exc}"))
                        return
                    self._emit(Error(exc.transfer_id, f"bad control line from agent: {exc}",
                                     request_id=exc.request_id, agent=conn.name))
                    continue
                if conn.name is None:
                    if not self._register(conn, msg):
                        return
                    continue
                self._emit(dataclasses.replace(msg, agent=conn.name))
        except ProtocolError as exc:
            self._emit(Error(None, str(exc), agent=conn.name))
        finally:
            with self._cond:
                self._all.discard(conn)
                if conn.name is not None and self._conns.get(conn.name) is conn:
                    del self._conns[conn.name]
                self._cond.notify_all()
            conn.close()
            if conn.name is not None and not self._closed:
                self._emit(Disconnected(agent=conn.name))

    def _register(self, conn: _Conn, msg: Report) -> bool:
        if not isinstance(msg, Hello):
            self._emit(Error(None, f"first line from an agent must be hello with a name: {msg!r}"))
            return False
        name, msg = msg.name, dataclasses.replace(msg, agent=msg.name)
        with self._cond:
            if name in self._conns:
                dup = True
            else:
                dup = False
                conn.name, conn.hello = name, msg
                self._conns[name] = conn
                self._cond.notify_all()
        if dup:
            self._emit(Error(None, f"duplicate agent name {name!r}; second connection closed", agent=name))
            return False
        self._emit(msg)
        return True

    def _emit(self, msg: Report) -> None:
        if isinstance(msg, (Sent, Received, Error)) and msg.transfer_id is not None:
            with self._cond:
                evs = self._transfers.setdefault(msg.transfer_id, {})
                if isinstance(msg, Error):
                    evs.setdefault(msg.KIND, msg)  # the first error explains the failure
                else:
                    evs[msg.KIND] = msg
                self._cond.notify_all()
        if self.queue_events:
            self.events.put(msg)
        if self.on_event is not None:
            self.on_event(msg)

    # ------------------------------------------------------------------ API
    def agents(self) -> dict[str, Hello]:
        """Connected agents: name -> hello message."""
        with self._cond:
            return {n: c.hello for n, c in self._conns.items() if c.hello is not None}

    def send(self, name: str, msg: Command | dict[str, Any]) -> None:
        """Send one command to agent ``name``; ``ControlError`` if it is not connected. (A raw
        dict goes out as given: tests of the agents' refusals send malformed ones.)"""
        with self._cond:
            conn = self._conns.get(name)
        if conn is None:
            raise ControlError(f"agent {name!r} is not connected")
        try:
            conn.send(msg)
        except OSError as exc:
            raise ControlError(f"sending to agent {name!r} failed: {exc}") from exc

    def wait_hello(self, names: Iterable[str], timeout: float) -> dict[str, Hello]:
        """Block until every agent in ``names`` has said hello; returns their hellos."""
        wanted = set(names)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                missing = wanted - self._conns.keys()
                if not missing:
                    return {n: self._conns[n].hello for n in wanted}  # type: ignore[misc]
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
                       ) -> dict[int, dict[str, Report]]:
        """Wait until each transfer has both ``Sent`` and ``Received`` reports, or an ``Error``.

        Returns ``{transfer_id: {"sent": Sent, "received": Received}}`` (or ``{"error": Error,
        ...}``: keys are the reports' ``KIND``) and
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
    (bad lines are answered with an ``Error`` naming the message and field, and skipped)."""

    def __init__(self, path: str | Path, hello: Hello, connect_timeout: float = 10.0) -> None:
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
        self.emit(hello)

    def emit(self, msg: Report) -> None:
        data = encode_line(msg)
        try:
            with self._lock:
                self.sock.sendall(data)
        except OSError as exc:
            raise ControlError(f"control socket write failed: {exc}") from exc

    def messages(self) -> Iterator[Command]:
        try:
            for line in read_lines(self.sock):
                try:
                    yield decode_line(line, Command)
                except ProtocolError as exc:
                    self.emit(Error(exc.transfer_id, str(exc), request_id=exc.request_id))
        except ProtocolError as exc:
            self.emit(Error(None, str(exc)))

    def shutdown(self) -> None:
        """Unblock ``messages`` (safe from a signal handler or another thread)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.shutdown()
        self.sock.close()
