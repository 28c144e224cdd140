"""Scenario executor, calibration and fidelity monitor: pure arithmetic (no root) and, marked
``emulation``, the same parts on one running 64-GPU fabric (~1.5 minutes on a 2-core VM).

Measured figures are printed with ``[measured]`` (run with ``-s`` to see them).
"""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from scheduler.emulate.calibration import (
    CALIBRATION_ID_BASE,
    GOODPUT_MIN_RATIO,
    bottleneck_mbit,
    emulated_rates_mbit,
    goodput_bytes,
    predicted_seconds,
    reference_bytes,
    within,
)
from scheduler.emulate.fidelity import CpuMonitor, CpuMonitorError, saturation_warning
from scheduler.emulate.scenario_exec import (
    ScenarioExecError,
    ScenarioExecutor,
    background_rate_mbit,
    background_window_bytes,
    down_argvs,
    egress_intf_name,
    rate_argv,
    up_argvs,
)
from scheduler.scenario import Action
from topology.fabric import tier_samples
from topology.mininet_topo import HtbShape
from topology.model import FatTree

from helpers import NETKV_BIN  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TREE = FatTree()
SCALE = 2.5e-5


# =========================================================================== pure parts
@pytest.mark.parametrize("rate,scale,ts,want", [
    (100.0, 2.5e-5, 1.0, 2.5), (100.0, 2.5e-5, 4.0, 0.625), (400.0, 1e-4, 2.0, 20.0), (None, 2.5e-5, 1.0, None),
])
def test_background_rate_mbit(rate, scale, ts, want):
    got = background_rate_mbit(rate, scale, ts)
    assert got == (None if want is None else pytest.approx(want))


@pytest.mark.parametrize("args", [(0.0, 1e-5, 1.0), (-1.0, 1e-5, 1.0), (1.0, 0.0, 1.0), (1.0, 1e-5, 0.0)])
def test_background_rate_mbit_rejects_bad_values(args):
    with pytest.raises(ValueError):
        background_rate_mbit(*args)


def test_egress_interface_mapping_default_tree():
    n = TREE.n_gpus
    assert egress_intf_name(TREE, 0) == ("p0t0s0g0", "p0t0s0g0-eth1")  # GPU -> its NVLink switch
    assert egress_intf_name(TREE, n) == ("p0t0s0", "p0t0s0-eth1")  # NVLink switch -> GPU 0
    assert egress_intf_name(TREE, 2 * n + 5) == ("p0t0s1g1", "p0t0s1g1-eth0")  # NIC up
    assert egress_intf_name(TREE, 3 * n + 5) == ("p0t0", "p0t0-eth6")  # ToR port 6 -> 6th GPU
    up = TREE.link_index[("p0t0", "p0a1")]
    assert egress_intf_name(TREE, up) == ("p0t0", f"p0t0-eth{TREE.gpt + 2}")
    core = TREE.link_index[("c3", "p2a1")]
    assert egress_intf_name(TREE, core) == ("c3", "c3-eth3")
    agg = TREE.link_index[("p1a0", "c1")]
    assert egress_intf_name(TREE, agg) == ("p1a0", f"p1a0-eth{TREE.config.tors_per_pod + 2}")
    # every directed link leaves through its own interface, and every name fits IFNAMSIZ
    names = [egress_intf_name(TREE, i)[1] for i in range(TREE.n_links)]
    assert len(set(names)) == TREE.n_links
    assert max(len(x) for x in names) <= 15


def test_tc_commands():
    assert rate_argv("p0t0-eth1", 5.0)[:8] == ["tc", "class", "replace", "dev", "p0t0-eth1", "parent", "5:", "classid"]
    assert "5.000000Mbit" in rate_argv("p0t0-eth1", 5.0)
    down, up = down_argvs("x"), up_argvs("x", 10.0)
    # a leaf cannot change kind in place: delete, then add the blackhole / the shallow FIFO
    assert [a[:3] for a in down] == [["tc", "qdisc", "del"], ["tc", "qdisc", "add"]] and down[1][-1] == "blackhole"
    assert [a[:3] for a in up] == [["tc", "qdisc", "del"], ["tc", "qdisc", "add"]]
    handle = lambda a: a[a.index("handle") + 1]  # noqa: E731
    assert handle(down[0]) == handle(down[1]) == handle(up[0]) == handle(up[1])
    assert up[1][-3:] == ["bfifo", "limit", str(int(10e6 / 8 * 0.1))]  # 100 ms of 10 Mbit/s


