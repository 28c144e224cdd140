"""An ASGI app served by uvicorn on its own thread and event loop, on a socket bound up front (so
port 0 gives an ephemeral port known before the server starts). Used to run workers and routers
in-process (tests, the loopback benches); a deployed worker runs ``python -m hosts.http_worker``.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

START_TIMEOUT_S = 10.0
"""Seconds to wait for a server to report itself started."""


class ServerThread:
    """``app`` served at ``host:port`` (``port`` 0: ephemeral; :attr:`port` is the bound one)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.create_server((host, port), backlog=1024)
        self.host, self.port = host, int(self.sock.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                        name=f"asgi:{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerThread:
        """Start serving; ``RuntimeError`` when the server did not come up."""
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.sock.close()
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving (open streams are cut after uvicorn's grace period) and close the socket."""
        self.server.should_exit = True
        self._thread.join(timeout=5)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
