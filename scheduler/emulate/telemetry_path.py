"""How an emulated run's scheduler learns the network: the telemetry path, as a deployment runs it.

By default the scheduler polls the controller's REST telemetry directly. ``--telemetry prometheus``
puts a real Prometheus server between them (started for the run, scraping the controller's
``/metrics`` every ``scrape_interval_s``; the scheduler reads ``rate()`` over the switches' byte
counters through Prometheus' query API, :mod:`controller.promql`), so the scrape interval and the
rate window are the staleness. ``--oracle-service`` puts the oracle service between the
telemetry and the scheduler: the run starts ``netkv oracle serve`` on loopback (fed by the same
telemetry) or uses one already running (a URL), and every decision is priced over HTTP
(:class:`scheduler.service.remote.ServiceOracle`).

:class:`TelemetryPath` starts what its plan needs inside an :class:`~contextlib.ExitStack` (every
process stopped and its folder removed on exit, errors and stop signals included; recorded in
the fabric's state file so a SIGKILLed run's leftovers are removed by the next start-up) and hands
the poller its fetch function and the replays their oracle factory.
"""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from controller.client import ControllerUnavailable
from controller.prometheus_server import PrometheusServer, free_port
from controller.promql import rate_window_s, telemetry_payload
from scheduler.decision.oracle import NetworkOracle
from scheduler.decision.telemetry import TelemetryHistory, TelemetrySnapshot
from scheduler.service.remote import ServiceOracle
from topology import cleanup

if TYPE_CHECKING:  # the Mininet fabric: only its type here
    from topology.fabric import Fabric

SERVICE_MARK = "-m scripts.netkv oracle serve"
"""The oracle service's command line, as the cleanup of a killed run finds it."""
PROMETHEUS_MARK = "--config.file=/tmp/netkv-prometheus-"
"""Prometheus' command line (its configuration lives in its run folder)."""
SERVICE_START_TIMEOUT_S = 30.0
"""The service must answer /healthz this soon after its start (imports, topology, uvicorn)."""
SERVICE_STOP_GRACE_S = 5.0
"""SIGTERM, then SIGKILL after this."""
TELEMETRY_KINDS = ("ryu", "prometheus")
"""Where the scheduler (or the service) reads link telemetry from."""


class TelemetryPathError(RuntimeError):
    """A part of the telemetry path did not start; the message says which and why."""


@dataclass(frozen=True)
class TelemetryPlan:
    """The telemetry path of one emulated run."""

    source: str = "ryu"
    """``ryu``: the controller's REST telemetry; ``prometheus``: a real Prometheus in between."""
    scrape_interval_s: float = 1.0
    """Prometheus' scrape interval (``source`` prometheus)."""
    rate_window_s: float | None = None
    """``rate()`` window; default 2.5 scrape intervals (two samples plus jitter)."""
    service: str | None = None
    """None: the scheduler prices in process; ``start``: the run starts the oracle service;
    ``http://...``: the URL of a service already running."""
    serve_args: list[str] = field(default_factory=list)
    """``--model`` and ``--set`` arguments that give the service the experiment's config."""

    def __post_init__(self) -> None:
        if self.source not in TELEMETRY_KINDS:
            raise ValueError(f"--telemetry must be one of {', '.join(TELEMETRY_KINDS)}, got {self.source!r}")
        if not (math.isfinite(self.scrape_interval_s) and self.scrape_interval_s > 0):
            raise ValueError(f"--scrape-interval must be a finite number > 0 s, got {self.scrape_interval_s}")
        if self.source == "prometheus":
            rate_window_s(self.scrape_interval_s, self.rate_window_s)  # raises on a window too short
        if self.service not in (None, "start") and not str(self.service).startswith(("http://", "https://")):
            raise ValueError(f"--oracle-service takes no value or a URL (http://HOST:PORT), got {self.service!r}")

    def describe(self) -> dict:
        out = asdict(self)
        out.pop("serve_args")
        if self.source == "prometheus":
            out["rate_window_s"] = rate_window_s(self.scrape_interval_s, self.rate_window_s)
        else:
            out.pop("scrape_interval_s")
            out.pop("rate_window_s")
        return out


