"""The controller's per link telemetry as Prometheus metrics (prometheus_client, no Ryu import).

A :class:`LinkCollector` reads a :class:`controller.telemetry.LinkTelemetry` at every scrape, so
the telemetry app only has to create one and serve it (the controller's REST app serves it at
``/metrics`` on its own port)::

    registry = CollectorRegistry()
    registry.register(LinkCollector(telemetry))
    server = serve(registry, port)            # 127.0.0.1:port/metrics

Metrics, one sample per directed link (label ``link="p0t0->p0a0"``):

- ``netkv_link_transmit_bytes_total``: the switch port's own byte counter for the link at the
  controller's newest poll (tx of the sending port; rx for a host's link into its switch), so
  Prometheus' ``rate()`` over it is the rate the switch measured, sampled at the scrape interval;
- ``netkv_link_capacity_bytes_per_second``: its capacity (0 while down);
- ``netkv_link_up``: 1, or 0 while the controller reports it down;
- ``netkv_link_drops_total``: the port's dropped-packet counter;
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


def metrics(snapshot: dict, counters: dict[str, tuple[int, int]], now: float) -> list[Metric]:
    """The metric families of one telemetry snapshot and the switches' counters (pure)."""
    sent = CounterMetricFamily("netkv_link_transmit_bytes", "Bytes sent on the directed link", labels=["link"])
    drops = CounterMetricFamily("netkv_link_drops", "Packets dropped on the directed link", labels=["link"])
    cap = GaugeMetricFamily("netkv_link_capacity_bytes_per_second", "Capacity of the directed link (0: down)",
                            labels=["link"])
    up = GaugeMetricFamily("netkv_link_up", "1 when the directed link is up", labels=["link"])
    for name, link in snapshot.get("links", {}).items():
        if name in counters:  # a counter appears with its link's first poll, as a switch's would
            sent.add_metric([name], float(counters[name][0]))
            drops.add_metric([name], float(counters[name][1]))
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
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            families = metrics(self.telemetry.snapshot(), self.telemetry.counters(), self.clock())
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