def _class_args(argv: list[str]) -> dict[str, str]:
    i = argv.index("rate")
    return dict(zip(argv[i::2], argv[i + 1::2]))


def test_htb_shapes_per_link_kind():
    from topology.mininet_topo import HTB_MIN_BURST_BYTES, NVLINK_CEIL_FACTOR, htb_shape

    # switch links: one shallow bucket, ceil = rate (5 Mbit/s x 0.7 ms is under the 2-frame floor)
    sw = _class_args(rate_argv("x", 5.0, htb_shape("agg_core")))
    assert sw["rate"] == sw["ceil"] == "5.000000Mbit" and sw["burst"] == sw["cburst"] == str(HTB_MIN_BURST_BYTES)
    # NVLink: a deep rate bucket (10 ms = 112500 B at 90 Mbit/s) for the long-run rate and a
    # floor-sized ceil bucket slightly above the rate, so a transfer from idle is shaped too
    nv = _class_args(rate_argv("x", 90.0, htb_shape("nvlink")))
    assert nv["rate"] == "90.000000Mbit" and nv["ceil"] == f"{90.0 * NVLINK_CEIL_FACTOR:f}Mbit"
    assert nv["burst"] == "112500" and nv["cburst"] == str(HTB_MIN_BURST_BYTES)
    with pytest.raises(ValueError):
        HtbShape(0.001, ceil_factor=0.5)


def test_executor_factor_bookkeeping_without_fabric(tmp_path):
    exe = ScenarioExecutor(None, TREE, SCALE, 1.0, tmp_path)
    f = exe.capacity_factor()
    assert f.shape == (TREE.n_links + 1,) and np.all(f == 1.0)
    f[0] = 0.0
    assert exe.capacity_factor()[0] == 1.0  # a copy
    with pytest.raises(ScenarioExecError, match="unknown action kind"):
        exe.apply(Action(0.0, "teleport"))
    with pytest.raises(ScenarioExecError, match="factor"):
        exe.apply(Action(0.0, "link_capacity", links=(1,), factor=-0.5))
    exe.apply(Action(0.0, "flow_stop", flow_id="never-started"))  # no-op
    exe.close()
    exe.close()
    with pytest.raises(ScenarioExecError, match="closed"):
        exe.apply(Action(0.0, "flow_stop", flow_id="x"))


def test_calibration_arithmetic():
    rates = emulated_rates_mbit(TREE, SCALE, 1.0)
    assert rates == pytest.approx({"nvlink": 90.0, "nic": 10.0, "tor_agg": 20.0, "agg_core": 10.0})
    slow = emulated_rates_mbit(TREE, 1e-4, 4.0, nvlink_cap_mbit=200.0)
    assert slow["nic"] == pytest.approx(10.0) and slow["nvlink"] == pytest.approx(50.0)
    pairs = tier_samples(TREE)
    assert {t: bottleneck_mbit(TREE, rates, *p) for t, p in pairs.items()} == pytest.approx(
        {0: 90.0, 1: 10.0, 2: 10.0, 3: 10.0})
    assert goodput_bytes(10.0, 2.0) == 2_500_000
    assert reference_bytes(8192, 131072, SCALE) == (1 << 30, round((1 << 30) * SCALE))
    src, dst = pairs[3]
    links = TREE.path(src, dst)
    want = (1 << 30) / TREE.capacity[links].min() + TREE.latency_s[links].sum() + 30e-6
    assert predicted_seconds(TREE, 30e-6, src, dst, 1 << 30) == pytest.approx(want)
    assert within(1.15) and within(0.85) and not within(1.16) and not within(0.8)
    assert CALIBRATION_ID_BASE == 10**12


def test_reference_count_fills_a_time_budget():
    from scheduler.emulate.calibration import REFERENCE_MAX_REPEATS, reference_count

    assert reference_count(5, 0.0215) == 5  # a switch tier: the minimum
    assert reference_count(5, 0.00242) == REFERENCE_MAX_REPEATS  # NVLink: 41 x 2.4 ms fit 0.1 s
    assert reference_count(5, 0.0107) % 2 == 1 and 5 < reference_count(5, 0.0107) < REFERENCE_MAX_REPEATS
    assert reference_count(0, 1.0) == 1 and reference_count(7, 0.0) == REFERENCE_MAX_REPEATS


