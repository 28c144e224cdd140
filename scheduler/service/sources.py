"""Telemetry sources of the oracle service, and the monitor that keeps the newest snapshot.

A source's ``poll()`` returns a :class:`TelemetrySnapshot` stamped in unix seconds, or raises
:class:`SourceUnavailableError` saying why (every network call has a timeout). Sources by spec:

- ``ryu:URL``: the controller's REST telemetry (``/netkv/telemetry``, DESIGN.md schema);
- ``prometheus:URL``: a Prometheus server scraping :mod:`controller.exporter`: per link
  ``rate(netkv_link_transmit_bytes_total[W])`` against ``netkv_link_capacity_bytes_per_second``
  and ``netkv_link_up``; the snapshot is as old as the newest scraped sample plus the
  exporter's own poll age;
- ``replay:FILE``: a recorded emulation's ``telemetry.csv`` (``policy,time_s,link,utilisation``,
  links above 0.1 % only) played back on its own clock from the service's start, looping;
- none: no source, static pricing (``source`` ``static``).

:class:`TelemetryMonitor` polls the source on a background thread. When a poll fails or the
newest snapshot is older than ``max_age_s`` the service prices statically and reports itself
degraded with the reason; the next good poll recovers it, with no action needed.
"""
from __future__ import annotations

import bisect
import csv
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from controller.client import ControllerUnavailable, fetch_snapshot
from controller.promql import PrometheusUnavailable, telemetry_payload
from scheduler.service.pricing import Pricer, TelemetrySnapshot

DEFAULT_TIMEOUT_S = 1.0
"""A source that has not answered in this long is down for this poll."""
DEFAULT_RATE_WINDOW_S = 2.0
"""Prometheus ``rate()`` window: at least two scrapes at the default 0.5 s scrape interval plus slack."""
FALLBACK_POLLS = 4.0
"""Snapshots older than this many poll intervals are stale (the simulator's ``oracle.fallback_polls``):
one late reply is normal, four in a row is an outage."""


class SourceUnavailableError(RuntimeError):
    """A telemetry source could not give a snapshot; the message says which and why."""


class SourceSpecError(ValueError):
    """A ``--telemetry`` spec that names no known source kind or lacks its argument."""


class TelemetrySource(Protocol):
    kind: str

    def poll(self) -> TelemetrySnapshot: ...