def fallback_polls(cfg_polls: int, poll_interval_s: float, scrape_interval_s: float | None) -> int:
    """``oracle.fallback_polls`` for telemetry read through Prometheus: an outage is
    ``cfg_polls`` scrape intervals without news, not ``cfg_polls`` controller polls (a 5 s scrape
    makes every snapshot older than four 0.5 s polls: the oracle would price statically always)."""
    if scrape_interval_s is None:
        return cfg_polls
    return max(cfg_polls, math.ceil(cfg_polls * scrape_interval_s / poll_interval_s))


def with_fallback(cfg, scrape_interval_s: float | None):
    """``cfg`` with :func:`fallback_polls` applied (unchanged without Prometheus)."""
    polls = fallback_polls(cfg.oracle.fallback_polls, cfg.oracle.poll_interval_s, scrape_interval_s)
    if polls == cfg.oracle.fallback_polls:
        return cfg
    return dataclasses.replace(cfg, oracle=dataclasses.replace(cfg.oracle, fallback_polls=polls))


class ServiceProcess:
    """``netkv oracle serve`` on a free loopback port, for one run."""

    def __init__(self, telemetry: str, capacity_scale: float, poll_interval_s: float, serve_args: list[str],
                 max_age_s: float | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [sys.executable, "-m", "scripts.netkv", "oracle", "serve", "--port", str(self.port),
                     "--telemetry", telemetry, "--capacity-scale", repr(capacity_scale),
                     "--poll-interval", repr(poll_interval_s),
                     *(["--max-age", repr(max_age_s)] if max_age_s is not None else []), *serve_args]
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def start(self, log_path: Path) -> ServiceProcess:
        self.log_path = log_path
        root = Path(__file__).resolve().parents[2]
        env = {k: v for k, v in os.environ.items() if k != "NETKV_ORACLE_TOKEN"}
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TelemetryPathError(f"the oracle service exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TelemetryPathError(f"the oracle service did not answer within {SERVICE_START_TIMEOUT_S} s: "
                                 f"{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            cleanup.kill_pids([proc.pid], grace_s=SERVICE_STOP_GRACE_S)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 10) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines() if self.log_path else []
        except OSError:
            text = []
        return "\n".join(text[-lines:]) or "(no service log)"


class TelemetryPath:
    """The running parts of a :class:`TelemetryPlan` (see the module doc)."""

    def __init__(self, plan: TelemetryPlan, fab: Fabric, rest_port: int, poll_interval_s: float,
                 capacity_scale: float, time_scale: float, run_dir: Path, log: Callable[[str], object]) -> None:
        self.plan, self.fab, self.rest_port = plan, fab, rest_port
        self.poll_interval_s, self.capacity_scale, self.time_scale = poll_interval_s, capacity_scale, time_scale
        self.run_dir, self.log = run_dir, log
        self.prometheus: PrometheusServer | None = None
        self.service: ServiceProcess | None = None
        self.service_url: str | None = None
        self.oracles: list[ServiceOracle] = []

    def enter(self, stack: ExitStack) -> TelemetryPath:
        """Start Prometheus and the service as the plan says; ``stack`` stops them."""
        plan = self.plan
        telemetry = f"ryu:http://127.0.0.1:{self.rest_port}"
        if plan.source == "prometheus":
            prom = self.prometheus = self._start_prometheus(stack, plan.scrape_interval_s)
            telemetry = f"prometheus:{prom.url}"
            self.log(f"emulate: Prometheus at {prom.url} scraping the controller every {plan.scrape_interval_s} s")
        if plan.service == "start":
            max_age = 4.0 * plan.scrape_interval_s if plan.source == "prometheus" else None
            service = ServiceProcess(telemetry, self.capacity_scale, self.poll_interval_s, plan.serve_args, max_age)
            stack.callback(service.stop)
            service.start(self.run_dir / "oracle-service.log")
            if service.proc is not None:
                self.fab.record_process(service.proc.pid, SERVICE_MARK)
                stack.callback(self.fab.forget_process, service.proc.pid)
            self.service, self.service_url = service, service.url
            self.log(f"emulate: oracle service at {service.url} ({telemetry.split(':')[0]} telemetry)")
        elif plan.service is not None:
            self.service_url = plan.service
        stack.callback(self._close_oracles)
        return self

    def _start_prometheus(self, stack: ExitStack, scrape_interval_s: float) -> PrometheusServer:
        """A Prometheus scraping the controller, stopped by ``stack`` and recorded in the fabric's
        state file meanwhile (a killed run's is removed by the next start-up)."""
        prom = PrometheusServer([f"127.0.0.1:{self.rest_port}"], scrape_interval_s=scrape_interval_s)
        stack.enter_context(prom)
        if prom.proc is not None:
            self.fab.record_process(prom.proc.pid, PROMETHEUS_MARK, str(prom.folder))
            stack.callback(self.fab.forget_process, prom.proc.pid)
        return prom

    def fetch(self) -> Callable[[float], dict] | None:
        """The poller's telemetry fetch (timeout in, payload out); None: the controller's REST."""
        prom = self.prometheus
        if prom is None:
            return None
        window = rate_window_s(self.plan.scrape_interval_s, self.plan.rate_window_s)
        return lambda timeout_s: telemetry_payload(prom.url, window, self.poll_interval_s, timeout_s)

    def replay_fetch(self, stack: ExitStack, scrape_interval_s: float) -> Callable[[float], dict]:
        """A Prometheus scraping the controller every ``scrape_interval_s``, started now for one
        replay (``stack`` stops it), and the poller's fetch reading through it; waits for the
        scrapes one rate window needs, so the replay starts with telemetry."""
        prom = self._start_prometheus(stack, scrape_interval_s)
        window = rate_window_s(scrape_interval_s, None)
        fetch = lambda timeout_s: telemetry_payload(prom.url, window, self.poll_interval_s, timeout_s)  # noqa: E731
        deadline = time.monotonic() + window + 2 * scrape_interval_s + 5.0
        while time.monotonic() < deadline:
            try:
                if any(v["sample_time"] is not None for v in fetch(1.0)["links"].values()):
                    break
            except ControllerUnavailable:
                pass
            time.sleep(min(1.0, scrape_interval_s / 2))
        self.log(f"emulate: Prometheus at {prom.url} scraping every {scrape_interval_s:g} s for this replay")
        return fetch

    def oracle_factory(self) -> Callable[..., NetworkOracle | None] | None:
        """Builds the service-backed oracle a replay decides with (None: in process)."""
        url = self.service_url
        if url is None:
            return None

        def make(tree, kind: str) -> NetworkOracle | None:
            if kind not in ("telemetry", "inflight"):
                return None  # static needs no telemetry: priced in process
            oracle = ServiceOracle(tree, url, time_scale=self.time_scale, reserve=kind == "inflight")
            self.oracles.append(oracle)
            return oracle

        return make

    def _close_oracles(self) -> None:
        for oracle in self.oracles:
            oracle.close()

    def report(self) -> dict:
        """The summary's ``telemetry_path``: the plan, whether each part stayed up, and the
        service's answers (calls, degraded answers, telemetry age at decision, s)."""
        out: dict = self.plan.describe()
        if self.prometheus is not None:
            out["prometheus_url"] = self.prometheus.url
            out["prometheus_alive_at_end"] = self.prometheus.proc is not None and self.prometheus.proc.poll() is None
        if self.service is not None:
            out["service_alive_at_end"] = self.service.alive()
        if self.oracles:
            ages = sorted(a for o in self.oracles for a in o.telemetry_ages)
            out["service_calls"] = sum(o.calls for o in self.oracles)
            out["service_degraded_answers"] = sum(o.degraded_answers for o in self.oracles)
            out["service_telemetry_age_s"] = ({"p50": ages[len(ages) // 2], "max": ages[-1]} if ages else None)
        return out


class AgeRecordingHistory(TelemetryHistory):
    """A replay's telemetry history that records, at every oracle read, how old the snapshot it
    returned was at the decision: the staleness a decision really priced with (the added
    ``staleness_s`` plus the telemetry path's own lag: polls, scrapes, rate windows)."""

    def __init__(self, max_age_s: float, staleness_s: float) -> None:
        super().__init__(max_age_s=max_age_s)
        self.staleness_s = staleness_s
        self.ages: list[float] = []

    def at(self, time_s: float) -> TelemetrySnapshot | None:
        snap = super().at(time_s)
        if snap is not None:
            self.ages.append(self.staleness_s + time_s - snap.time_s)
        return snap


def age_summary(ages: list[float]) -> dict | None:
    """p50 / p90 / max of the telemetry ages at decision (s), and how many reads."""
    if not ages:
        return None
    s = sorted(ages)
    return {"reads": len(s), "p50": s[len(s) // 2], "p90": s[min(len(s) - 1, int(0.9 * len(s)))], "max": s[-1]}
