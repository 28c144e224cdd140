"""The emulate backend's parts that need no fabric: rate arithmetic, tc arguments, the scenario
executor's bookkeeping, calibration arithmetic, the CPU monitor, what `emulate` refuses and why.
(The same parts on a running fabric: tests/emulation/test_emu_parts.py.)
"""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from helpers import NETKV_BIN
from helpers import experiment as _exp

from scheduler.emulate.calibration import (
    CALIBRATION_ID_BASE,
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
    egress_intf_name,
    rate_argv,
    up_argvs,
)
from scheduler.model.scenario import Action
from topology.fabric import tier_samples
from topology.mininet_topo import HtbShape
from topology.model import FatTree

ROOT = Path(__file__).resolve().parents[2]
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
    up = up_argvs("x", 10.0)
    # a leaf FIFO is resized by deleting it and adding the new one under the same handle
    assert [a[:3] for a in up] == [["tc", "qdisc", "del"], ["tc", "qdisc", "add"]]
    handle = lambda a: a[a.index("handle") + 1]  # noqa: E731
    assert handle(up[0]) == handle(up[1])
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
def test_emulable_refuses_the_perfect_oracle_naming_the_policy():
    from scheduler.emulate.emulable import EmulationUnsupportedError, check_emulable

    with pytest.raises(EmulationUnsupportedError, match=r"policy 'netkv:perfect': the 'perfect' oracle reads the "
                                                       r"simulator's ground truth .* a real fabric has none"):
        check_emulable(_exp(policies="cache-load,netkv:perfect"), SCALE, 1.0)
    # --oracle perfect: every oracle consumer given without its own oracle; netkv:static keeps its own
    with pytest.raises(EmulationUnsupportedError,
                       match=r"policy 'netkv' under --oracle perfect \(oracle.kind=perfect\)"):
        check_emulable(_exp(policies="netkv", overrides=["oracle.kind=perfect"]), SCALE, 1.0)
    check_emulable(_exp(policies="cache-load,netkv:static", overrides=["oracle.kind=perfect"]), SCALE, 1.0)
    check_emulable(_exp(policies="cache-load,topology-affinity,netkv:static,netkv,netkv:inflight"), SCALE, 1.0)


@pytest.mark.parametrize("scenario", ["link-failure", "nic-failure"])
def test_emulable_accepts_scenarios_that_take_a_link_down_both_ways(scenario):
    from scheduler.emulate.emulable import check_emulable

    check_emulable(_exp(scenario, overrides=["topology.nic_gbit_s=200"]), SCALE, 1.0)


def test_emulable_user_scenarios_down_or_reduced(tmp_path):
    from scheduler.emulate.emulable import EmulationUnsupportedError, check_emulable

    down = tmp_path / "cut.toml"
    down.write_text('description = "x"\n[[event]]\nkind = "link"\nat = 5.0\nlink = "p0t0->p0a0"\n'
                    'capacity_gbit_s = 0\nduration = 2.0\n')
    with pytest.raises(EmulationUnsupportedError, match=r"scenario 'cut' .* takes p0t0->p0a0 down in one direction "
                                                       r"only \(at 5 s\): on the fabric a link fails as a real one"):
        check_emulable(_exp(str(down)), SCALE, 1.0)
    both = tmp_path / "both.toml"
    both.write_text(down.read_text().replace("p0t0->p0a0", "p0t0<->p0a0"))
    check_emulable(_exp(str(both)), SCALE, 1.0)
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
    with pytest.raises(EmulationUnsupportedError,
                       match=r"timing.kv_streaming=layer-wise: .*\(at --scale 2.5e-05 one "
                             r"frame's store-and-forward across the slowest KV path takes 12.1 ms"):
        check_emulable(exp, SCALE, 1.0)
    check_emulable(_exp("decode-flap", overrides=["topology.nic_gbit_s=200"]), SCALE, 1.0)  # after-prefill runs


def test_background_load_estimate():
    """Peak emulated background traffic x bridges crossed, from the flows' max-min rates."""
    from scheduler.emulate.emulable import (
        FORWARDING_BUDGET_MBIT_BRIDGES,
        EmulationUnsupportedError,
        background_load,
        background_warning,
        check_emulable,
    )

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
    (["--scenario", "ONE_WAY"], "takes p1a0->p1t1 down in one direction only"),
    (["--set", "timing.kv_streaming=layer-wise"], "timing.kv_streaming=layer-wise: streamed layer by layer"),
], ids=["perfect", "oracle-perfect", "one-way-down", "layer-wise"])
def test_emulate_cli_refuses_before_building_anything(tmp_path, args, needle):
    """Exit 2 with the reason, before the root check (so for every user) and before any fabric,
    agent or result folder exists."""
    from topology import cleanup

    pytest.importorskip("mininet", reason="emulate's default scale lives in the Mininet topology module")
    out = tmp_path / "emu"
    one_way = tmp_path / "one-way.toml"
    one_way.write_text('description = "x"\n[[event]]\nkind = "link"\nat = 1.0\nlink = "p1a0->p1t1"\n'
                       'state = "down"\nduration = 2.0\n')
    args = [str(one_way) if a == "ONE_WAY" else a for a in args]
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
    from scheduler.model.cluster import assign_roles

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