def test_calibration_misses_name_tier_and_target():
    from scheduler.emulate.calibration import calibration_misses

    def tier(gp, tr):
        return {"src": "a", "dst": "b", "goodput_ratio": gp, "goodput_ok": gp >= 0.9, "time_ratio": tr,
                "time_ok": abs(tr - 1) <= 0.15}

    assert calibration_misses({"tiers": {"0": tier(0.96, 1.0), "1": tier(0.95, 1.15)}}) == []
    misses = calibration_misses({"tiers": {"0": tier(0.89, 1.40), "3": tier(0.95, 0.8)}})
    assert misses == ["tier 0 (a -> b): goodput 89% < 90%, idle KV time x1.40, outside x0.85-1.15",
                      "tier 3 (a -> b): idle KV time x0.80, outside x0.85-1.15"]
    assert calibration_misses({}) == []


def test_saturation_thresholds():
    assert saturation_warning(10.0, 20.0, 5) == (False, None)
    sat, msg = saturation_warning(90.0, 20.0, 5)
    assert sat and "ovs-vswitchd" in msg and "emulator" in msg
    sat, msg = saturation_warning(10.0, 96.0, 5)
    assert sat and "machine CPU" in msg
    assert saturation_warning(0.0, 0.0, 0)[0] is False


def test_cpu_monitor_local_machine():
    mon = CpuMonitor(interval_s=0.1)
    with pytest.raises(CpuMonitorError):
        mon.stop()
    before = {t.name for t in threading.enumerate()}
    mon.start()
    end = time.monotonic() + 0.6
    while time.monotonic() < end:  # keep one core a little busy
        sum(i * i for i in range(2000))
    rep = mon.stop()
    assert rep == mon.stop()  # idempotent
    assert "cpu-monitor" not in {t.name for t in threading.enumerate()} - before
    assert rep["samples"] >= 3 and rep["cores"] == psutil.cpu_count()
    assert 0.0 < rep["total_cpu_percent"]["mean"] <= rep["total_cpu_percent"]["max"] <= 100.0
    ovs = rep["ovs_vswitchd_cpu_percent"]
    assert 0.0 <= ovs["mean"] <= ovs["max"] and ovs["p95"] <= ovs["max"]
    assert isinstance(rep["forwarding_saturated"], bool)
    print(f"\n[measured] CpuMonitor idle-ish: {rep}")


# ------------------------------------------------------------ what emulate refuses (scheduler.emulate.emulable)
def _exp(scenario: str = "idle", policies: str = "cache-load,netkv", overrides=(), params=None, n: int = 60):
    from scheduler.config import build_config
    from scheduler.experiment import prepare

    exp, _ = prepare(build_config(overrides=list(overrides)), None, scenario, policies, n, 0, params, tune=False)
    return exp


def test_emulable_refuses_the_perfect_oracle_naming_the_policy():
    from scheduler.emulate.emulable import EmulationUnsupportedError, check_emulable

    with pytest.raises(EmulationUnsupportedError, match=r"policy 'netkv:perfect': the 'perfect' oracle reads the "
                                                       r"simulator's ground truth .* a real fabric has none"):
        check_emulable(_exp(policies="cache-load,netkv:perfect"), SCALE, 1.0)
    # --oracle perfect: every oracle consumer given without its own oracle; netkv:static keeps its own
    with pytest.raises(EmulationUnsupportedError, match=r"policy 'netkv' under --oracle perfect \(oracle.kind=perfect\)"):
        check_emulable(_exp(policies="netkv", overrides=["oracle.kind=perfect"]), SCALE, 1.0)
    check_emulable(_exp(policies="cache-load,netkv:static", overrides=["oracle.kind=perfect"]), SCALE, 1.0)
    check_emulable(_exp(policies="cache-load,topology-affinity,netkv:static,netkv,netkv:inflight"), SCALE, 1.0)


@pytest.mark.parametrize("scenario,links", [("link-failure", "p1a0->p1t1, p1t1->p1a0"),
                                            ("nic-failure", "p1t1->p1t1s0g0, p1t1s0g0->p1t1")])
def test_emulable_refuses_scenarios_that_take_a_link_down(scenario, links):
    from scheduler.emulate.emulable import EmulationUnsupportedError, check_emulable

    with pytest.raises(EmulationUnsupportedError) as err:
        check_emulable(_exp(scenario, overrides=["topology.nic_gbit_s=200"]), SCALE, 1.0)
    msg = str(err.value)
    assert f"scenario '{scenario}'" in msg and f"takes link(s) {links} down" in msg
    assert "HTB blackhole that the Ryu controller does not see or reroute around" in msg
    assert "topology.reroute_delay_s=0.5 s" in msg


