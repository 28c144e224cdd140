"""Scenario executor, calibration and fidelity monitor on one running 64-GPU fabric (root;
~1.5 minutes on a 2-core VM). Their pure arithmetic: tests/unit/test_emulate_parts.py.

Measured figures are printed with ``[measured]`` (run with ``-s`` to see them).
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import experiment as _exp

from scheduler.emulate.calibration import GOODPUT_MIN_RATIO, goodput_bytes
from scheduler.emulate.scenario_exec import ScenarioExecutor, background_window_bytes, egress_intf_name
from scheduler.model.scenario import Action
from topology.fabric import tier_samples
from topology.model import FatTree

ROOT = Path(__file__).resolve().parents[2]
TREE = FatTree()
SCALE = 2.5e-5


# =========================================================================== emulation
OFP_PORT, REST_PORT = 16663, 18090
AGENT_PORT = 9470
AGENT_GPUS = sorted({g for pair in tier_samples(TREE).values() for g in pair})  # 0, 1, 4, 8, 16
BUSY_WAIT_S, BUSY_POLL_S = 300.0, 20.0


@pytest.fixture(scope="module")
def fabric(tmp_path_factory):
    from controller.process import controlled_fabric
    from topology.fabric import FabricBusyError

    deadline = time.monotonic() + BUSY_WAIT_S
    while True:
        fab = controlled_fabric(TREE, scale=SCALE, run_dir=tmp_path_factory.mktemp("fabric"), ofp_port=OFP_PORT,
                     rest_port=REST_PORT)
        try:
            fab.start()
            break
        except FabricBusyError as exc:
            if time.monotonic() > deadline:
                pytest.skip(f"fabric busy for {BUSY_WAIT_S:g} s: {exc}")
            time.sleep(BUSY_POLL_S)
    print(f"\n[measured] 64-GPU fabric up in {fab.timings['up_s']:.1f} s")
    try:
        yield fab
    finally:
        fab.stop()


@pytest.fixture(scope="module")
def agents(fabric, tmp_path_factory):
    """ControlServer + agents on the hosts the tests use; yields the ControlServer."""
    from hosts.control import ControlServer

    run = tmp_path_factory.mktemp("agents")
    control = ControlServer(run / "control.sock")
    procs = []
    try:
        for g in AGENT_GPUS:
            name = TREE.gpu_name(g)
            with (run / f"{name}.log").open("wb") as log:  # the agent keeps its own copy of the descriptor
                procs.append(fabric.host(name).popen(
                    [sys.executable, "-m", "hosts.agent", "--name", name, "--gpu", str(g), "--listen-host", "0.0.0.0",
                     "--port", str(AGENT_PORT), "--control", str(run / "control.sock")],
                    cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
        control.wait_hello([TREE.gpu_name(g) for g in AGENT_GPUS], timeout=20)
        yield control
    finally:
        control.close()  # agents exit when their control connection closes
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


@pytest.fixture
def executor(fabric, tmp_path):
    exe = ScenarioExecutor(fabric, TREE, SCALE, 1.0, tmp_path)
    try:
        yield exe
    finally:
        exe.close()


def _transfer_mbit(control, fabric, src: int, dst: int, nbytes: int, timeout: float = 30.0) -> float:
    from scheduler.emulate.calibration import _transfer

    _, recv = _transfer(control, TREE, fabric, src, dst, AGENT_PORT, nbytes, timeout)
    return nbytes * 8 / (recv.t_end - recv.t_start) / 1e6


def _utilisation(fabric, link_name: str) -> float:
    return fabric.telemetry()["links"][link_name]["utilisation"]


@pytest.mark.emulation
def test_executor_interfaces_match_model(fabric, executor):
    for i in range(TREE.n_links):
        intf = executor.egress_intf(i)
        assert (intf.node.name, intf.name) == egress_intf_name(TREE, i)


GREEDY_PAIRS = ((9, 30), (10, 29), (11, 28), (8, 31), (13, 26))
"""Cross-pod (src, dst) GPU pairs of the greedy-flow measurement, one per run until one is good:
its rate figures are judged by the best run (on this 2-core VM one run in three or four sees
0.65-0.75 of the link, the code of earlier stops alike; a wrong clamp, shaper or counter is wrong
in every run). Five pairs, because a slow spell of the host can outlast three runs: in one CI run
(2026-12-02) all three then saw 0.56-0.87 of the link, 6.1-7.9 of 10 Mbit/s, utilisation rising
after 1.84-2.05 s. Each run is a new sender and sink (a first activation), and the window clamp
is checked in every run."""


def _greedy_run(fabric, executor, src: int, dst: int, name: str, attempt: int) -> dict:
    poll = fabric.controller.poll_interval_s
    flow = f"bg{attempt}"
    assert _utilisation(fabric, name) < 0.1
    t0 = time.monotonic()
    executor.apply(Action(0.0, "flow_start", flow, src, dst, None))
    started = time.monotonic() - t0
    t1, util = time.monotonic(), 0.0
    while time.monotonic() - t1 < 2 * poll + 1.0 and util <= 0.8:
        time.sleep(0.05)
        util = _utilisation(fabric, name)
    up_s = time.monotonic() - t1
    # the sink's window clamp holds the sender's window (ss reports the peer's advertised window)
    # throughout: receive-buffer autotuning used to lift it after a second or so
    windows, ss = [], ""
    for _ in range(8):
        time.sleep(0.25)
        ss = fabric.host(TREE.gpu_name(src)).cmd(f"ss -tin dst {fabric.peer_ip(src, dst)}")
        windows += [int(w) for w in re.findall(r"snd_wnd:(\d+)", ss)]
    steady = _utilisation(fabric, name)
    executor.apply(Action(1.0, "flow_stop", flow, src, dst))
    t2, low = time.monotonic(), 1.0
    while time.monotonic() - t2 < 2 * poll + 1.0 and low >= 0.1:
        time.sleep(0.05)
        low = _utilisation(fabric, name)
    down_s = time.monotonic() - t2
    res = executor.flow_results[flow]
    print(f"\n[measured] greedy background flow {TREE.gpu_name(src)}->{TREE.gpu_name(dst)} (run {attempt + 1}): "
          f"flow_start {started * 1000:.0f} ms (sink+sender spawn), {name} utilisation > 80% after {up_s:.2f} s "
          f"(poll {poll} s), steady {steady:.2f}; after flow_stop < 10% in {down_s:.2f} s; sender {res}")
    clamp = background_window_bytes(TREE, SCALE, 1.0, src, dst)
    # a sender that never connected (seen once in CI: no socket, no result) is a failed attempt:
    # the caller tries the next pair, and its assertions on the best attempt still hold
    assert not windows or max(windows) <= clamp + 1460, (clamp, ss)
    assert low < 0.1 and down_s <= 2 * poll + 0.5
    return {"util": util, "steady": steady, "up_s": up_s, "mbit_s": res["mbit_s"] if res else 0.0,
            "connected": bool(windows)}


@pytest.mark.emulation
def test_greedy_background_flow_loads_core_link(fabric, executor):
    poll = fabric.controller.poll_interval_s
    nic = fabric.topo.rates_mbit["nic"]

    # two polls for the counters to hold one full interval of the flow, plus the sender's process
    # start and TCP's ramp: 0.3-0.5 s on a quiet machine, 1.75-2.05 s measured in CI while another
    # job loaded both cores, hence 1 s of allowance (a stuck poller or wrong link still fails)
    rise_limit_s = 2 * poll + 1.0

    def good(r: dict) -> bool:
        return (r["connected"] and r["util"] > 0.8 and r["steady"] > 0.8 and r["up_s"] <= rise_limit_s
                and r["mbit_s"] > 0.8 * nic)

    runs = []
    for attempt, (src, dst) in enumerate(GREEDY_PAIRS):
        core = next(i for i in TREE.path(src, dst) if TREE.link_kind(i) == "agg_core")
        runs.append(_greedy_run(fabric, executor, src, dst, TREE.link_name(core), attempt))
        if good(runs[-1]):
            break
    best = max(runs, key=lambda r: (good(r), min(r["steady"], r["util"]), r["mbit_s"]))
    assert best["connected"], f"no attempt's sender connected (its window clamp unchecked): {runs}"
    assert best["util"] > 0.8 and best["steady"] > 0.8, runs
    assert best["up_s"] <= rise_limit_s, \
        f"utilisation rose later than {rise_limit_s:g} s after the sender started: {runs}"
    assert best["mbit_s"] > 0.8 * nic, runs


@pytest.mark.emulation
def test_flow_slots_switch_decode_flap_at_once(fabric, executor):
    """decode-flap on the fabric: prepare spawns its 64 flow slots before the clock; each switch
    (32 stops, 32 starts) is signals only, and telemetry shows the congested half move."""
    exp = _exp("decode-flap", params={"period": 8.0}, n=30)
    acts = [a for a in exp.actions() if a.time_s < 8.0]
    t0 = time.monotonic()
    executor.prepare(exp.actions())
    prepare_s = time.monotonic() - t0
    first, switch = [[a for a in acts if a.time_s == t] for t in sorted({a.time_s for a in acts})[:2]]
    assert len(first) == 32 and len(switch) == 64
    timings = []
    for batch in (first, switch):
        t1 = time.monotonic()
        executor.apply_batch(batch)
        timings.append(time.monotonic() - t1)
        time.sleep(2 * fabric.controller.poll_interval_s + 0.3)
        util = {k: v["utilisation"] for k, v in fabric.telemetry()["links"].items()
                      if k.startswith("p") and k[2:5] == "t1-" and k.endswith(("s0g0", "s0g1", "s0g2", "s0g3"))}
        hot = {k[:2] for k, u in util.items() if u > 0.8}
        cold = {k[:2] for k, u in util.items() if u < 0.1}
        assert hot == ({"p0", "p2"} if batch is first else {"p1", "p3"}), util
        assert cold == {"p0", "p1", "p2", "p3"} - hot, util
    stopped = [a.flow_id for a in switch if a.kind == "flow_stop"]
    assert all((executor.flow_results[f] or {}).get("mbit_s", 0) > 0 for f in stopped)
    print(f"\n[measured] decode-flap flow slots: prepare {prepare_s:.2f} s ({len(executor._slots)} slots); "
          f"first 32 starts {timings[0] * 1e3:.0f} ms; switch (32 stops + 32 starts) {timings[1] * 1e3:.0f} ms")
    assert len(executor._slots) == 64 and max(timings) < 0.5


@pytest.mark.emulation
def test_link_capacity_half_down_and_restore(fabric, agents, executor):
    src, dst = 0, 4  # same ToR: NIC up (host namespace) then ToR port to GPU 4 (root namespace)
    nic_up, tor_down = TREE.path(src, dst)
    nominal = fabric.topo.rates_mbit["nic"]
    nbytes = goodput_bytes(nominal, 1.0)
    base = _transfer_mbit(agents, fabric, src, dst, nbytes)
    executor.apply(Action(0.0, "link_capacity", links=(tor_down,), factor=0.5))
    assert executor.capacity_factor()[tor_down] == 0.5
    half = _transfer_mbit(agents, fabric, src, dst, nbytes)
    executor.apply(Action(0.0, "link_capacity", links=(tor_down,), factor=1.0))
    print(f"\n[measured] transfer goodput {base:.2f} Mbit/s nominal, {half:.2f} Mbit/s at factor 0.5 "
          f"(ratio {half / base:.3f})")
    assert half / base == pytest.approx(0.5, abs=0.07)

    from hosts.control import ControlTimeout
    from hosts.messages import Send
    from scheduler.emulate.calibration import _IDS

    nic_down = TREE.link_index[tuple(reversed(TREE.link_endpoints(nic_up)))]
    with pytest.raises(Exception, match="one direction only"):  # a real link fails both ways
        executor.apply(Action(0.0, "link_capacity", links=(nic_up,), factor=0.0))
    executor.apply(Action(0.0, "link_capacity", links=(nic_up, nic_down), factor=0.0))
    assert executor.capacity_factor()[nic_up] == 0.0 and executor.shaping_factor()[nic_up] == 1.0
    tid = next(_IDS)
    agents.send(TREE.gpu_name(src), Send(tid, tid, fabric.peer_ip(src, dst), AGENT_PORT, 100_000, dst))
    with pytest.raises(ControlTimeout):
        agents.wait_transfers([tid], timeout=2.0)
    t0 = time.monotonic()
    executor.apply(Action(0.0, "link_capacity", links=(nic_up, nic_down), factor=1.0))
    evs = agents.wait_transfers([tid], timeout=20.0)[tid]
    resumed = time.monotonic() - t0
    assert "error" not in evs, evs
    after = _transfer_mbit(agents, fabric, src, dst, nbytes)
    print(f"[measured] {TREE.link_name(nic_up)} both ways down: transfer blocked for 2 s; completed "
          f"{resumed:.2f} s after factor 1 (TCP retransmission back-off); then {after:.2f} Mbit/s")
    assert after >= 0.9 * base
    assert np.all(executor.capacity_factor() == 1.0)


FIT_SPAN_MIN_S = 0.01
"""Predicted time between the calibration's two references above which the fit's slope must be the
rate (0.5-2): NVLink's span is ~2 ms at this scale, the size of the per-transfer jitter on a
saturated forwarding thread (a CI run measured slope 0.49 there: small 2.09 ms, reference 3.18 ms),
the other tiers' ~20 ms."""


