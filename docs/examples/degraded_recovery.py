"""Degraded and recovered, measured: `netkv oracle serve` reading a real Prometheus that scrapes the
controller's exporter (a fake switch's counters, on loopback); Prometheus is stopped, then started
again, and the service's /healthz is printed every 0.5 s. Run from the repository root (root not
needed, /usr/bin/prometheus is): .venv/bin/python docs/examples/degraded_recovery.py
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import httpx

from controller.exporter import export, serve
from controller.prometheus_server import PrometheusServer, free_port
from controller.telemetry import LinkTelemetry, PortSample
from scheduler.service.pricing import load_pricer
from topology.model import switch_dpid, switch_ports

RATE_BYTES_S = 1e9
"""The fake uplink's rate."""


def main() -> None:
    tree = load_pricer().tree
    tel = LinkTelemetry(tree, poll_interval_s=0.5)
    tor, agg = tree.tor_name(0), tree.agg_name(0, 0)
    port = next(p for p, nb in switch_ports(tree, tor).items() if nb == agg)
    dpid = switch_dpid(tree, tor)
    metrics_port, prom_port, service_port = free_port(), free_port(), free_port()
    exporter, _ = serve(export(tel), metrics_port)
    stop = threading.Event()

    def poll_switch() -> None:  # what the controller's poll of the switch would feed
        t0 = time.time()
        while not stop.wait(0.25):
            dt = time.time() - t0
            tel.update(dpid, port, PortSample(int(RATE_BYTES_S * dt), 0, 0, 0, dt), time.time())

    threading.Thread(target=poll_switch, daemon=True).start()
    prom = PrometheusServer([f"127.0.0.1:{metrics_port}"], scrape_interval_s=0.5, port=prom_port).start()
    service = subprocess.Popen([sys.executable, "-m", "scripts.netkv", "oracle", "serve", "--port", str(service_port),
                                "--telemetry", f"prometheus:{prom.url}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{service_port}"
    t0 = time.time()

    def show(event: str, times: int) -> None:
        for _ in range(times):
            time.sleep(0.5)
            try:
                h = httpx.get(f"{url}/healthz", timeout=1.0).json()
                state = f"{h['status']:<8} age {h.get('telemetry_age_s')} {(h.get('reason') or '')[:70]}"
            except httpx.HTTPError as exc:
                state = f"no answer ({exc})"
            print(f"{time.time() - t0:6.1f} s  {event:<20} {state}", flush=True)

    try:
        show("running", 16)
        prom.stop()
        show("prometheus stopped", 8)
        prom = PrometheusServer([f"127.0.0.1:{metrics_port}"], scrape_interval_s=0.5, port=prom_port).start()
        show("prometheus started", 12)
        print("\n".join(line for line in httpx.get(f"{url}/metrics").text.splitlines()
                        if line.startswith(("netkv_oracle_degraded ", "netkv_oracle_degraded_answers_total"))))
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(10)
        prom.stop()
        stop.set()
        exporter.shutdown()


if __name__ == "__main__":
    main()
