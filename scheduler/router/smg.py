"""SGLang's model gateway (PyPI ``smg``, pinned in requirements.txt) in P/D mode, started and
stopped by the project; :class:`RouterProcess`, what it shares with the NetKV router run as a
process of its own (``netkv router``, :class:`scheduler.router.netkv_router.NetKVRouterProcess`).

:class:`SmgRouter` runs ``smg launch --pd-disaggregation --prefill URL BOOTSTRAP_PORT ... --decode
URL ... --prefill-policy P --decode-policy D --host H --port P --prometheus-host H
--prometheus-port Q`` in its own process group (smg is a Python launcher around a Rust extension:
the group holds all of it), its stdout and stderr appended to a log file that is kept. It is ready
when its ``/workers`` endpoint lists every worker (smg registers workers in the background after
probing their ``/v1/models``, ``/server_info`` and ``/model_info``). :meth:`SmgRouter.stop` (also on
leaving the ``with`` block, on an exception, and when start-up fails) sends SIGTERM to the group,
then SIGKILL to what is left after :data:`STOP_GRACE_S`.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import httpx

SMG_VERSION = "1.13.0"
"""The smg release the project pins (requirements.txt) and was checked against."""
POLICIES = ("random", "round_robin", "cache_aware", "power_of_two", "least_load", "consistent_hashing",
            "prefix_hash", "manual")
"""smg's P/D selection policies (prefill also ``bucket``); ``power_of_two`` needs 2 workers."""
START_TIMEOUT_S = 60.0
"""Seconds smg gets to come up and register every worker."""
STOP_GRACE_S = 2.0
"""Seconds between SIGTERM and SIGKILL of smg's process group (smg keeps its listener open for a
load-balancer settle window after SIGTERM; a run's router has nobody to drain for)."""
SHUTDOWN_GRACE_S = 1
"""smg's ``--shutdown-grace-period-secs``: in-flight requests are the client's, done by then."""


class SmgError(RuntimeError):
    """smg is missing, did not start, or did not register its workers; the message says why and
    where its log is."""


def smg_binary() -> str | None:
    """The ``smg`` launcher of this interpreter's environment (or on PATH), None when absent."""
    local = Path(sys.executable).parent / "smg"
    if local.exists():
        return str(local)
    return shutil.which("smg")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the OS's ephemeral choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def smg_version() -> str | None:
    """The installed smg's version (its Python package's), None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("smg")
    except PackageNotFoundError:
        return None


class RouterProcess:
    """A router in its own process group, serving on ``host:port``, ready when its ``/workers``
    lists every worker; subclasses give the command line. Stop: SIGTERM to the group, SIGKILL
    after :data:`STOP_GRACE_S`."""

    name = "router"
    error: type[RuntimeError] = RuntimeError

    def __init__(self, n_workers: int, host: str, port: int, log_path: str | Path) -> None:
        self.n_workers = n_workers
        self.host = host
        self.port = port or free_port(host)
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = START_TIMEOUT_S) -> Self:
        """Start it and wait until it lists every worker; ``error`` otherwise (it is stopped)."""
        cmd = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def listing(self) -> dict | list:
        """Its ``/workers`` answer as it is (empty when it does not answer)."""
        try:
            r = httpx.get(f"{self.url}/workers", timeout=2.0)
            return r.json() if r.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            return {}

    def workers(self) -> list[dict]:
        """Its workers, from :meth:`listing` (empty when it does not answer)."""
        data = self.listing()
        items = data.get("workers", []) if isinstance(data, dict) else data
        return items if isinstance(items, list) else []

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise self.error(f"{self.name} exited with status {self.proc.returncode} (log: {self.log_path})")
            if len(self.workers()) >= self.n_workers:
                return
            time.sleep(0.2)
        raise self.error(f"{self.name} did not register {self.n_workers} workers within {timeout:g} s "
                         f"(log: {self.log_path})")

    def stop(self) -> None:
        """Terminate its process group (SIGTERM, then SIGKILL after the grace period)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of the group still there
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_GRACE_S)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SmgRouter(RouterProcess):
    """One smg P/D router in front of ``prefill`` (``(url, bootstrap port or None)``) and
    ``decode`` (urls) workers, serving on ``host:port`` (0: a free port)."""

    name = "smg"
    error = SmgError

    def __init__(self, prefill: Sequence[tuple[str, int | None]], decode: Sequence[str], *,
                 prefill_policy: str = "cache_aware", decode_policy: str = "power_of_two",
                 host: str = "127.0.0.1", port: int = 0, prometheus_port: int = 0,
                 log_path: str | Path = "smg.log", extra_args: Sequence[str] = (),
                 binary: str | None = None) -> None:
        for policy in (prefill_policy, decode_policy):
            if policy not in (*POLICIES, "bucket"):
                raise ValueError(f"unknown smg policy {policy!r} (known: {', '.join(POLICIES)}, bucket)")
        if not prefill or not decode:
            raise ValueError("smg P/D mode needs at least one prefill and one decode worker")
        super().__init__(len(prefill) + len(decode), host, port, log_path)
        self.prefill, self.decode = list(prefill), list(decode)
        self.prefill_policy, self.decode_policy = prefill_policy, decode_policy
        self.prometheus_port = prometheus_port or free_port(host)
        self.extra_args = list(extra_args)
        self.binary = binary or smg_binary()

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.prometheus_port}/metrics"

    def command(self) -> list[str]:
        """The ``smg launch`` command line."""
        if self.binary is None:
            raise SmgError("smg is not installed (pip install smg==" + SMG_VERSION + ")")
        cmd = [self.binary, "launch", "--pd-disaggregation"]
        for url, bootstrap in self.prefill:
            cmd += ["--prefill", url] + ([str(bootstrap)] if bootstrap is not None else [])
        for url in self.decode:
            cmd += ["--decode", url]
        cmd += ["--prefill-policy", self.prefill_policy, "--decode-policy", self.decode_policy,
                "--host", self.host, "--port", str(self.port),
                "--prometheus-host", self.host, "--prometheus-port", str(self.prometheus_port),
                "--shutdown-grace-period-secs", str(SHUTDOWN_GRACE_S)]
        return cmd + self.extra_args