def test_emulable_user_scenarios_down_or_reduced(tmp_path):
    from scheduler.emulate.emulable import EmulationUnsupportedError, check_emulable

    down = tmp_path / "cut.toml"
    down.write_text('description = "x"\n[[event]]\nkind = "link"\nat = 5.0\nlink = "p0t0->p0a0"\n'
                    'capacity_gbit_s = 0\nduration = 2.0\n')
    with pytest.raises(EmulationUnsupportedError, match=r"scenario 'cut' .* takes link\(s\) p0t0->p0a0 down \(first at 5 s\)"):
        check_emulable(_exp(str(down)), SCALE, 1.0)
    half = tmp_path / "half.toml"
    half.write_text('description = "x"\n[[event]]\nkind = "link"\nat = 5.0\nlink = "p0t0->p0a0"\nfactor = 0.5\n')
    check_emulable(_exp(str(half)), SCALE, 1.0)  # a reduced capacity means the same on both backends
    late = tmp_path / "late.toml"  # a failure after the window's horizon never runs: nothing to refuse
    late.write_text('description = "x"\n[[event]]\nkind = "link"\nat = 5000.0\nlink = "p0t0->p0a0"\nstate = "down"\n')
    check_emulable(_exp(str(late)), SCALE, 1.0)


def test_emulable_refuses_layer_wise_streaming_with_the_fabrics_packet_floor():
    from scheduler.emulate.emulable import EmulationUnsupportedError, check_emulable, packet_floor_s

    exp = _exp("decode-flap", overrides=["timing.kv_streaming=layer-wise", "topology.nic_gbit_s=200"])
    # cross-pod: 4 hops at 5 Mbit/s (NICs, core) and 2 at 10 (ToR-aggregation), 1514-byte frames
    assert packet_floor_s(exp, SCALE) == pytest.approx(4 * 1514 * 8 / 5e6 + 2 * 1514 * 8 / 10e6)
    assert packet_floor_s(exp, 2 * SCALE) == pytest.approx(packet_floor_s(exp, SCALE) / 2)
    with pytest.raises(EmulationUnsupportedError, match=r"timing.kv_streaming=layer-wise: .*\(at --scale 2.5e-05 one "
                                                       r"frame's store-and-forward across the slowest KV path takes 12.1 ms"):
        check_emulable(exp, SCALE, 1.0)
    check_emulable(_exp("decode-flap", overrides=["topology.nic_gbit_s=200"]), SCALE, 1.0)  # after-prefill runs


def test_background_load_estimate():
    """Peak emulated background traffic x bridges crossed, from the flows' max-min rates."""
    from scheduler.emulate.emulable import (FORWARDING_BUDGET_MBIT_BRIDGES, EmulationUnsupportedError, background_load,
                                background_warning, check_emulable)

    def load(scenario, nic=200, ts=1.0, params=None):
        exp = _exp(scenario, overrides=[f"topology.nic_gbit_s={nic}"], params=params)
        return background_load(exp, exp.actions(), SCALE, ts)

    assert load("idle").peak_mbit_bridges == 0.0 and load("idle").peak_flows == 0
    # decode-flap: 8 decode NICs of 5 Mbit/s filled by 4 greedy flows each, one bridge (the ToR)
    flap = load("decode-flap")
    assert flap.peak_flows == 32 and flap.peak_mbit_bridges == pytest.approx(8 * 5.0 * 1)
    assert flap.peak_at_s == pytest.approx(0.7)
    # hotspot: 24 greedy flows across the 5 bridges between pods; pod 1's 4 core uplinks and 4
    # downlinks (5 Mbit/s at 200 Gbit/s NICs) are the bottlenecks: 8 x 5 Mbit/s of traffic x 5
    assert load("hotspot").peak_mbit_bridges == pytest.approx(200.0)
    assert load("hotspot", nic=400).peak_mbit_bridges == pytest.approx(400.0)
    assert load("hotspot", nic=400, ts=2.0).peak_mbit_bridges == pytest.approx(200.0)
    # paced flows count their rate: background's 32 flows of 120 Gbit/s -> 3 Mbit/s each, 5 bridges
    assert load("background", nic=400).peak_mbit_bridges == pytest.approx(32 * 3.0 * 5)
    assert background_warning(load("decode-flap")) is None
    assert "forwarding budget" in background_warning(load("background", nic=400))
    # tenant at 400 Gbit/s NICs: 800 Mbit/s x bridges, over the budget: refused, with the fix
    assert load("tenant", nic=400).fraction == pytest.approx(800 / FORWARDING_BUDGET_MBIT_BRIDGES)
    with pytest.raises(EmulationUnsupportedError, match=r"scenario 'tenant': its background flows \(16 at 0 s\) would "
                                                       r"carry 800 Mbit/s x bridges .* raise --time-scale"):
        check_emulable(_exp("tenant", overrides=["topology.nic_gbit_s=400"]), SCALE, 1.0)
    check_emulable(_exp("tenant", overrides=["topology.nic_gbit_s=400"]), SCALE, 2.0)


