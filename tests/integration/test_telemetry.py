"""Counter arithmetic, port->link mapping, snapshot schema, scheduler-side history, REST client."""
from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np
import pytest

from controller.client import ControllerUnavailable, fetch_snapshot
from controller.telemetry import (
    LinkTelemetry,
    PortSample,
    UnknownDatapathError,
    UnknownLinkError,
    rate_bps,
)
from scheduler.decision.telemetry import (
    TelemetryFormatError,
    TelemetryHistory,
    TelemetrySnapshot,
    snapshot_from_json,
)
from scheduler.decision.telemetry import UnknownLinkError as SchedUnknownLinkError
from topology.model import FatTree, switch_dpid, switch_ports


def _s(tx: int = 0, rx: int = 0, dur: float = 0.0, txd: int = 0, rxd: int = 0) -> PortSample:
    return PortSample(tx_bytes=tx, rx_bytes=rx, tx_dropped=txd, rx_dropped=rxd, duration_s=dur)


@pytest.fixture(scope="module")
def tree() -> FatTree:
    return FatTree()


# --------------------------------------------------------------------------- rate arithmetic
def test_rate_from_deltas_over_switch_duration() -> None:
    assert rate_bps(_s(tx=1000, dur=10.0), _s(tx=126_000, dur=10.5)) == pytest.approx(2e6)
    assert rate_bps(_s(rx=0, dur=1.0), _s(rx=125, dur=2.0), "rx_bytes") == pytest.approx(1000.0)
    assert rate_bps(_s(tx=5, dur=1.0), _s(tx=5, dur=2.0)) == 0.0


def test_rate_backwards_or_stalled_is_none() -> None:
    assert rate_bps(_s(tx=10_000, dur=100.0), _s(tx=50, dur=0.4)) is None  # port reset
    assert rate_bps(_s(tx=2**64 - 10, dur=1.0), _s(tx=5, dur=1.5)) is None  # 64-bit wrap
    assert rate_bps(_s(tx=0, dur=3.0), _s(tx=100, dur=3.0)) is None  # duration did not advance
    assert rate_bps(_s(tx=0, dur=3.0), _s(tx=100, dur=2.0)) is None  # reconnect, duration reset
    with pytest.raises(ValueError, match="rate field"):
        rate_bps(_s(), _s(dur=1.0), "tx_dropped")


def test_port_sample_from_port_stats() -> None:
    stat = SimpleNamespace(tx_bytes=1, rx_bytes=2, tx_dropped=3, rx_dropped=4,
                           duration_sec=5, duration_nsec=250_000_000)
    assert PortSample.from_port_stats(stat) == PortSample(1, 2, 3, 4, 5.25)


