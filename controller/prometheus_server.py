"""A real Prometheus server for one run: generated config, temporary storage, readiness, teardown.

::

    with PrometheusServer(["127.0.0.1:9101"], scrape_interval_s=0.5) as prom:
        prom.url                                   # http://127.0.0.1:PORT, ready

The server (Debian package ``prometheus``, :data:`PROMETHEUS_BIN`) scrapes the given targets'
``/metrics`` (e.g. :mod:`controller.exporter`) every ``scrape_interval_s``, keeps its data in a
temporary folder and listens on 127.0.0.1 only. Leaving the ``with`` block (normally, on an
exception, or on SIGTERM/SIGINT/SIGHUP of this process, which :mod:`topology.signals` turns into
exceptions) stops it (SIGTERM, then SIGKILL) and removes the folder.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from controller.process import port_free
from topology import cleanup
from topology.errors import FabricError
from topology.signals import StopSignalHandlers, mask_stop_signals, unmask_stop_signals

PROMETHEUS_BIN = "/usr/bin/prometheus"
"""Installed by ``scripts/setup_emulation.sh`` (Debian package ``prometheus``)."""
READY_TIMEOUT_S = 30.0
"""Prometheus must answer ``/-/ready`` this soon after its start (TSDB open, config loaded)."""
STOP_GRACE_S = 5.0
"""SIGTERM, then SIGKILL after this (Prometheus flushes its head block on SIGTERM)."""


class PrometheusError(FabricError):
    """Prometheus is missing, did not start, or did not become ready; the message has its log tail."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_text(targets: list[str], scrape_interval_s: float, job: str = "netkv") -> str:
    """prometheus.yml scraping ``targets`` (host:port) every ``scrape_interval_s``."""
    if not scrape_interval_s > 0:
        raise ValueError(f"scrape_interval_s must be > 0, got {scrape_interval_s}")
    ms = max(1, round(scrape_interval_s * 1000))
    listed = ", ".join(f"'{t}'" for t in targets)
    return (f"global:\n  scrape_interval: {ms}ms\n  scrape_timeout: {ms}ms\n  evaluation_interval: {ms}ms\n"
            f"scrape_configs:\n  - job_name: '{job}'\n    static_configs:\n      - targets: [{listed}]\n")


class PrometheusServer:
    """One Prometheus process and its temporary folder (see the module doc)."""

    def __init__(self, targets: list[str], scrape_interval_s: float = 0.5, port: int | None = None,
                 binary: str = PROMETHEUS_BIN, retention: str = "1h") -> None:
        self.targets = list(targets)
        self.scrape_interval_s = scrape_interval_s
        self.port = port
        self.binary = binary
        self.retention = retention
        self.folder: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._signals = StopSignalHandlers()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusServer:
        """Write the config, start the process and wait for ``/-/ready``; stops it all on failure."""
        if not Path(self.binary).exists():
            raise PrometheusError(f"{self.binary} not found; install it with scripts/setup_emulation.sh "
                                  "(Debian package 'prometheus')")
        self.port = self.port or free_port()
        if not port_free(self.port):
            raise PrometheusError(f"TCP port {self.port} on 127.0.0.1 is in use")
        self.folder = Path(tempfile.mkdtemp(prefix="netkv-prometheus-"))
        try:
            cfg = self.folder / "prometheus.yml"
            cfg.write_text(config_text(self.targets, self.scrape_interval_s))
            with open(self.folder / "prometheus.log", "ab") as log:
                self.proc = subprocess.Popen(
                    [self.binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.folder / 'data'}",
                     f"--storage.tsdb.retention.time={self.retention}",
                     f"--web.listen-address=127.0.0.1:{self.port}"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited during start: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise PrometheusError(f"prometheus not ready after {timeout_s} s: {self.log_tail()}")

    def stop(self) -> None:
        """Stop the process and remove the folder (idempotent; signals blocked meanwhile)."""
        masked = mask_stop_signals()
        try:
            proc, self.proc = self.proc, None
            if proc is not None:
                cleanup.kill_pids([proc.pid], grace_s=STOP_GRACE_S)
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    raise PrometheusError(f"prometheus pid {proc.pid} did not exit") from None
            folder, self.folder = self.folder, None
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        finally:
            unmask_stop_signals(masked)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.folder / "prometheus.log").read_text(errors="replace").splitlines() if self.folder else []
        except OSError:
            text = []
        return "log:\n" + "\n".join(text[-lines:]) if text else "(no prometheus log)"

    def __enter__(self) -> PrometheusServer:
        self._signals.install()
        try:
            return self.start()
        except BaseException:
            self._signals.restore()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.stop()
        finally:
            self._signals.restore()
