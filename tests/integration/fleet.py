"""A fleet of host agents as real subprocesses on loopback, with the orchestrator's control
server: what the agent tests (test_agent.py, test_agent_compute.py) share."""
from __future__ import annotations

import queue
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hosts.control import ControlServer
from hosts.messages import (
    Hello,
    Received,
    Report,
    Send,
    Sent,
)

ROOT = Path(__file__).resolve().parents[2]

MB = 1_000_000
NETNS = ("nkvtest-a", "nkvtest-b")


def wait_event(server: ControlServer, pred: Callable[[Report], bool],
                timeout: float = 10.0) -> Report:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            ev = server.events.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if pred(ev):
            return ev
        seen.append(ev)
    raise AssertionError(f"no matching event within {timeout} s; saw {seen}")


class Fleet:
    """A ControlServer plus agent subprocesses; everything is torn down in ``close``."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="nkvtest-"))  # short: AF_UNIX paths <= 107
        self.server = ControlServer(self.dir / "ctl.sock")
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, gpu: int, host: str = "127.0.0.1", netns: str | None = None,
              extra: list[str] | None = None) -> Hello:
        cmd = [sys.executable, "-m", "hosts.agent", "--name", name, "--gpu", str(gpu),
               "--listen-host", host, "--port", "0", "--control", str(self.server.path),
               "--io-timeout", "30", "--connect-timeout", "3", *(extra or [])]
        if netns is not None:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.procs[name] = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        return self.server.wait_hello([name], timeout=15)[name]

    def send(self, src: str, dst: str, tid: int, nbytes: int, dst_gpu: int | None = None,
             dst_ip: str | None = None) -> None:
        hello = self.server.agents()[dst]
        self.server.send(src, Send(tid, tid * 10, dst_ip or hello.listen_ip, hello.listen_port, nbytes,
                                   hello.gpu if dst_gpu is None else dst_gpu))

    def close(self) -> None:
        try:
            self.server.close()
            for proc in self.procs.values():
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if proc.stderr is not None:
                    proc.stderr.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def check_pair(sent: Report, recv: Report, tid: int, nbytes: int) -> None:
    assert isinstance(sent, Sent) and isinstance(recv, Received)
    for ev in (sent, recv):
        assert ev.transfer_id == tid and ev.request_id == tid * 10
        assert ev.bytes == nbytes
        assert ev.t_end >= ev.t_start
    assert sent.role == "send" and recv.role == "recv"
    # Same clock: the receiver sees its first byte after the sender connected, and the sender
    # hears DONE after the receiver read the last byte.
    assert sent.t_connect is not None and sent.t_local_end is not None
    assert recv.t_start >= sent.t_connect
    assert sent.t_end >= recv.t_end
    assert sent.t_local_end <= sent.t_end