class RyuSource:
    """The Ryu controller's REST telemetry."""

    kind = "ryu"

    def __init__(self, pricer: Pricer, url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.pricer = pricer
        self.url = url if url.rstrip("/").endswith("/netkv/telemetry") else url.rstrip("/") + "/netkv/telemetry"
        self.timeout_s = timeout_s

    def poll(self) -> TelemetrySnapshot:
        try:
            payload = fetch_snapshot(self.url, self.timeout_s)
            return self.pricer.snapshot_from_payload(payload)
        except ControllerUnavailable as exc:
            raise SourceUnavailableError(str(exc)) from exc
        except ValueError as exc:  # TelemetryFormatError, UnknownLinkError: a payload we cannot read
            raise SourceUnavailableError(f"telemetry at {self.url} unusable: {exc}") from exc


class PrometheusSource:
    """Link rates, capacities and up flags through the Prometheus HTTP API
    (:func:`controller.promql.telemetry_payload`: the controller's payload schema)."""

    kind = "prometheus"

    def __init__(self, pricer: Pricer, url: str, timeout_s: float = DEFAULT_TIMEOUT_S,
                 window_s: float = DEFAULT_RATE_WINDOW_S) -> None:
        self.pricer = pricer
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.window_s = window_s

    def poll(self) -> TelemetrySnapshot:
        try:
            payload = telemetry_payload(self.url, self.window_s, self.pricer.cfg.oracle.poll_interval_s,
                                        self.timeout_s)
            return self.pricer.snapshot_from_payload(payload)
        except PrometheusUnavailable as exc:
            raise SourceUnavailableError(str(exc)) from exc
        except ValueError as exc:  # TelemetryFormatError, UnknownLinkError: series we cannot read
            raise SourceUnavailableError(f"prometheus at {self.url}: {exc}") from exc


class ReplaySource:
    """A recorded ``telemetry.csv`` replayed from the service's start on its own clock, looping."""

    kind = "replay"

    def __init__(self, pricer: Pricer, path: Path, policy: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.pricer = pricer
        self.path = Path(path)
        self.clock = clock
        rows: dict[float, dict[str, float]] = {}
        try:
            with self.path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                if not {"policy", "time_s", "link", "utilisation"} <= set(reader.fieldnames or ()):
                    raise SourceSpecError(f"{self.path}: not a telemetry.csv (header policy,time_s,link,utilisation)")
                for row in reader:
                    if policy is None:
                        policy = row["policy"]
                    if row["policy"] == policy:
                        rows.setdefault(float(row["time_s"]), {})[row["link"]] = float(row["utilisation"])
        except OSError as exc:
            raise SourceSpecError(f"cannot read replay file {self.path}: {exc}") from exc
        except (KeyError, ValueError) as exc:
            raise SourceSpecError(f"{self.path}: malformed row ({exc})") from exc
        if not rows:
            raise SourceSpecError(f"{self.path}: no telemetry rows{f' for policy {policy!r}' if policy else ''}")
        self.policy = policy
        self.times = sorted(rows)
        gaps = [b - a for a, b in zip(self.times, self.times[1:])]
        self.interval_s = statistics.median(gaps) if gaps else 1.0
        """The recording's poll interval (a poll with every link idle wrote no row)."""
        self.span_s = self.times[-1] - self.times[0] + self.interval_s
        self._util = [rows[t] for t in self.times]
        self.started = clock()

    def poll(self) -> TelemetrySnapshot:
        now = self.clock()
        offset = (now - self.started) % self.span_s
        loop_start = now - offset
        rec_t = self.times[0] + offset
        i = max(0, min(len(self.times) - 1, bisect.bisect_right(self.times, rec_t) - 1))
        if rec_t - self.times[i] > self.interval_s * 1.5:  # no row there: every link was idle
            stamp = now - (rec_t - self.times[0]) % self.interval_s
            return self.pricer.snapshot_from_links(stamp, {}, {}, {})
        util = self._util[i]
        cap = {name: self.pricer.nominal_bps[name] / 8.0 for name in util}
        rates = {name: u * cap[name] for name, u in util.items()}
        return self.pricer.snapshot_from_links(loop_start + self.times[i] - self.times[0], rates, cap, {})


def make_source(spec: str | None, pricer: Pricer, timeout_s: float = DEFAULT_TIMEOUT_S) -> TelemetrySource | None:
    """The source of ``spec`` (``ryu:URL``, ``prometheus:URL``, ``replay:FILE``), None for static."""
    if not spec or spec == "static":
        return None
    kind, sep, arg = spec.partition(":")
    if not sep or not arg:
        raise SourceSpecError(f"telemetry source {spec!r}: expected ryu:URL, prometheus:URL or replay:FILE")
    if kind == "ryu":
        return RyuSource(pricer, arg, timeout_s)
    if kind == "prometheus":
        return PrometheusSource(pricer, arg, timeout_s)
    if kind == "replay":
        return ReplaySource(pricer, Path(arg))
    raise SourceSpecError(f"unknown telemetry source kind {kind!r} in {spec!r} (known: ryu, prometheus, replay)")


@dataclass(frozen=True)
class TelemetryState:
    """What the service knows of its telemetry: the snapshot to price with (None: static pricing),
    the source kind, whether it is degraded and why."""

    snapshot: TelemetrySnapshot | None
    source: str
    degraded: bool
    reason: str | None


class TelemetryMonitor:
    """Polls a source every ``interval_s`` on a daemon thread; :meth:`state` says what to price with.

    ``max_age_s`` (default :data:`FALLBACK_POLLS` x ``interval_s``): an older snapshot is not used."""

    def __init__(self, source: TelemetrySource | None, interval_s: float = 0.5, max_age_s: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.source = source
        self.interval_s = interval_s
        self.max_age_s = FALLBACK_POLLS * interval_s if max_age_s is None else max_age_s
        self.clock = clock
        self._snapshot: TelemetrySnapshot | None = None
        self._error: str | None = None
        self.degraded_spells = 0
        self._was_degraded = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> None:
        """Poll the source once, keeping its snapshot or the reason it failed."""
        if self.source is None:
            return
        try:
            snap = self.source.poll()
        except SourceUnavailableError as exc:
            self._error = str(exc)
            return
        self._snapshot = snap
        self._error = None

    def state(self) -> TelemetryState:
        if self.source is None:
            return TelemetryState(None, "static", False, None)
        snap, error = self._snapshot, self._error
        reason = None
        if error is not None:
            reason = f"{self.source.kind} telemetry unavailable: {error}"
        elif snap is None:
            reason = f"no {self.source.kind} telemetry yet"
        else:
            age = self.clock() - snap.time_s
            if age > self.max_age_s:
                reason = f"{self.source.kind} telemetry is {age:.2f} s old (limit {self.max_age_s:g} s)"
        degraded = reason is not None
        if degraded and not self._was_degraded:
            self.degraded_spells += 1
        self._was_degraded = degraded
        return TelemetryState(None if degraded else snap, self.source.kind, degraded, reason)

    def start(self) -> None:
        """Poll now, then every ``interval_s`` on a daemon thread until :meth:`stop`."""
        if self.source is None or self._thread is not None:
            return
        self.poll_once()
        self._thread = threading.Thread(target=self._loop, name="oracle-telemetry", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
