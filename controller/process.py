"""The controller as a process of the fabric: JSON config, ``python -m controller.run``, readiness,
restart, stop.

:class:`ControllerProcess` is the :class:`topology.fabric.FabricController` the fabric starts
before its switches and stops after them; :func:`controlled_fabric` composes the two (the
``netkv fabric`` commands, the emulate orchestrator and the emulation tests use it)::

    with controlled_fabric(FatTree(), DEFAULT_SCALE, run_dir) as fab:   # root only
        snapshot = fab.telemetry()

Its files go to the fabric's run folder: ``controller.json`` (:class:`controller.run.ControllerConfig`)
and ``controller.log``.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from controller.client import ControllerUnavailable, fetch_snapshot, get_json
from controller.run import ControllerConfig
from controller.settings import DEFAULT_OFP_PORT, DEFAULT_POLL_INTERVAL_S, DEFAULT_REST_PORT
from topology import cleanup
from topology.errors import FabricError

if TYPE_CHECKING:
    from topology.fabric import ControllerSpec, Fabric
    from topology.model import FatTree

CONTROLLER_MODULE = "controller.run"
"""Run with ``python -m`` (the package is installed editable); :data:`topology.cleanup.CONTROLLER_MARK`
finds it by this."""
LISTEN_TIMEOUT_S = 20.0
"""The controller must accept OpenFlow connections this soon after its start (Ryu imports take a few s)."""
READY_TIMEOUT_S = 60.0
"""Every switch must be connected with its routes installed this soon after the switches start."""
RESTART_PORTS_TIMEOUT_S = 10.0
"""A restart waits this long at most for the old process's ports to be free again."""
STOP_GRACE_S = 3.0
"""SIGTERM, then SIGKILL after this."""


class ControllerError(FabricError):
    """The controller did not start, answer or stop; the message has the tail of its log."""


