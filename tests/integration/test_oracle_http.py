"""The oracle service over real HTTP: `netkv oracle serve` as a subprocess driven by the client and
the example router scorer, and a real Prometheus scraping the controller's exporter feeding it."""
from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from controller.exporter import export, serve
from controller.prometheus_server import PROMETHEUS_BIN, PrometheusServer, free_port
from controller.telemetry import LinkTelemetry, PortSample
from scheduler.service.client import OracleClient, OracleRequestError
from scheduler.service.pricing import load_pricer
from scheduler.service.sources import PrometheusSource, TelemetryMonitor
from topology.model import switch_dpid, switch_ports

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout_s} s")


@pytest.fixture()
def served():
    """`netkv oracle serve` on a free loopback port, with a token; stopped afterwards."""
    port = free_port()
    env = {**os.environ, "NETKV_ORACLE_TOKEN": "t0ken"}
    proc = subprocess.Popen([sys.executable, "-m", "scripts.netkv", "oracle", "serve", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"oracle serve exited: {proc.stdout.read().decode() if proc.stdout else ''}")
        try:
            return httpx.get(f"{url}/healthz", headers={"Authorization": "Bearer t0ken"}, timeout=0.5).is_success
        except httpx.HTTPError:
            return False

    try:
        _wait(up, START_TIMEOUT_S, "oracle serve answers /healthz")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def test_served_oracle_over_real_http(served: str, capsys) -> None:
    with OracleClient(served, token="t0ken") as oracle:
        topo = oracle.topology()
        prefill = topo["instances"]["prefill"][0]["host"]
        decodes = [d["host"] for d in topo["instances"]["decode"]]
        costs = oracle.cost(prefill, decodes, nbytes=[1 << 28] * len(decodes))
        assert costs.source == "static" and not costs.degraded and len(costs.seconds) == len(decodes)
        pick = oracle.select(prefill, decodes[:2], [0.0, 0.0], nbytes=[1 << 30] * 2, reserve=True)
        assert pick.reservation_id and oracle.health()["reservations"] == 1
        oracle.release(pick.reservation_id)
        with pytest.raises(OracleRequestError) as err:
            oracle.cost(prefill, ["p9t9s9g9"], nbytes=[1])
        assert err.value.status == 422 and "candidates" in str(err.value.detail)
    with OracleClient(served, token="wrong") as intruder, pytest.raises(OracleRequestError) as err:
        intruder.health()
    assert err.value.status == 401
    os.environ["NETKV_ORACLE_TOKEN"] = "t0ken"
    try:
        runpy.run_path(str(ROOT / "docs/examples/router_scorer.py"), run_name="scorer")["main"](served)
    finally:
        del os.environ["NETKV_ORACLE_TOKEN"]
    printed = capsys.readouterr().out
    assert "chosen: 10." in printed and "telemetry: static" in printed


@pytest.mark.skipif(not Path(PROMETHEUS_BIN).exists(),
                    reason=f"{PROMETHEUS_BIN} missing: install the Debian package 'prometheus' "
                           "(scripts/setup_emulation.sh)")
def test_real_prometheus_feeds_the_service_the_exporters_rates() -> None:
    pricer = load_pricer()
    tree = pricer.tree
    tel = LinkTelemetry(tree, poll_interval_s=0.2)
    tor = tree.tor_name(0)
    agg = tree.agg_name(0, 0)
    link = f"{tor}->{agg}"
    port_no = next(p for p, nb in switch_ports(tree, tor).items() if nb == agg)
    dpid = switch_dpid(tree, tor)
    rate = 0.8 * tree.capacity[tree.link_index[(tor, agg)]]  # bytes/s: the uplink 80 % busy
    registry = export(tel)
    metrics_port = free_port()
    server, _thread = serve(registry, metrics_port)
    stop = threading.Event()

    def poll_switch() -> None:  # the fake switch's counters, as the controller would poll them
        t0 = time.time()
        while not stop.wait(0.1):
            dt = time.time() - t0
            tel.update(dpid, port_no, PortSample(int(rate * dt), 0, 0, 0, dt), time.time())

    feeder = threading.Thread(target=poll_switch, daemon=True)
    feeder.start()
    prom = PrometheusServer([f"127.0.0.1:{metrics_port}"], scrape_interval_s=0.2)
    try:
        with prom:
            folder, pid = prom.folder, prom.proc.pid if prom.proc else None
            source = PrometheusSource(pricer, prom.url, window_s=1.0)
            monitor = TelemetryMonitor(source, interval_s=0.2, max_age_s=3.0)

            def measured():
                monitor.poll_once()
                state = monitor.state()
                snap = state.snapshot
                i = tree.link_index[(tor, agg)]
                return state if snap is not None and snap.utilisation[i] > 0.7 else None  # after the ramp

            state = _wait(measured, 30.0, "the uplink's rate read through Prometheus")
            assert state.snapshot.utilisation[tree.link_index[(tor, agg)]] == pytest.approx(0.8, abs=0.1)
            assert not state.degraded and state.source == "prometheus"
            # a candidate behind that uplink now costs more than on the idle fabric
            src = tree.gpu_index("p0t0s0g0")
            far = [g for g in pricer.decode if link in [pricer.link_names[x] for x in tree.path(src, g)]]
            assert far, "some decode instance is reached over the busy uplink"
            pricer.set_snapshot(None)
            idle = pricer.price(src, far, [1 << 28] * len(far), time.time(), time.time()).seconds
            pricer.set_snapshot(state.snapshot)
            busy = pricer.price(src, far, [1 << 28] * len(far), time.time(), time.time())
            assert np.all(np.array(busy.seconds) > np.array(idle)) and link in busy.bottleneck
    finally:
        stop.set()
        feeder.join(timeout=5)
        server.shutdown()
    assert folder is not None and not folder.exists()
    assert pid is not None and not Path(f"/proc/{pid}").exists()


def test_service_oracle_prices_as_the_in_process_oracle_and_reserves(served: str) -> None:
    """The scheduler's oracle over HTTP (what ``emulate --oracle-service`` decides with) returns the
    in-process static oracle's prices on an idle fabric, and its commitments make the service's
    later prices on the shared path dearer until released."""
    from scheduler.decision.oracle import OracleQuery, make_oracle
    from scheduler.service.remote import ServiceOracle

    pricer = load_pricer()
    tree = pricer.tree
    os.environ["NETKV_ORACLE_TOKEN"] = "t0ken"
    try:
        remote = ServiceOracle(tree, served, time_scale=2.0, reserve=True)
    finally:
        del os.environ["NETKV_ORACLE_TOKEN"]
    local = make_oracle("static", tree, None, 0.0, 0.1, 30e-6)
    rng = np.random.default_rng(3)
    src = pricer.prefill[0]
    dsts = np.array(pricer.decode, dtype=np.int64)
    for _ in range(5):
        nbytes = rng.integers(1, 1 << 31, size=dsts.size).astype(float)
        query = OracleQuery(src, dsts, nbytes, now=10.0)
        assert remote.cost(query) == pytest.approx(local.cost(query), rel=1e-9)
    one = np.array([1 << 30], dtype=float)
    far = dsts[-1:]
    before = remote.cost(OracleQuery(src, far, one, now=10.0))[0]
    remote.commit(src, int(far[0]), 10.0, 10.0 + before, nbytes=float(1 << 30), key=7)
    during = remote.cost(OracleQuery(src, far, one, now=10.0))[0]
    assert during > before * 1.5  # the committed transfer shares the whole path
    remote.done(7, 10.5)
    assert remote.cost(OracleQuery(src, far, one, now=10.0))[0] == pytest.approx(before, rel=1e-9)
    assert remote.calls == 8 and remote.degraded_answers == 0
    remote.close()