@pytest.mark.parametrize("args,needle", [
    (["--policies", "cache-load,netkv:perfect"], "policy 'netkv:perfect': the 'perfect' oracle"),
    (["--oracle", "perfect", "--policies", "netkv"], "under --oracle perfect"),
    (["--scenario", "link-failure", "--set", "topology.nic_gbit_s=200"], "takes link(s) p1a0->p1t1, p1t1->p1a0 down"),
    (["--scenario", "nic-failure"], "takes link(s) p1t1->p1t1s0g0, p1t1s0g0->p1t1 down"),
    (["--set", "timing.kv_streaming=layer-wise"], "timing.kv_streaming=layer-wise: streamed layer by layer"),
], ids=["perfect", "oracle-perfect", "link-failure", "nic-failure", "layer-wise"])
def test_emulate_cli_refuses_before_building_anything(tmp_path, args, needle):
    """Exit 2 with the reason, before the root check (so for every user) and before any fabric,
    agent or result folder exists."""
    from topology import cleanup

    pytest.importorskip("mininet", reason="emulate's default scale lives in the Mininet topology module")
    out = tmp_path / "emu"
    before = cleanup.read_state()
    res = subprocess.run([NETKV_BIN, "emulate", "--max-requests", "20",
                          "--no-tune", "--no-progress", "--out", str(out), *args],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "netkv emulate: error: the emulator cannot run this experiment faithfully" in res.stderr
    assert needle in res.stderr and "needs root" not in res.stderr
    assert not out.exists() and cleanup.read_state() == before
    assert "emulate: simulating" not in res.stderr and "[fabric]" not in res.stderr  # refused before any step


def test_emulate_default_policies_are_the_emulable_ablation():
    from scripts.cmd_emulate import EMULATE_DEFAULT_POLICIES
    from scripts.netkv import build_parser

    args = build_parser().parse_args(["emulate"])
    assert args.policies == ",".join(EMULATE_DEFAULT_POLICIES) == "cache-load,topology-affinity,netkv:static,netkv"
    assert build_parser().parse_args(["simulate"]).policies.endswith("netkv:perfect")  # simulate keeps its own


def test_kv_tier_pairs_and_probe_pair_follow_the_placement():
    pytest.importorskip("mininet", reason="scheduler.emulate.orchestrator imports the Mininet topology")
    from scheduler.emulate.orchestrator import _probe_pair, kv_tier_pairs
    from scheduler.cluster import assign_roles

    roles = assign_roles(TREE, "by-rack", 0.5, 1)
    assert kv_tier_pairs(TREE, roles.prefill, roles.decode) == {
        2: (TREE.gpu_index("p0t0s0g0"), TREE.gpu_index("p0t1s0g0")),
        3: (TREE.gpu_index("p0t0s0g0"), TREE.gpu_index("p1t1s0g0"))}
    assert _probe_pair(TREE, roles.prefill, roles.reserved) == (0, 1)  # two prefill GPUs: an idle NVLink
    mixed = assign_roles(TREE, "mixed", 0.5, 0)
    assert sorted(kv_tier_pairs(TREE, mixed.prefill, mixed.decode)) == [0, 1, 2, 3]
    assert _probe_pair(TREE, mixed.prefill, mixed.reserved) == (0, 2)
    # one prefill GPU per server: the reserved server's NVLink is the idle path
    sparse = np.array([0, 4, 8]), np.array([12, 13, 14, 15])
    assert _probe_pair(TREE, *sparse) == (12, 13)


# =========================================================================== emulation
OFP_PORT, REST_PORT = 16663, 18090
AGENT_PORT = 9470
AGENT_GPUS = sorted({g for pair in tier_samples(TREE).values() for g in pair})  # 0, 1, 4, 8, 16
BUSY_WAIT_S, BUSY_POLL_S = 300.0, 20.0


@pytest.fixture(scope="module")
def fabric(tmp_path_factory):
    from topology.fabric import Fabric, FabricBusyError

    deadline = time.monotonic() + BUSY_WAIT_S
    while True:
        fab = Fabric(TREE, scale=SCALE, run_dir=tmp_path_factory.mktemp("fabric"), ofp_port=OFP_PORT,
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
            log = open(run / f"{name}.log", "wb")
            procs.append(fabric.host(name).popen(
                [sys.executable, "-m", "hosts.agent", "--name", name, "--gpu", str(g), "--listen-host", "0.0.0.0",
                 "--port", str(AGENT_PORT), "--control", str(run / "control.sock")],
                cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
            log.close()
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
    return nbytes * 8 / (recv["t_end"] - recv["t_start"]) / 1e6


def _utilisation(fabric, link_name: str) -> float:
    return fabric.telemetry()["links"][link_name]["utilisation"]


@pytest.mark.emulation
def test_executor_interfaces_match_model(fabric, executor):
    for i in range(TREE.n_links):
        intf = executor.egress_intf(i)
        assert (intf.node.name, intf.name) == egress_intf_name(TREE, i)


@pytest.mark.emulation
def test_greedy_background_flow_loads_core_link(fabric, executor):
    src, dst = 9, 30  # cross-pod
    core = next(i for i in TREE.path(src, dst) if TREE.link_kind(i) == "agg_core")
    name = TREE.link_name(core)
    poll = fabric.poll_interval_s
    assert _utilisation(fabric, name) < 0.1
    t0 = time.monotonic()
    executor.apply(Action(0.0, "flow_start", "bg", src, dst, None))
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
    clamp = background_window_bytes(TREE, SCALE, 1.0, src, dst)
    executor.apply(Action(1.0, "flow_stop", "bg", src, dst))
    t2, low = time.monotonic(), 1.0
    while time.monotonic() - t2 < 2 * poll + 1.0 and low >= 0.1:
        time.sleep(0.05)
        low = _utilisation(fabric, name)
    down_s = time.monotonic() - t2
    res = executor.flow_results["bg"]
    print(f"\n[measured] greedy background flow {TREE.gpu_name(src)}->{TREE.gpu_name(dst)}: flow_start "
          f"{started * 1000:.0f} ms (sink+sender spawn), {name} utilisation > 80% after {up_s:.2f} s "
          f"(poll {poll} s), steady {steady:.2f}; after flow_stop < 10% in {down_s:.2f} s; sender {res}")
    assert windows and max(windows) <= clamp + 1460, (clamp, ss)
    assert util > 0.8 and steady > 0.8
    assert up_s <= 2 * poll + 0.5, "utilisation rose later than 2 poll intervals after the sender started"
    assert low < 0.1 and down_s <= 2 * poll + 0.5
    assert res is not None and res["mbit_s"] > 0.8 * fabric.topo.rates_mbit["nic"]


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
        time.sleep(2 * fabric.poll_interval_s + 0.3)
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

    from scheduler.emulate.calibration import _IDS
    from hosts.control import ControlTimeout

    executor.apply(Action(0.0, "link_capacity", links=(nic_up,), factor=0.0))
    assert executor.capacity_factor()[nic_up] == 0.0
    tid = next(_IDS)
    agents.send(TREE.gpu_name(src), {"op": "send", "transfer_id": tid, "request_id": tid,
                                     "dst_ip": fabric.peer_ip(src, dst), "dst_port": AGENT_PORT,
                                     "bytes": 100_000, "dst_gpu": dst})
    with pytest.raises(ControlTimeout):
        agents.wait_transfers([tid], timeout=2.0)
    t0 = time.monotonic()
    executor.apply(Action(0.0, "link_capacity", links=(nic_up,), factor=1.0))
    evs = agents.wait_transfers([tid], timeout=20.0)[tid]
    resumed = time.monotonic() - t0
    assert "error" not in evs, evs
    after = _transfer_mbit(agents, fabric, src, dst, nbytes)
    print(f"[measured] factor 0 on {TREE.link_name(nic_up)}: transfer blocked for 2 s; completed "
          f"{resumed:.2f} s after factor 1 (TCP retransmission back-off); then {after:.2f} Mbit/s")
    assert after >= 0.9 * base
    assert np.all(executor.capacity_factor() == 1.0)


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
              f"{t['predicted_s'] * 1000:.2f} ms (ratio {t['time_ratio']:.3f}, ok={t['time_ok']})")
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
    assert rep["warning"] is None