def port_free(port: int) -> bool:
    """True when nothing listens on TCP ``port`` of 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ControllerProcess:
    """Our Ryu controller (routing, telemetry, REST) as a subprocess of the fabric's owner."""

    def __init__(self, rest_port: int = DEFAULT_REST_PORT, poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
                 python: str = sys.executable) -> None:
        self.rest_port = rest_port
        self.poll_interval_s = poll_interval_s
        self.python = python
        """The interpreter running this (the project's venv: it has Ryu and the installed package)."""
        self.spec: ControllerSpec | None = None
        self.proc: subprocess.Popen | None = None
        self._crashed: ControllerSpec | None = None  # set by crash(), until recover()

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def telemetry_url(self) -> str:
        return f"{self.rest_url}/netkv/telemetry"

    def state(self) -> dict:
        return {"rest_port": self.rest_port, "rest_url": self.rest_url, "telemetry_url": self.telemetry_url,
                "poll_interval_s": self.poll_interval_s}

    def check_ports(self, ofp_port: int) -> None:
        for port in (ofp_port, self.rest_port):
            if not port_free(port):
                raise ControllerError(f"TCP port {port} on 127.0.0.1 is in use; "
                                      "choose another (--ofp-port/--rest-port)")

    # ------------------------------------------------------------------ REST
    def telemetry(self, timeout_s: float = 2.0) -> dict:
        return fetch_snapshot(self.telemetry_url, timeout_s)

    def status(self, timeout_s: float = 2.0) -> dict:
        return get_json(f"{self.rest_url}/netkv/status", timeout_s, what="controller status")

    # ------------------------------------------------------------------ process
    def start(self, spec: ControllerSpec) -> None:
        """Write the config and start the process (returns at once)."""
        self.spec = spec
        cfg = spec.run_dir / "controller.json"
        cfg.write_text(ControllerConfig(
            topology=spec.tree.config,
            poll_interval_s=self.poll_interval_s,
            link_capacity_bps=spec.link_capacity_bps,
        ).to_json())
        with open(spec.run_dir / "controller.log", "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [self.python, "-m", CONTROLLER_MODULE, "--config", str(cfg),
                 "--ofp-port", str(spec.ofp_port), "--rest-port", str(self.rest_port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_listening(self, timeout_s: float = LISTEN_TIMEOUT_S) -> None:
        """Return once the OpenFlow port accepts connections."""
        spec, _ = self._running()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with socket.create_connection(("127.0.0.1", spec.ofp_port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise ControllerError(f"controller not listening on port {spec.ofp_port} after {timeout_s} s: "
                              f"{self.log_tail()}")

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> dict:
        """Return the controller's status once every switch of the tree is connected with its
        routes installed."""
        tree = self._running()[0].tree
        deadline = time.monotonic() + timeout_s
        status: dict = {}
        expected = len(tree.switch_names())
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                status = self.status(timeout_s=1.0)
            except ControllerUnavailable:
                time.sleep(0.2)
                continue
            if len(status.get("switches_ready", [])) == expected:
                return status
            time.sleep(0.2)
        missing = sorted(set(tree.switch_names()) - set(status.get("switches_ready", [])))
        raise ControllerError(f"only {expected - len(missing)}/{expected} switches connected with routes after "
                              f"{timeout_s} s (missing: {', '.join(missing[:8])}); {self.log_tail()}")

    def restart(self) -> None:
        """Stop the process and start a new one on the same ports (the switches keep their flows
        meanwhile: fail-mode secure); returns once every switch has its routes re-installed."""
        spec, proc = self._running()
        cleanup.kill_pids([proc.pid], grace_s=STOP_GRACE_S)
        proc.wait(timeout=5)
        self._start_again(spec)

    def crash(self) -> None:
        """Kill the process at once (SIGKILL: a crash, for fault injection); :meth:`recover` starts
        it again. The switches keep their flows meanwhile (fail-mode secure)."""
        spec, proc = self._running()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        self.proc = None
        self._crashed = spec

    def recover(self) -> None:
        """Start a crashed controller again on the same ports; returns once every switch has its
        routes re-installed."""
        spec = self._crashed
        if spec is None:
            raise ControllerError("controller did not crash: nothing to recover")
        self._crashed = None
        self._start_again(spec)

    def _start_again(self, spec: ControllerSpec) -> None:
        """Start on the old process's ports once they are free (or :data:`RESTART_PORTS_TIMEOUT_S`
        passed) and return once every switch has its routes re-installed."""
        deadline = time.monotonic() + RESTART_PORTS_TIMEOUT_S
        while not (port_free(spec.ofp_port) and port_free(self.rest_port)) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.start(spec)
        self.wait_ready()

    def stop(self) -> None:
        """Stop the process (idempotent); ControllerError when it would not exit."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        cleanup.kill_pids([proc.pid], grace_s=STOP_GRACE_S)
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            raise ControllerError(f"controller pid {proc.pid} did not exit") from None

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` of ``controller.log``, for error messages."""
        path = self.spec.run_dir / "controller.log" if self.spec else None
        try:
            text = path.read_text(errors="replace").splitlines() if path else None
        except OSError:
            text = None
        if text is None:
            return "(no controller log)"
        return f"log {path}:\n" + "\n".join(text[-lines:])

    def _running(self) -> tuple[ControllerSpec, subprocess.Popen]:
        """The spec and process of the running controller; ControllerError when there is none."""
        if self.proc is None or self.spec is None:
            raise ControllerError("controller is not running")
        return self.spec, self.proc

    def _check_alive(self) -> None:
        _, proc = self._running()
        if proc.poll() is not None:
            raise ControllerError(f"controller exited with {proc.returncode}: {self.log_tail()}")


def controlled_fabric(tree: FatTree, scale: float, run_dir: str | Path, ofp_port: int = DEFAULT_OFP_PORT,
                      rest_port: int = DEFAULT_REST_PORT, poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
                      **options) -> Fabric:
    """A :class:`topology.fabric.Fabric` with our controller on ``rest_port``, polling every
    ``poll_interval_s``; ``options`` go to the fabric."""
    from topology.fabric import Fabric  # imports Mininet: only where a fabric is built

    return Fabric(tree, scale, run_dir, ofp_port, ControllerProcess(rest_port, poll_interval_s), **options)