@pytest.mark.emulation
def test_calibration_all_tiers(fabric, agents, goodput_bounds):
    from scheduler.emulate.calibration import calibrate
    from scheduler.emulate.fidelity import CpuMonitor

    with CpuMonitor(0.5) as mon:
        rep = calibrate(fabric, TREE, agents, AGENT_PORT, SCALE, 1.0, kv_bytes_per_token=131072,
                        setup_s=30e-6)
        cpu = mon.stop()
    print("\n[measured] calibration (scale 2.5e-5, time_scale 1, 8192 tokens x 128 KiB):")
    for tier, t in rep["tiers"].items():
        print(f"  tier {tier} {t['src']}->{t['dst']}: goodput {t['achieved_mbit_s']:.2f}/"
              f"{t['configured_mbit_s']:.1f} Mbit/s = {t['goodput_ratio']:.3f}; reference "
              f"{t['reference_bytes_emulated']} B: measured {t['measured_s'] * 1000:.2f} ms vs predicted "
              f"{t['predicted_s'] * 1000:.2f} ms (ratio {t['time_ratio']:.3f}, ok={t['time_ok']}); small "
              f"{t['small_reference_bytes_emulated']} B: {t['small_measured_s'] * 1000:.2f} vs "
              f"{t['small_predicted_s'] * 1000:.2f} ms; fit {t['fit']}")
    print(f"[measured] CPU during calibration: {cpu}")
    assert sorted(rep["tiers"]) == ["0", "1", "2", "3"]
    for tier, t in rep["tiers"].items():
        floor, ceiling = goodput_bounds(tier)
        # the shaper is judged by the best sample (noise only lowers goodput; a wrong rate is wrong
        # in every sample), the calibration's figure is the median
        best = max(t["goodput_samples_mbit_s"]) / t["configured_mbit_s"]
        assert floor <= best <= ceiling, (tier, t["goodput_samples_mbit_s"])
        assert t["goodput_ratio"] <= best + 1e-9
        assert t["goodput_ok"] == (t["goodput_ratio"] >= GOODPUT_MIN_RATIO)
    assert all(len(t["goodput_samples_mbit_s"]) == 3 for t in rep["tiers"].values())
    for t in rep["tiers"].values():  # the small reference is smaller and faster, so the two define a fit
        assert t["small_reference_bytes_emulated"] < t["reference_bytes_emulated"]
        assert t["small_measured_s"] < t["measured_s"] and t["fit"] is not None
        assert t["fit"]["slope"] > 0 and -0.002 < t["fit"]["intercept_s"] < 0.02, t["fit"]
        span_s = t["predicted_s"] - t["small_predicted_s"]
        if span_s >= FIT_SPAN_MIN_S:  # a span well above the per-transfer jitter: the slope is the rate
            assert 0.5 < t["fit"]["slope"] < 2.0, t["fit"]
    assert rep["warning"] is None


