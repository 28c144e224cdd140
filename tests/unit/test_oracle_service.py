"""The oracle HTTP service's contract: prices, validation, degraded telemetry, reservations, auth,
and the controller's Prometheus exporter (in process, through httpx's ASGI transport)."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from controller.exporter import LinkCollector, export
from controller.telemetry import LinkTelemetry, PortSample
from scheduler.decision.oracle import OracleQuery, make_oracle
from scheduler.decision.telemetry import TelemetryHistory, TelemetrySnapshot
from scheduler.service.app import OracleService, create_app
from scheduler.service.pricing import load_pricer
from scheduler.service.sources import ReplaySource, SourceUnavailableError, TelemetryMonitor
from topology.model import switch_dpid, switch_ports
from topology.wiring import nic_ip

NOW = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> float:
        return self.t


class Client:
    """Sync facade over httpx's ASGI transport (no server, no threads)."""

    def __init__(self, app, headers: dict | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://oracle",
                                      headers=headers)

    def request(self, method: str, url: str, **kw) -> httpx.Response:
        return self.loop.run_until_complete(self.http.request(method, url, **kw))

    def post(self, url: str, **kw) -> httpx.Response:
        return self.request("POST", url, **kw)

    def close(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.close()


class FlakySource:
    """A source that fails while ``down`` and returns ``snap`` otherwise."""

    kind = "ryu"

    def __init__(self, snap: TelemetrySnapshot) -> None:
        self.snap = snap
        self.down = True

    def poll(self) -> TelemetrySnapshot:
        if self.down:
            raise SourceUnavailableError("telemetry at http://127.0.0.1:1 unreachable: connection refused")
        return self.snap


@pytest.fixture(scope="module")
def pricer():
    return load_pricer()


@pytest.fixture()
def service(pricer):
    pricer_ = load_pricer()  # a fresh one: reservations must not leak between tests
    return OracleService(pricer_, clock=Clock())


@pytest.fixture()
def client(service):
    c = Client(create_app(service))
    yield c
    c.close()


def names(p, gpus) -> list[str]:
    return [p.tree.gpu_name(g) for g in gpus]


def body(p, n: int = 6, nbytes: int = 256 << 20) -> dict:
    return {"prefill": p.tree.gpu_name(p.prefill[0]), "candidates": names(p, p.decode[:n]), "bytes": [nbytes] * n}


def congested(p, util: float = 0.9) -> TelemetrySnapshot:
    """Every fabric link above the NICs busy at ``util``."""
    snap = TelemetrySnapshot.idle(p.tree, NOW)
    snap.utilisation[p.tree.b_tor_agg:p.tree.n_links] = util
    return snap


# --------------------------------------------------------------------------- contract
def test_cost_answers_seconds_tiers_and_bottlenecks_per_candidate(client, service) -> None:
    p = service.pricer
    req = body(p, n=len(p.decode))
    out = client.post("/v1/cost", json=req)
    assert out.status_code == 200
    data = out.json()
    n = len(p.decode)
    assert len(data["seconds"]) == len(data["tier"]) == len(data["bottleneck"]) == n
    assert data["source"] == "static" and data["degraded"] is False and data["telemetry_age_s"] is None
    assert all(s > 0 for s in data["seconds"])
    # an idle fabric: a farther tier never cheaper, and every bottleneck a link of the path
    by_tier = {}
    for s, t in zip(data["seconds"], data["tier"]):
        by_tier.setdefault(t, []).append(s)
    tiers = sorted(by_tier)
    assert all(max(by_tier[a]) <= min(by_tier[b]) for a, b in zip(tiers, tiers[1:]))
    links = {link["name"] for link in client.request("GET", "/v1/topology").json()["links"]}
    assert all(b in links for b in data["bottleneck"])
    zero = client.post("/v1/cost", json={**req, "bytes": [0] * n}).json()
    assert zero["seconds"] == [0.0] * n and zero["bottleneck"] == [None] * n


def test_tokens_priced_as_their_kv_bytes_and_addresses_as_host_names(client, service) -> None:
    p = service.pricer
    req = body(p, n=4, nbytes=3000 * p.cfg.model.kv_bytes_per_token)
    by_bytes = client.post("/v1/cost", json=req).json()["seconds"]
    by_tokens = client.post("/v1/cost", json={**{k: v for k, v in req.items() if k != "bytes"},
                                              "tokens": [3000] * 4}).json()["seconds"]
    assert by_tokens == by_bytes
    addrs = [f"{nic_ip(p.tree, g)}:9470" for g in p.decode[:4]]
    by_addr = client.post("/v1/cost", json={**req, "candidates": addrs}).json()["seconds"]
    assert by_addr == by_bytes
    bigger = client.post("/v1/cost", json={**req, "model": "llama-3-70b", "tokens": [3000] * 4, "bytes": None})
    assert bigger.status_code == 200 and bigger.json()["seconds"][0] > by_bytes[0]


def test_topology_lists_instances_by_name_and_address(client, service) -> None:
    topo = client.request("GET", "/v1/topology").json()
    p = service.pricer
    assert [i["host"] for i in topo["instances"]["decode"]] == names(p, p.decode)
    assert topo["instances"]["prefill"][0]["nic_ip"] == nic_ip(p.tree, p.prefill[0])
    assert len(topo["links"]) == p.tree.n_links and topo["tiers"][3] == "cross-pod"
    assert "/v1/cost" in client.request("GET", "/openapi.json").json()["paths"]


# --------------------------------------------------------------------------- bad input
def _loc_names(resp: httpx.Response) -> str:
    return json.dumps(resp.json()["detail"])


@pytest.mark.parametrize("change, field", [
    (lambda b: b.pop("candidates"), "candidates"),
    (lambda b: b.pop("prefill"), "prefill"),
    (lambda b: b["candidates"].__setitem__(1, "p9t9s9g9"), '"candidates", 1'),
    (lambda b: b["candidates"].__setitem__(2, "10.9.9.9:9470"), '"candidates", 2'),
    (lambda b: b.__setitem__("prefill", b["candidates"][0]), '"prefill"'),  # a decode instance
    (lambda b: b["bytes"].__setitem__(0, -5), '"bytes", 0'),
    (lambda b: b["bytes"].__setitem__(3, 1.5), '"bytes", 3'),
    (lambda b: b["bytes"].pop(), "'bytes' has 5 entries"),
    (lambda b: b.__setitem__("tokens", [1] * 6), "exactly one of 'bytes' and 'tokens'"),
    (lambda b: b.update(tokens=[1] * 6, bytes=None, model="gpt-9"), '"model"'),
    (lambda b: b.__setitem__("start_s", -1.0), '"start_s"'),
    (lambda b: b.__setitem__("candidates", []), '"candidates"'),
    (lambda b: b.__setitem__("colour", "red"), '"colour"'),
])
def test_invalid_cost_requests_get_422_naming_the_field(client, service, change, field) -> None:
    req = body(service.pricer)
    change(req)
    resp = client.post("/v1/cost", json=req)
    assert resp.status_code == 422
    assert field in _loc_names(resp)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_sizes_are_rejected(client, service, literal) -> None:
    req = body(service.pricer, n=2)
    text = json.dumps(req).replace(str(req["bytes"][1]), literal, 1)
    resp = client.post("/v1/cost", content=text, headers={"content-type": "application/json"})
    assert resp.status_code == 422 and '"bytes"' in _loc_names(resp)
    sel = {**req, "loads": [0.1, 0.2]}
    text = json.dumps(sel).replace("0.2", literal)
    resp = client.post("/v1/select", content=text, headers={"content-type": "application/json"})
    assert resp.status_code == 422 and '"loads"' in _loc_names(resp)


def test_oversized_wrong_type_and_malformed_bodies(client, service) -> None:
    big = client.post("/v1/cost", content=b" " * (10 << 20), headers={"content-type": "application/json"})
    assert big.status_code == 413

    async def chunks():  # no Content-Length: the limit holds on the bytes read
        for _ in range(12):
            yield b" " * (1 << 20)

    streamed = client.post("/v1/cost", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    text = client.post("/v1/cost", content=json.dumps(body(service.pricer)), headers={"content-type": "text/plain"})
    assert text.status_code == 415
    malformed = client.post("/v1/cost", content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 422
    assert client.post("/v1/cost", json=[1, 2]).status_code == 422
    assert client.request("DELETE", "/v1/reservations/nope").status_code == 404
    sel = {**body(service.pricer), "loads": [0.0] * 5}
    resp = client.post("/v1/select", json=sel)
    assert resp.status_code == 422 and "'loads' has 5 entries" in _loc_names(resp)


def test_bearer_token_required_when_configured(service) -> None:
    app = create_app(service, token="s3cret")
    anon, wrong, right = Client(app), Client(app, {"Authorization": "Bearer nope"}), \
        Client(app, {"Authorization": "Bearer s3cret"})
    try:
        assert anon.post("/v1/cost", json=body(service.pricer)).status_code == 401
        assert anon.request("GET", "/healthz").status_code == 401
        assert wrong.post("/v1/cost", json=body(service.pricer)).status_code == 401
        assert right.post("/v1/cost", json=body(service.pricer)).status_code == 200
    finally:
        for c in (anon, wrong, right):
            c.close()


# --------------------------------------------------------------------------- telemetry
def test_service_prices_as_the_in_process_oracle_on_the_same_snapshot(service, client) -> None:
    p = service.pricer
    rng = np.random.default_rng(3)
    snap = TelemetrySnapshot.idle(p.tree, NOW - 0.2)
    snap.utilisation[:-1] = rng.uniform(0, 1, p.tree.n_links)
    source = FlakySource(snap)
    source.down = False
    service.monitor = TelemetryMonitor(source, interval_s=0.5, clock=service.clock)
    service.monitor.poll_once()
    req = body(p, n=len(p.decode), nbytes=64 << 20)
    out = client.post("/v1/cost", json=req).json()
    history = TelemetryHistory()
    history.add(snap)
    oracle = make_oracle("telemetry", p.tree, history, 0.0, p.cfg.oracle.min_available_fraction, 30e-6)
    expected = oracle.cost(OracleQuery(p.prefill[0], np.array(p.decode), np.full(len(p.decode), 64 << 20), NOW))
    assert out["seconds"] == pytest.approx(expected.tolist(), rel=1e-12)
    assert out["source"] == "ryu" and not out["degraded"] and out["telemetry_age_s"] == pytest.approx(0.2)
    static = make_oracle("static", p.tree, None, 0.0, 0.1, 30e-6)
    assert out["seconds"] != pytest.approx(static.cost(OracleQuery(
        p.prefill[0], np.array(p.decode), np.full(len(p.decode), 64 << 20), NOW)).tolist())


def test_degraded_while_telemetry_fails_then_recovers_by_itself(service, client) -> None:
    p = service.pricer
    source = FlakySource(congested(p))
    clock = service.clock
    service.monitor = TelemetryMonitor(source, interval_s=0.5, clock=clock)
    req = body(p, n=len(p.decode))
    static = client.post("/v1/cost", json=req).json()  # nothing polled yet
    assert static["degraded"] and "no ryu telemetry yet" in static["degraded_reason"]
    service.monitor.poll_once()
    down = client.post("/v1/cost", json=req).json()
    assert down["degraded"] and "unreachable" in down["degraded_reason"] and down["seconds"] == static["seconds"]
    health = client.request("GET", "/healthz").json()
    assert health["status"] == "degraded" and "unreachable" in health["reason"]
    source.down = False
    service.monitor.poll_once()
    live = client.post("/v1/cost", json=req).json()
    assert not live["degraded"] and live["source"] == "ryu"
    assert max(live["seconds"]) > max(static["seconds"])  # the congestion is priced
    assert client.request("GET", "/healthz").json()["status"] == "ok"
    clock.t += 10.0  # the source answers no more: its snapshot ages past 4 polls
    stale = client.post("/v1/cost", json=req).json()
    assert stale["degraded"] and "old" in stale["degraded_reason"] and stale["seconds"] == static["seconds"]
    metrics = client.request("GET", "/metrics").text
    assert "netkv_oracle_degraded_answers_total" in metrics and 'endpoint="/v1/cost"' in metrics


def test_replay_source_plays_a_recorded_telemetry_csv(pricer, tmp_path: Path) -> None:
    link = pricer.tree.link_name(pricer.tree.b_tor_agg)
    csv_path = tmp_path / "telemetry.csv"
    csv_path.write_text("policy,time_s,link,utilisation\n"
                        f"netkv,0.000,{link},0.5000\nnetkv,0.500,{link},0.8000\n"
                        f"static,0.000,{link},0.1000\n")
    clock = Clock()
    src = ReplaySource(pricer, csv_path, clock=clock)
    first = src.poll()
    assert first.utilisation[pricer.tree.b_tor_agg] == pytest.approx(0.5) and first.time_s == NOW
    clock.t += 0.6
    assert src.poll().utilisation[pricer.tree.b_tor_agg] == pytest.approx(0.8)
    clock.t += 0.5  # one span later: the recording loops
    assert src.poll().utilisation[pricer.tree.b_tor_agg] == pytest.approx(0.5)
    other = ReplaySource(pricer, csv_path, policy="static", clock=clock)
    assert other.poll().utilisation[pricer.tree.b_tor_agg] == pytest.approx(0.1)


# --------------------------------------------------------------------------- reservations and select
def test_reservations_make_later_transfers_on_their_links_dearer(client, service) -> None:
    p = service.pricer
    pre, dst = p.tree.gpu_name(p.prefill[0]), p.tree.gpu_name(p.decode[0])
    req = {"prefill": pre, "candidates": [dst], "bytes": [1 << 30]}
    before = client.post("/v1/cost", json=req).json()["seconds"][0]
    made = client.post("/v1/reservations", json={"prefill": pre, "decode": dst, "bytes": 1 << 30, "duration_s": 5.0})
    assert made.status_code == 201 and made.json()["expires_at"] > NOW
    during = client.post("/v1/cost", json=req).json()["seconds"][0]
    assert during > before * 1.5  # the new transfer shares the reserved one's path
    assert client.request("GET", "/healthz").json()["reservations"] == 1
    assert client.request("DELETE", f"/v1/reservations/{made.json()['id']}").status_code == 204
    assert client.post("/v1/cost", json=req).json()["seconds"][0] == pytest.approx(before)
    assert client.request("DELETE", f"/v1/reservations/{made.json()['id']}").status_code == 404
    client.post("/v1/reservations", json={"prefill": pre, "decode": dst, "bytes": 1 << 30, "duration_s": 1.0})
    service.clock.t += 5.0  # expired
    assert client.request("GET", "/healthz").json()["reservations"] == 0
    assert client.post("/v1/cost", json=req).json()["seconds"][0] == pytest.approx(before)


def test_select_is_netkvs_argmin_and_its_reservation_steers_the_next_choice(client, service) -> None:
    p = service.pricer
    pre = p.tree.gpu_name(p.prefill[0])
    cands = names(p, p.decode[:2])  # equally far on an idle fabric
    sel = {"prefill": pre, "candidates": cands, "bytes": [1 << 30] * 2, "loads": [0.5, 0.0], "reserve": True}
    first = client.post("/v1/select", json=sel).json()
    assert first["choice"] == cands[1] and first["reservation"]["id"]  # the idle one
    assert first["score"] == pytest.approx(first["seconds"])  # its load is 0
    second = client.post("/v1/select", json={**sel, "loads": [0.0, 0.0], "load_weight_s": 0.0}).json()
    assert second["choice"] == cands[0]  # candidate 1's path now carries the reserved transfer


# --------------------------------------------------------------------------- exporter
def test_exporter_turns_port_counters_into_link_metrics(pricer) -> None:
    tree = pricer.tree
    tel = LinkTelemetry(tree, poll_interval_s=0.5)
    tor = tree.tor_name(0)
    dpid = switch_dpid(tree, tor)
    up_port = next(p for p, nb in switch_ports(tree, tor).items() if nb == tree.agg_name(0, 0))
    clock = Clock()
    collector = LinkCollector(tel, clock=clock)
    registry = CollectorRegistry()
    registry.register(collector)
    link = f"{tor}->{tree.agg_name(0, 0)}"
    assert f'netkv_link_transmit_bytes_total{{link="{link}"}}' not in generate_latest(registry).decode()
    for k in range(4):  # 1 MB per 0.5 s on the uplink's tx counter
        tel.update(dpid, up_port, PortSample(5_000 + k * 1_000_000, 0, 7 * k, 0, k * 0.5), NOW + k * 0.5)
    tel.set_down(link, True)
    clock.t = NOW + 2.0
    text = generate_latest(registry).decode()
    assert f'netkv_link_transmit_bytes_total{{link="{link}"}} 3.005e+06' in text  # the switch's own counter
    assert f'netkv_link_drops_total{{link="{link}"}} 21.0' in text
    assert f'netkv_link_up{{link="{link}"}} 0.0' in text
    assert f'netkv_link_capacity_bytes_per_second{{link="{link}"}} 0.0' in text
    assert "netkv_telemetry_poll_age_seconds 0.5" in text
    assert export(LinkTelemetry(tree)) is not None


def test_a_new_snapshot_moves_the_bottleneck_of_a_query_asked_before(service, client) -> None:
    """The same query asked again answers from the snapshot now held: a congested link of its path
    becomes its bottleneck, and a failed one is routed around."""
    p = service.pricer
    src = p.prefill[0]
    far = next(g for g in p.decode if p.tree.tier(src, g) == 3)
    req = {"prefill": p.tree.gpu_name(src), "candidates": [p.tree.gpu_name(far)], "bytes": [256 << 20]}
    idle = client.post("/v1/cost", json=req).json()
    path = [int(i) for i in p.tree.paths(src, np.array([far]))[0] if i != p.tree.pad]
    hot = next(i for i in path if p.link_names[i] != idle["bottleneck"][0] and i >= p.tree.b_tor_agg)
    snap = TelemetrySnapshot.idle(p.tree, NOW)
    snap.utilisation[hot] = 0.99
    source = FlakySource(snap)
    source.down = False
    service.monitor = TelemetryMonitor(source, interval_s=0.5, clock=service.clock)
    service.monitor.poll_once()
    busy = client.post("/v1/cost", json=req).json()
    assert busy["bottleneck"] == [p.link_names[hot]] and busy["seconds"][0] > idle["seconds"][0]
    source.snap = failed = TelemetrySnapshot.idle(p.tree, NOW)
    failed.capacity_factor[hot] = 0.0
    service.monitor.poll_once()
    rerouted = client.post("/v1/cost", json=req).json()
    assert rerouted["bottleneck"] != [p.link_names[hot]] and rerouted["seconds"][0] is not None


def test_openapi_documents_the_cost_and_select_bodies(client) -> None:
    spec = client.request("GET", "/openapi.json").json()
    for path, model in (("/v1/cost", "CostRequest"), ("/v1/select", "SelectRequest")):
        schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith(model)
    assert "prefill" in spec["components"]["schemas"]["CostRequest"]["required"]
