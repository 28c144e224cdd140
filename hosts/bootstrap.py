"""The P/D bootstrap rendezvous: a request's decode worker tells its prefill worker where to push
the request's KV bytes, the two meeting on the request's ``bootstrap_room``.

A P/D router (smg, ``netkv router``) adds ``bootstrap_host``, ``bootstrap_port`` (the prefill
worker's) and a random ``bootstrap_room`` to the body it sends to both workers, as SGLang's
disaggregation does. The prefill worker listens on its bootstrap port (:class:`BootstrapServer`);
the decode worker connects to it and sends one JSON line (:func:`register_room`)::

    {"room": <u64>, "kv_host": "<ip>", "kv_port": <port>, "gpu": <index>}

answered by ``ok``. When the prefill worker's compute ends, its KV stream waits for the room's
registration (:meth:`RoomRegistry.wait`) and goes to that address over TCP (``hosts.kvstream``).
"""
from __future__ import annotations

import json
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass

from hosts.tcpflow import accept_loop

MAX_ROOMS = 65536
"""Registrations kept (oldest dropped first): a registration is claimed once, within seconds."""
LINE_LIMIT = 4096
"""Longest registration line accepted, bytes."""


class BootstrapError(RuntimeError):
    """A registration could not be delivered or was refused."""


@dataclass(frozen=True)
class KvPeer:
    """Where a room's KV bytes go: the decode worker's KV listener and GPU index."""

    host: str
    port: int
    gpu: int


class RoomRegistry:
    """Room -> :class:`KvPeer`, filled by registrations, waited on by KV streams."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rooms: OrderedDict[int, KvPeer] = OrderedDict()
        self._closed = False

    def put(self, room: int, peer: KvPeer) -> None:
        with self._cond:
            self._rooms[room] = peer
            while len(self._rooms) > MAX_ROOMS:
                self._rooms.popitem(last=False)
            self._cond.notify_all()

    def wait(self, room: int, timeout: float) -> KvPeer | None:
        """The room's peer (claimed: removed), waiting up to ``timeout`` s; None on timeout or close."""
        with self._cond:
            self._cond.wait_for(lambda: room in self._rooms or self._closed, timeout)
            return self._rooms.pop(room, None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _parse(line: bytes) -> tuple[int, KvPeer]:
    obj = json.loads(line)
    room, host, port, gpu = obj["room"], obj["kv_host"], obj["kv_port"], obj.get("gpu", 0)
    if not (isinstance(room, int) and isinstance(host, str) and isinstance(port, int) and isinstance(gpu, int)):
        raise ValueError(f"bad registration {obj!r}")
    return room, KvPeer(host, port, gpu)


class BootstrapServer:
    """The prefill worker's bootstrap listener at ``(host, port)`` (0 = ephemeral: see ``port``)."""

    def __init__(self, host: str, port: int, registry: RoomRegistry) -> None:
        self.registry = registry
        self._stop = threading.Event()
        self._sock = socket.create_server((host, port), backlog=512)
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="bootstrap", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        accept_loop(self._sock, self._stop,
                    lambda conn: threading.Thread(target=self._serve, args=(conn,), daemon=True).start())

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10.0)
            try:
                f = conn.makefile("rb")
                line = f.readline(LINE_LIMIT)
                room, peer = _parse(line)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                try:
                    conn.sendall(f"error {exc}\n".encode())
                except OSError:
                    pass
                return
            self.registry.put(room, peer)
            try:
                conn.sendall(b"ok\n")
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self.registry.close()
        self._thread.join(timeout=2)  # then close: a socket in another thread's poll stays listening
        self._sock.close()


def register_room(host: str, port: int, room: int, peer: KvPeer, timeout: float = 10.0) -> None:
    """Tell the prefill worker at ``host:port`` to push room ``room``'s KV to ``peer``; raises
    ``BootstrapError``."""
    line = json.dumps({"room": room, "kv_host": peer.host, "kv_port": peer.port, "gpu": peer.gpu}) + "\n"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(line.encode())
            reply = sock.makefile("rb").readline(LINE_LIMIT)
    except OSError as exc:
        raise BootstrapError(f"bootstrap {host}:{port} for room {room}: {exc}") from exc
    if reply.strip() != b"ok":
        raise BootstrapError(f"bootstrap {host}:{port} refused room {room}: {reply.decode(errors='replace').strip()}")