_FLOW_RE = re.compile(r"priority=100,ip,nw_dst=([\d.]+) actions=output:(\d+)")


def _ipv4_tables() -> dict[str, dict[str, int]]:
    """switch -> {IPv4 destination: output port} as the switches hold them (ovs-ofctl)."""
    out = {}
    for sw in TREE.switch_names():
        text = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", sw], capture_output=True, text=True,
                              check=True).stdout
        out[sw] = {ip: int(port) for ip, port in _FLOW_RE.findall(text)}
    return out


def _model_tables(down: frozenset[int]) -> dict[str, dict[str, int]]:
    from controller.routing import ETH_TYPE_IPV4, flow_entries

    return {sw: {str(e.match["ipv4_dst"]): e.out_port for e in flow_entries(TREE, sw, down)
                 if e.match["eth_type"] == ETH_TYPE_IPV4} for sw in TREE.switch_names()}


def _wait_reroute(fabric, link: str, down: bool, after: float, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in fabric.controller.status()["reroutes"]:
            if r["link"] == link and r["down"] == down and r["seen_at"] >= after - 0.05 and r["confirmed_at"]:
                return r
        time.sleep(0.05)
    raise AssertionError(f"no confirmed reroute for {link} {'down' if down else 'up'} within {timeout} s: "
                         f"{fabric.controller.status()['reroutes']}")


@pytest.mark.emulation
def test_link_down_reroutes_every_switch_and_up_restores(fabric, agents, executor):
    """A real link failure (both interfaces down): the controller sees the port change, every
    switch's table becomes the model's surviving routes within two poll intervals, a transfer
    caught on the link completes after the reroute, ping crosses the failed path, telemetry marks
    the link down; back up, the original tables return."""
    from hosts.messages import Send
    from scheduler.emulate.calibration import _IDS

    src, dst = 0, 16  # cross-pod: p0t0 -> p0a0 -> c0 -> p1a0 -> p1t0
    link, back = TREE.link_index[("p1a0", "p1t0")], TREE.link_index[("p1t0", "p1a0")]
    assert link in TREE.path(src, dst)
    down = frozenset({link, back})
    assert _ipv4_tables() == _model_tables(frozenset())
    nbytes = goodput_bytes(fabric.topo.rates_mbit["nic"], 3.0)
    tid = next(_IDS)
    agents.send(TREE.gpu_name(src), Send(tid, tid, fabric.peer_ip(src, dst), AGENT_PORT, nbytes, dst))
    time.sleep(0.5)  # the transfer is under way on the link
    executor.apply(Action(0.0, "link_capacity", links=(link, back), factor=0.0))
    wall = executor.link_events[-1]["wall"]
    r = _wait_reroute(fabric, "p1a0<->p1t0", True, wall)
    seen, routed = r["seen_at"] - wall, r["confirmed_at"] - wall
    poll = fabric.controller.status()["poll_interval_s"]
    tables = _ipv4_tables()
    assert tables == _model_tables(down)
    assert tables != _model_tables(frozenset())
    assert set(r["switches"]) == {sw for sw in tables if tables[sw] != _model_tables(frozenset())[sw]}
    evs = agents.wait_transfers([tid], timeout=30.0)[tid]
    assert "error" not in evs, evs
    ping = fabric.host(TREE.gpu_name(src)).cmd(f"ping -c 3 -i 0.2 -W 1 {fabric.peer_ip(src, dst)}")
    assert " 0% packet loss" in ping, ping
    deadline = time.monotonic() + 3 * poll
    while not fabric.telemetry()["links"]["p1a0->p1t0"]["down"] and time.monotonic() < deadline:
        time.sleep(0.1)
    snap = fabric.telemetry()["links"]
    assert snap["p1a0->p1t0"]["down"] and snap["p1t0->p1a0"]["capacity_bps"] == 0.0
    print(f"\n[measured] link p1a0<->p1t0 down: seen by {r['source']} after {1e3 * seen:.1f} ms, {r['entries']} "
          f"entries on {len(r['switches'])} switches confirmed after {1e3 * routed:.1f} ms "
          f"(target {2e3 * poll:.0f} ms)")
    assert routed <= 2 * poll
    t_up = time.time()
    executor.apply(Action(0.0, "link_capacity", links=(link, back), factor=1.0))
    _wait_reroute(fabric, "p1a0<->p1t0", False, t_up)
    assert _ipv4_tables() == _model_tables(frozenset())
    assert not fabric.telemetry()["links"]["p1a0->p1t0"]["down"]  # marked by the link event itself
