"""Link telemetry read back through Prometheus' HTTP API, in the controller's own payload schema.

A deployed oracle does not ask the SDN controller: it reads the counters the operator's Prometheus
scraped from the switches' exporter (:mod:`controller.exporter`). :func:`telemetry_payload`
answers with the ``/netkv/telemetry`` schema (DESIGN.md), so every consumer of the controller's
REST telemetry (the emulator's poller, the oracle service) reads Prometheus unchanged:

- ``tx_bps``: ``8 x rate(netkv_link_transmit_bytes_total[W])``, the switches' counters averaged
  over the window ``W`` (which must hold two scrapes, so ``W`` >= twice the scrape interval);
- ``capacity_bps`` from ``netkv_link_capacity_bytes_per_second`` (0 while down), ``down`` from
  ``netkv_link_up``;
- ``time``: when the newest scraped counters were polled from the switches: the newest scrape's
  timestamp less the exporter's own poll age. Staleness as deployed is then what a decision sees:
  the scrape interval, the controller's poll interval and the rate window's lag together.

Every call has a timeout; any failure raises :class:`PrometheusUnavailable` saying which query.
"""
from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request

from controller.client import ControllerUnavailable

DEFAULT_TIMEOUT_S = 1.0
"""A Prometheus query not answered in this long fails (the caller counts it and polls again)."""


class PrometheusUnavailable(ControllerUnavailable):
    """Prometheus did not answer, or answered without the series the telemetry needs."""


def rate_window_s(scrape_interval_s: float, window_s: float | None = None) -> float:
    """The ``rate()`` window: ``window_s`` when given, else two scrape intervals plus half of
    one (``rate`` needs two samples inside the window; the half absorbs scrape jitter)."""
    w = 2.5 * scrape_interval_s if window_s is None else window_s
    if not (math.isfinite(w) and w >= 2 * scrape_interval_s > 0):
        raise ValueError(f"rate window {w} s must be finite and at least two scrape intervals "
                         f"({2 * scrape_interval_s} s)")
    return w


def query(url: str, promql: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[dict]:
    """The instant vector of ``promql`` from the Prometheus at ``url``."""
    full = f"{url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(full, timeout=timeout_s) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts; bad JSON
        raise PrometheusUnavailable(f"prometheus at {url} failed on {promql!r}: {exc}") from exc
    result = body.get("data", {}).get("result") if isinstance(body, dict) else None
    if not isinstance(body, dict) or body.get("status") != "success" or not isinstance(result, list):
        raise PrometheusUnavailable(f"prometheus at {url} answered {str(body)[:200]} to {promql!r}")
    return result


def _by_link(samples: list[dict]) -> dict[str, float]:
    return {str(s.get("metric", {}).get("link", "")): float(s["value"][1]) for s in samples}


def telemetry_payload(url: str, window_s: float, poll_interval_s: float,
                      timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """The ``/netkv/telemetry`` payload read through Prometheus (see the module doc); links with
    no rate yet (fewer than two scrapes in the window) have a null ``sample_time`` (idle)."""
    window = f"{max(1, round(window_s * 1000))}ms"
    rates = _by_link(query(url, f"rate(netkv_link_transmit_bytes_total[{window}])", timeout_s))
    stamps = query(url, "max(timestamp(netkv_link_transmit_bytes_total))", timeout_s)
    capacity = _by_link(query(url, "netkv_link_capacity_bytes_per_second", timeout_s))
    up = _by_link(query(url, "netkv_link_up", timeout_s))
    age = query(url, "max(netkv_telemetry_poll_age_seconds)", timeout_s)
    if not stamps or not capacity:
        raise PrometheusUnavailable(f"prometheus at {url} has no netkv link series yet (exporter not scraped)")
    sampled = float(stamps[0]["value"][1]) - max(0.0, float(age[0]["value"][1]) if age else 0.0)
    links: dict[str, dict] = {}
    for name, cap_bytes in capacity.items():
        cap = cap_bytes * 8.0
        rate = rates.get(name)
        tx = 0.0 if rate is None or not math.isfinite(rate) else rate * 8.0
        links[name] = {"capacity_bps": cap, "tx_bps": tx,
                       "utilisation": min(1.0, tx / cap) if cap > 0 else 0.0,
                       "drops": 0, "sample_time": sampled if rate is not None else None,
                       "down": up.get(name, 1.0) <= 0.0}
    return {"time": sampled, "poll_interval_s": poll_interval_s, "links": links}
