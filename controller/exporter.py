"""The controller's per link telemetry as Prometheus metrics (prometheus_client, no Ryu import).

A :class:`LinkCollector` reads a :class:`controller.telemetry.LinkTelemetry` at every scrape, so
the telemetry app only has to create one, serve it, and call ``observe()`` after each poll round::

    registry = CollectorRegistry()
    registry.register(LinkCollector(telemetry))
    server = serve(registry, port)            # 127.0.0.1:port/metrics

Metrics, one sample per directed link (label ``link="p0t0->p0a0"``):

- ``netkv_link_transmit_bytes_total``: bytes sent on the link since the first poll (a counter,
  integrated from the measured rates over the controller's poll intervals, so Prometheus'
  ``rate()`` gives the link's rate back);
- ``netkv_link_capacity_bytes_per_second``: its capacity (0 while down);
- ``netkv_link_up``: 1, or 0 while the controller reports it down;
- ``netkv_link_drops_total``: packets dropped on it since the first poll;
- ``netkv_telemetry_poll_age_seconds``: seconds since the controller's newest poll (-1: none yet).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.telemetry import LinkTelemetry


class LinkCounters:
    """Cumulative per link bytes and drops from successive telemetry snapshots: each new poll adds
    ``tx_bps / 8 x`` the time since the previous poll it saw (the poll interval for a link's first
    one), and its drops (a poll's drops are that interval's)."""

    def __init__(self) -> None:
        self.bytes: dict[str, float] = {}
        self.drops: dict[str, float] = {}
        self._seen: dict[str, float] = {}  # link -> sample_time already counted

    def update(self, snapshot: dict) -> None:
        """Count the polls of ``snapshot`` (the DESIGN.md schema) not counted yet."""
        interval = float(snapshot.get("poll_interval_s") or 0.0)
        for name, link in snapshot.get("links", {}).items():
            self.bytes.setdefault(name, 0.0)
            self.drops.setdefault(name, 0.0)
            t = link.get("sample_time")
            if t is None:
                continue
            prev = self._seen.get(name)
            self._seen[name] = t
            span = interval if prev is None else t - prev
            if span > 0:
                self.bytes[name] += float(link.get("tx_bps", 0.0)) / 8.0 * span
                self.drops[name] += float(link.get("drops", 0))


def metrics(snapshot: dict, counters: LinkCounters, now: float) -> list[Metric]:
    """The metric families of one telemetry snapshot (pure: ``counters`` already updated)."""
    sent = CounterMetricFamily("netkv_link_transmit_bytes", "Bytes sent on the directed link", labels=["link"])
    drops = CounterMetricFamily("netkv_link_drops", "Packets dropped on the directed link", labels=["link"])
    cap = GaugeMetricFamily("netkv_link_capacity_bytes_per_second", "Capacity of the directed link (0: down)",
                            labels=["link"])
    up = GaugeMetricFamily("netkv_link_up", "1 when the directed link is up", labels=["link"])
    for name, link in snapshot.get("links", {}).items():
        sent.add_metric([name], counters.bytes.get(name, 0.0))
        drops.add_metric([name], counters.drops.get(name, 0.0))
        cap.add_metric([name], float(link.get("capacity_bps", 0.0)) / 8.0)
        up.add_metric([name], 0.0 if link.get("down") else 1.0)
    t = snapshot.get("time")
    age = GaugeMetricFamily("netkv_telemetry_poll_age_seconds", "Seconds since the controller's newest poll (-1: none)",
                            value=-1.0 if t is None else max(0.0, now - float(t)))
    return [sent, drops, cap, up, age]


class LinkCollector(Collector):
    """A prometheus_client collector reading ``telemetry`` at every scrape (thread-safe)."""

    def __init__(self, telemetry: LinkTelemetry, clock: Callable[[], float] = time.time) -> None:
        self.telemetry = telemetry
        self.clock = clock
        self.counters = LinkCounters()
        self._lock = threading.Lock()

    def observe(self) -> None:
        """Count the telemetry's newest poll now: the telemetry app calls it after every poll
        round, so scrapes slower than polls lose no interval's bytes."""
        with self._lock:
            self.counters.update(self.telemetry.snapshot())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snap = self.telemetry.snapshot()
            self.counters.update(snap)
            families = metrics(snap, self.counters, self.clock())
        yield from families


def export(telemetry: LinkTelemetry, registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """``registry`` (a new one by default) with a :class:`LinkCollector` of ``telemetry`` registered."""
    registry = registry or CollectorRegistry()
    registry.register(LinkCollector(telemetry))
    return registry


def serve(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1"):
    """Serve ``registry`` at ``http://addr:port/metrics`` on a daemon thread; returns (server,
    thread): ``server.shutdown()`` stops it."""
    return start_http_server(port, addr=addr, registry=registry)