# --------------------------------------------------------------------------- port -> link mapping
def test_every_directed_link_measured_exactly_once(tree: FatTree) -> None:
    lt = LinkTelemetry(tree)
    measured: Counter[str] = Counter()
    n_ports = 0
    for sw in tree.switch_names():
        dpid = switch_dpid(tree, sw)
        for port, nb in switch_ports(tree, sw).items():
            n_ports += 1
            links = lt.port_map[(dpid, port)]
            assert links.tx_link == f"{sw}->{nb}"
            measured[links.tx_link] += 1
            if nb in tree.gpu_names:
                assert links.rx_link == f"{nb}->{sw}"
                measured[links.rx_link] += 1
            else:
                assert links.rx_link is None  # measured by the neighbour switch's tx instead
    assert len(lt.port_map) == n_ports
    all_links = {tree.link_name(i) for i in range(tree.n_links)}
    assert set(measured) == all_links
    assert set(measured.values()) == {1}
    # all host links, both directions, NVLink and NIC
    for g in range(tree.n_gpus):
        for sw in (tree.server_name(g), tree.tor_name(g // tree.gpt)):
            assert f"{tree.gpu_name(g)}->{sw}" in measured and f"{sw}->{tree.gpu_name(g)}" in measured


# --------------------------------------------------------------------------- LinkTelemetry
def test_update_first_sample_remembered_then_rates(tree: FatTree) -> None:
    lt = LinkTelemetry(tree, capacity_bps={"p0t0->p0a1": 1e6, "p0t0s0g0->p0t0": 4e6})
    tor = switch_dpid(tree, "p0t0")
    up_port = tree.gpt + 1 + 1  # to p0a1
    host_port = 1  # to p0t0s0g0
    lt.update(tor, up_port, _s(tx=0, dur=1.0), now=100.0)
    lt.update(tor, host_port, _s(tx=0, rx=0, dur=1.0), now=100.0)
    snap = lt.snapshot()
    assert snap["time"] == 100.0
    assert snap["links"]["p0t0->p0a1"]["sample_time"] is None
    assert snap["links"]["p0t0->p0a1"]["utilisation"] == 0.0

    lt.update(tor, up_port, _s(tx=62_500, txd=3, dur=1.5), now=100.5)  # 1 Mbit/s over 0.5 s
    lt.update(tor, host_port, _s(tx=12_500, rx=125_000, rxd=7, dur=1.5), now=100.5)
    links = lt.snapshot()["links"]
    assert links["p0t0->p0a1"] == {
        "capacity_bps": 1e6, "tx_bps": pytest.approx(1e6), "utilisation": pytest.approx(1.0),
        "drops": 3, "sample_time": 100.5, "down": False,
    }
    assert links["p0t0s0g0->p0t0"]["tx_bps"] == pytest.approx(2e6)  # from the ToR port's rx
    assert links["p0t0s0g0->p0t0"]["utilisation"] == pytest.approx(0.5)
    assert links["p0t0s0g0->p0t0"]["drops"] == 7
    assert links["p0t0->p0t0s0g0"]["tx_bps"] == pytest.approx(2e5)
    nic_bps = tree.link_capacity_gbit_s["nic"] * 1e9
    assert links["p0t0->p0t0s0g0"]["capacity_bps"] == pytest.approx(nic_bps)  # model default

    # over capacity clamps to 1; a reset interval is discarded and becomes the new baseline
    lt.update(tor, up_port, _s(tx=62_500 + 250_000, txd=3, dur=2.0), now=101.0)
    assert lt.snapshot()["links"]["p0t0->p0a1"]["utilisation"] == 1.0
    lt.update(tor, up_port, _s(tx=10, dur=0.1), now=101.5)
    after_reset = lt.snapshot()["links"]["p0t0->p0a1"]
    assert after_reset["sample_time"] == 101.0 and after_reset["tx_bps"] == pytest.approx(4e6)
    lt.update(tor, up_port, _s(tx=10 + 31_250, dur=0.6), now=102.0)
    assert lt.snapshot()["links"]["p0t0->p0a1"]["utilisation"] == pytest.approx(0.5)
    assert lt.snapshot()["time"] == 102.0


def test_unknown_ports_and_datapaths(tree: FatTree) -> None:
    lt = LinkTelemetry(tree)
    lt.update(switch_dpid(tree, "c0"), 0xFFFFFFFE, _s(dur=1.0), now=1.0)  # OFPP_LOCAL ignored
    with pytest.raises(UnknownDatapathError, match="0x99"):
        lt.update(0x99, 1, _s(), now=1.0)
    with pytest.raises(UnknownLinkError, match="nope"):
        lt.set_capacity("nope", 1.0)
    with pytest.raises(ValueError):
        LinkTelemetry(tree, poll_interval_s=0)


def test_snapshot_schema_is_design_md(tree: FatTree) -> None:
    lt = LinkTelemetry(tree, poll_interval_s=0.25)
    assert lt.snapshot()["time"] is None
    dpid = switch_dpid(tree, "c1")
    lt.update(dpid, 1, _s(tx=0, dur=1.0), now=5.0)
    lt.update(dpid, 1, _s(tx=1000, dur=2.0), now=6.0)
    snap = json.loads(json.dumps(lt.snapshot()))  # JSON-serialisable as is
    assert set(snap) == {"time", "poll_interval_s", "links"}
    assert snap["time"] == 6.0 and snap["poll_interval_s"] == 0.25
    assert set(snap["links"]) == {tree.link_name(i) for i in range(tree.n_links)}
    for entry in snap["links"].values():
        assert set(entry) == {"capacity_bps", "tx_bps", "utilisation", "drops", "sample_time", "down"}
        assert 0.0 <= entry["utilisation"] <= 1.0
    assert sum(e["sample_time"] is not None for e in snap["links"].values()) == 1


# --------------------------------------------------------------------------- scheduler side
def test_snapshot_from_json_aligns_to_link_indices(tree: FatTree) -> None:
    lt = LinkTelemetry(tree)
    dpid = switch_dpid(tree, "p1a0")
    port = tree.config.tors_per_pod + 1  # to c0
    cap = lt.snapshot()["links"]["p1a0->c0"]["capacity_bps"]
    lt.update(dpid, port, _s(tx=0, dur=1.0), now=10.0)
    lt.update(dpid, port, _s(tx=int(cap / 8 * 0.3), dur=2.0), now=11.0)
    lt.set_capacity("p1a0->c1", 0.0)  # down
    lt.set_capacity("p0t0->p0a0", 0.5 * tree.capacity[tree.link_index[("p0t0", "p0a0")]] * 8)
    snap = snapshot_from_json(tree, lt.snapshot())
    assert isinstance(snap, TelemetrySnapshot) and snap.time_s == 11.0
    assert snap.utilisation.shape == snap.capacity_factor.shape == (tree.n_links + 1,)
    i = tree.link_index[("p1a0", "c0")]
    assert snap.utilisation[i] == pytest.approx(0.3)
    assert np.count_nonzero(snap.utilisation) == 1
    assert snap.utilisation[tree.pad] == 0.0 and snap.capacity_factor[tree.pad] == 1.0
    assert snap.capacity_factor[tree.link_index[("p1a0", "c1")]] == 0.0
    assert snap.capacity_factor[tree.link_index[("p0t0", "p0a0")]] == pytest.approx(0.5)
    assert np.count_nonzero(snap.capacity_factor != 1.0) == 2


def test_snapshot_from_json_scaled_nominal_and_errors(tree: FatTree) -> None:
    payload = {"time": 1.0, "poll_interval_s": 0.5, "links": {
        "p0t0->p0a1": {"capacity_bps": 20e6, "tx_bps": 5e6, "utilisation": 0.25,
                       "drops": 0, "sample_time": 1.0}}}
    snap = snapshot_from_json(tree, payload, nominal_capacity_bps={"p0t0->p0a1": 40e6})
    i = tree.link_index[("p0t0", "p0a1")]
    assert snap.capacity_factor[i] == 0.5 and snap.utilisation[i] == 0.25
    bad = {"time": 1.0, "links": {"p0t0->p9a9": payload["links"]["p0t0->p0a1"]}}
    with pytest.raises(SchedUnknownLinkError, match="p0t0->p9a9"):
        snapshot_from_json(tree, bad)
    with pytest.raises(SchedUnknownLinkError, match="garbage"):
        snapshot_from_json(tree, {"time": 1.0, "links": {"garbage": {}}})
    with pytest.raises(TelemetryFormatError, match="utilisation"):
        snapshot_from_json(tree, {"time": 1.0, "links": {"p0t0->p0a1": {"capacity_bps": 1.0}}})
    with pytest.raises(TelemetryFormatError, match="no poll"):
        snapshot_from_json(tree, {"time": None, "links": {}})
    with pytest.raises(TelemetryFormatError):
        snapshot_from_json(tree, {"links": {}})


def _snap(tree: FatTree, t: float) -> TelemetrySnapshot:
    return TelemetrySnapshot.idle(tree, t)


def test_history_at_semantics(tree: FatTree) -> None:
    h = TelemetryHistory(max_age_s=2.0)
    assert h.at(5.0) is None and h.latest() is None
    for t in (1.0, 1.5, 3.0, 2.0):  # out of order insert is sorted
        h.add(_snap(tree, t))
    assert [h.at(t).time_s for t in (1.0, 1.2, 1.5, 1.99, 2.0, 2.9, 3.0, 100.0)] == [
        1.0, 1.0, 1.5, 1.5, 2.0, 2.0, 3.0, 3.0]
    assert h.at(0.999) is None  # staleness beyond the oldest sample
    replacement = _snap(tree, 2.0)
    h.add(replacement)
    assert h.at(2.5) is replacement and len(h) == 4
    # bounded age: newest 3.6 -> cut-off 1.6; keep 1.5 (answers at(1.6)), drop 1.0
    h.add(_snap(tree, 3.6))
    assert [s.time_s for s in (h.at(t) for t in (1.6, 1.55))] == [1.5, 1.5]
    assert h.at(1.2) is None and len(h) == 4
    h.add(_snap(tree, 10.0))
    assert len(h) == 2 and h.at(8.0).time_s == 3.6 and h.latest().time_s == 10.0
    with pytest.raises(ValueError):
        TelemetryHistory(max_age_s=-1)


# --------------------------------------------------------------------------- REST client
class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        bodies = {
            "/netkv/telemetry": (200, json.dumps({"time": 1.0, "poll_interval_s": 0.5, "links": {}})),
            "/bad": (200, "{not json"),
            "/list": (200, "[1, 2]"),
        }
        if self.path == "/slow":
            time.sleep(1.0)
            code, body = 200, "{}"
        else:
            code, body = bodies.get(self.path, (404, "missing"))
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())
        except OSError:
            pass  # client gave up (timeout test)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_fetch_snapshot_ok(server: str) -> None:
    assert fetch_snapshot(server + "/netkv/telemetry") == {"time": 1.0, "poll_interval_s": 0.5, "links": {}}


@pytest.mark.parametrize(
    "path,msg", [("/bad", "invalid JSON"), ("/list", "expected an object"), ("/nope", "HTTP 404")]
)
def test_fetch_snapshot_bad_answers(server: str, path: str, msg: str) -> None:
    with pytest.raises(ControllerUnavailable, match=msg) as exc:
        fetch_snapshot(server + path)
    assert server + path in str(exc.value)


def test_fetch_snapshot_timeout(server: str) -> None:
    with pytest.raises(ControllerUnavailable, match="/slow"):
        fetch_snapshot(server + "/slow", timeout_s=0.2)


def test_fetch_snapshot_connection_refused() -> None:
    with socket.socket() as s:  # find a free port, then close it so nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/netkv/telemetry"
    with pytest.raises(ControllerUnavailable, match=f"127.0.0.1:{port}"):
        fetch_snapshot(url, timeout_s=0.5)


def test_poller_stamps_snapshots_taken_before_the_replay_clock_started(tree: FatTree) -> None:
    """The emulate poller (scheduler.emulate.orchestrator.TelemetryPoller): while a replay prepares (flow slots,
    pre-roll, agent reset) its clock has not started; the newest snapshot of that time enters the
    history stamped before 0 once it starts, the later ones at their virtual times."""
    pytest.importorskip("mininet", reason="scheduler.emulate.orchestrator imports the Mininet topology")
    from scheduler.decision.telemetry import TelemetryHistory
    from scheduler.emulate.orchestrator import TelemetryPoller
    from scheduler.emulate.replay import Clock

    lt = LinkTelemetry(tree)

    class Fab:
        def telemetry(self, timeout_s: float = 1.0) -> dict:
            return {**lt.snapshot(), "time": time.time()}  # a fresh controller poll every call

    class Exe:
        def shaping_factor(self) -> np.ndarray:
            return np.ones(tree.n_links + 1)

    nominal = {tree.link_name(i): float(tree.capacity[i] * 8) for i in range(tree.n_links)}
    poller = TelemetryPoller(Fab(), tree, nominal, interval_s=0.05)
    clock, history = Clock(1.0), TelemetryHistory()
    poller.attach("p", clock, history, Exe())
    poller.start()
    try:
        time.sleep(0.4)  # polls while the clock has not started: held back
        assert len(history) == 0 and poller.rows == []
        clock.start()
        time.sleep(0.3)
    finally:
        poller.stop()
    times = [r[1] for r in poller.rows]
    # the held-back snapshot first, stamped before 0; at most one more before 0 (a poll in flight
    # when the clock started is stamped at its own time); the rest after, in order
    assert times[0] < 0 and times == sorted(times), times
    assert sum(t < 0 for t in times) <= 2 and times[-1] > 0.2, times
    assert times[0] > -0.1 and len(history) == len(times)
