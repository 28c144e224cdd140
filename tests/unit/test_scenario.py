"""Tests for scheduler/model/scenario.py and the built-in scenarios/*.toml.
(Over 400 lines: the scenario format's every error case, each naming the file and field, kept with the format.)"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from scheduler.decision.context import Decision
from scheduler.model.cluster import assign_roles
from scheduler.model.scenario import BUILTIN_DIR, Action, ScenarioError, list_builtin, load_scenario
from scheduler.policies.base import Policy
from topology.model import FatTree, FatTreeConfig

TREE = FatTree()
BUILTINS = sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))


def write(tmp_path: Path, body: str, name: str = "s.toml") -> str:
    p = tmp_path / name
    p.write_text('description = "test"\n' + body)
    return str(p)


def flow_paths(actions: list[Action]) -> list[list[str]]:
    """Directed link names of every started flow's path."""
    return [[TREE.link_name(i) for i in TREE.path(a.src, a.dst)] for a in actions if a.kind == "flow_start"]


# ------------------------------------------------------------------ built-ins


def test_builtins_listed_and_all_parse() -> None:
    names = [n for n, _ in list_builtin()]
    assert names == BUILTINS
    assert {"idle", "background", "hotspot", "bursty", "link-failure", "decode-flap", "rolling", "incast",
            "tenant", "prefill-egress", "nic-failure"} <= set(names)
    for name, desc in list_builtin():
        s = load_scenario(name, TREE)
        assert s.name == name and s.description == desc and desc and "$" not in desc
        assert s.source == str(BUILTIN_DIR / f"{name}.toml")
        s.actions(TREE, 60.0)


ROLES = assign_roles(TREE, "by-rack", 0.5, 1)  # the default placement
SERVING = set(ROLES.prefill.tolist()) | set(ROLES.decode.tolist())


def test_builtins_that_load_serving_nics_say_so() -> None:
    """Background traffic on a serving GPU's own NIC hits every transfer of that GPU whatever the
    scheduler decides; a built-in that does so must say it (decode-side ones name the decode NICs)."""
    for name, desc in list_builtin():
        acts = load_scenario(name, TREE).actions(TREE, 100.0, 50.0)
        ends = {g for a in acts if a.kind == "flow_start" for g in (a.src, a.dst)}
        failed = {g for a in acts if a.kind == "link_capacity" for i in a.links
                  for g in range(TREE.n_gpus) if TREE.gpu_name(g) in TREE.link_endpoints(i)}
        if (ends | failed) & SERVING:
            assert "serving NIC" in desc or "decode NIC" in desc or "decode GPU" in desc, name
        else:
            assert "serving NIC" not in desc or "no serving NIC" in desc, name


def test_idle_has_no_actions() -> None:
    assert load_scenario("idle", TREE).actions(TREE, 100.0) == []


def _active(acts: list[Action], t: float) -> list[Action]:
    """Flows running at time t."""
    running: dict[str, Action] = {}
    for a in acts:
        if a.time_s > t:
            break
        if a.kind == "flow_start":
            running[a.flow_id] = a
        elif a.kind == "flow_stop":
            running.pop(a.flow_id, None)
    return list(running.values())


def test_decode_flap_congests_the_decode_nics_of_half_the_pool_at_a_time() -> None:
    acts = load_scenario("decode-flap", TREE, {"period": 10.0, "offset": 0.5}).actions(TREE, 40.0)
    for t, pods in ((2.0, {0, 2}), (7.0, {1, 3}), (12.0, {0, 2}), (0.2, set())):
        flows = _active(acts, t)
        per_nic = Counter(TREE.link_name(TREE.path(a.src, a.dst)[-1]) for a in flows)
        decode_nics = {TREE.link_name(TREE.path(0, int(d))[-1]) for d in ROLES.decode if int(d) // 16 in pods}
        assert set(per_nic) == decode_nics and all(n == 4 for n in per_nic.values()), t
        for a in flows:
            assert a.src in ROLES.reserved and a.dst in ROLES.decode and a.rate_gbit_s is None
            assert TREE.tier(a.src, a.dst) == 1  # the rack's own two NIC hops only
    assert sorted({a.time_s for a in acts if a.kind == "flow_start"})[:3] == [0.5, 5.5, 10.5]


def test_decode_flap_on_phase_gives_a_transfer_a_fifth_of_the_decode_nic() -> None:
    from scheduler.model.config import build_config
    from scheduler.model.timing import TimingModel
    from scheduler.model.trace import Request, n_blocks
    from scheduler.sim.simulator import Simulator

    class Fixed(Policy):
        name = "fixed"

        def choose(self, ctx):
            return Decision(int(np.flatnonzero(ctx.cluster.prefill_ids == p_gpu)[0]),
                            int(np.flatnonzero(ctx.cluster.decode_ids == d_gpu)[0]))

    cfg = build_config()
    p_gpu, d_gpu = 0, int(next(d for d in ROLES.decode if int(d) // 16 == 0))
    acts = load_scenario("decode-flap", TREE, {"period": 100.0, "offset": 0.0}).actions(TREE, 200.0)
    r = Request(0, 1.0, 8000, 5, tuple(range(1, n_blocks(8000) + 1)))
    (on,) = Simulator(cfg, [r], Fixed(), acts).run()
    (off,) = Simulator(cfg, [r], Fixed()).run()
    lat = TREE.latency_s[TREE.path(p_gpu, d_gpu)].sum() + cfg.timing.transfer_setup_s
    assert on.transfer_s - lat == pytest.approx(5 * (off.transfer_s - lat), rel=1e-6)
    assert TimingModel(cfg).prefill_s(8000) + 1.0 < 50.0  # the transfer ran inside the on-phase


def test_rolling_hotspot_covers_two_adjacent_pods_and_moves_on() -> None:
    acts = load_scenario("rolling", TREE, {"dwell": 10.0, "offset": 0.0}).actions(TREE, 100.0)
    hot = []
    for t in (5.0, 15.0, 25.0, 35.0, 45.0):
        pods = {int(a.dst) // 16 for a in _active(acts, t)}
        hot.append(pods)
        assert all(a.dst in ROLES.decode and a.src in ROLES.reserved for a in _active(acts, t))
    assert hot == [{0, 3}, {0, 1}, {1, 2}, {2, 3}, {0, 3}]


def test_incast_saturates_rack_p1t1_decode_nics_and_core_links_into_pod1() -> None:
    acts = load_scenario("incast", TREE).actions(TREE, 10.0)
    per_link = Counter(link for path in flow_paths(acts) for link in path)
    for d in ROLES.decode:
        nic = TREE.link_name(TREE.path(0, int(d))[-1])
        assert per_link[nic] == (4 if TREE.gpu_name(int(d)).startswith("p1t1") else 0), nic
    into_pod1 = [TREE.link_name(i) for i in range(TREE.b_core_agg, TREE.n_links) if "->p1a" in TREE.link_name(i)]
    assert len(into_pod1) == 4 and all(per_link[n] == 3 for n in into_pod1)
    assert {a.src for a in acts} == set(ROLES.reserved.tolist())


def test_tenant_loads_core_and_decode_rack_downlinks_without_a_serving_nic() -> None:
    acts = load_scenario("tenant", TREE).actions(TREE, 10.0)
    assert all(a.src in ROLES.reserved and a.dst in ROLES.reserved for a in acts)
    per_link = Counter(link for path in flow_paths(acts) for link in path)
    core = [TREE.link_name(i) for i in range(TREE.b_agg_core, TREE.n_links)]
    assert all(per_link[n] == 1 for n in core)
    downlinks = [f"p{p}a{k}->p{p}t1" for p in range(4) for k in range(2)]
    assert all(per_link[n] == 2 for n in downlinks)


def test_hotspot_saturates_pod1_core_links_three_flows_each() -> None:
    acts = load_scenario("hotspot", TREE).actions(TREE, 100.0)
    assert all(a.kind == "flow_start" and a.rate_gbit_s is None and a.time_s == 0.0 for a in acts)
    assert all(a.src in ROLES.reserved and a.dst in ROLES.reserved for a in acts)
    per_link = Counter(link for path in flow_paths(acts) for link in path)
    pod1_core = [TREE.link_name(i) for i in range(TREE.b_agg_core, TREE.n_links)
                 if "p1a" in TREE.link_name(i)]
    assert len(pod1_core) == 8  # 4 uplinks + 4 downlinks
    for link in pod1_core:
        assert per_link[link] == 3, link
    others = [TREE.link_name(i) for i in range(TREE.b_agg_core, TREE.n_links) if TREE.link_name(i) not in pod1_core]
    assert all(per_link[link] == 1 for link in others)
    # Every flow crosses pod 1's core links exactly once (it is what bottlenecks it at 400/3).
    for path in flow_paths(acts):
        assert sum(link in pod1_core for link in path) == 1


def test_background_loads_every_core_link_at_60_percent() -> None:
    s = load_scenario("background", TREE)
    acts = s.actions(TREE, 100.0)
    load: Counter[int] = Counter()
    for a in acts:
        assert a.rate_gbit_s == 120.0 and a.src in ROLES.reserved and a.dst in ROLES.reserved
        for i in TREE.path(a.src, a.dst):
            load[i] += a.rate_gbit_s
    cap = TREE.link_capacity_gbit_s
    core = [load[i] / cap["agg_core"] for i in range(TREE.b_agg_core, TREE.n_links)]
    assert core == [pytest.approx(0.6)] * len(core)
    assert max(load[i] / cap[TREE.link_kind(i)] for i in load) == pytest.approx(0.6)
    heavier = load_scenario("background", TREE, {"rate": 160}).actions(TREE, 1.0)
    assert {a.rate_gbit_s for a in heavier} == {160.0}


def test_prefill_egress_loads_every_prefill_uplink() -> None:
    acts = load_scenario("prefill-egress", TREE).actions(TREE, 10.0)
    assert sorted(a.src for a in acts) == sorted(ROLES.prefill.tolist())
    assert all(a.dst in ROLES.reserved for a in acts)


def test_bursty_switches_off_the_whole_second_and_failures_scale_with_the_run() -> None:
    acts = load_scenario("bursty", TREE).actions(TREE, 5.0)
    starts = sorted({a.time_s for a in acts if a.kind == "flow_start"})
    stops = sorted({a.time_s for a in acts if a.kind == "flow_stop"})
    assert starts == pytest.approx([0.3, 2.3, 4.3]) and stops == pytest.approx([1.3, 3.3, 5.3])
    lf = load_scenario("link-failure", TREE, {"outage": 0.1}).actions(TREE, 1000.0, run_s=600.0)
    up, down = TREE.link_index[("p1a0", "p1t1")], TREE.link_index[("p1t1", "p1a0")]
    changes = [(a.time_s, a.factor, a.links) for a in lf if a.kind == "link_capacity"]
    assert changes == [(pytest.approx(180.0), 0.0, (up, down)), (pytest.approx(240.0), 1.0, (up, down))]
    assert sum(a.kind == "flow_start" for a in lf) == 32  # under background's steady load
    nic = load_scenario("nic-failure", TREE).actions(TREE, 200.0, run_s=100.0)
    (fail, back) = nic
    assert fail.factor == 0.0 and back.factor == 1.0 and back.time_s == pytest.approx(40.0)
    assert {TREE.link_name(i) for i in fail.links} == {"p1t1->p1t1s0g0", "p1t1s0g0->p1t1"}


def test_run_relative_values_and_sums(tmp_path: Path) -> None:
    path = write(tmp_path, """
[params]
frac = 0.25
[[event]]
kind = "link"
at = "$frac * $run_s"
link = "p0t0->p0a0"
state = "down"
duration = "10 + 0.5 * $run_s"
""")
    sc = load_scenario(path, TREE)
    assert [(a.time_s, a.factor) for a in sc.actions(TREE, 1e4, run_s=100.0)] == [(25.0, 0.0), (85.0, 1.0)]
    assert [(a.time_s, a.factor) for a in sc.actions(TREE, 1e4, run_s=40.0)] == [(10.0, 0.0), (40.0, 1.0)]
    # the return to nominal capacity is kept past the horizon: an outage always ends
    assert [(a.time_s, a.factor) for a in sc.actions(TREE, 30.0, run_s=40.0)] == [(10.0, 0.0), (40.0, 1.0)]
    with pytest.raises(ScenarioError, match=r"params\.run_s: 'run_s' is built in"):
        load_scenario(write(tmp_path, "[params]\nrun_s = 3\n", "r.toml"), TREE)
    bad = '[[event]]\nkind = "flow"\nsrc = "p0t0s0g0"\ndst = "p1t0s0g0"\nrate_gbit_s = "2 * $run_s"\n'
    with pytest.raises(ScenarioError, match="rate cannot scale"):
        load_scenario(write(tmp_path, bad, "b.toml"), TREE)
    bad = '[[event]]\nkind = "flow"\nsrc = "p0t0s0g0"\ndst = "p1t0s0g0"\nat = "2 * $run_s + fast"\n'
    with pytest.raises(ScenarioError, match="not a sum of products"):
        load_scenario(write(tmp_path, bad, "c.toml"), TREE)


# ------------------------------------------------------------------ expansion


def test_burst_expansion_arithmetic(tmp_path: Path) -> None:
    path = write(tmp_path, """
[[event]]
kind = "burst"
src = "p0t0s0g0"
dst = ["p1t0s0g0", "p2t0s0g0"]
rate_gbit_s = 50
at = 1.0
period = 3.0
duty = 0.25
until = 10.5
""")
    acts = load_scenario(path, TREE).actions(TREE, 100.0)
    starts = [(a.time_s, a.flow_id) for a in acts if a.kind == "flow_start"]
    stops = [(a.time_s, a.flow_id) for a in acts if a.kind == "flow_stop"]
    # cycles start at 1, 4, 7, 10 (< until 10.5); on for 0.75 s, the last one cut at until.
    assert [t for t, _ in starts] == [1.0, 1.0, 4.0, 4.0, 7.0, 7.0, 10.0, 10.0]
    assert [t for t, _ in stops] == [1.75, 1.75, 4.75, 4.75, 7.75, 7.75, 10.5, 10.5]
    assert starts[0][1] == "e0.0#0" and starts[-1][1] == "e0.1#3"
    assert {a.rate_gbit_s for a in acts if a.kind == "flow_start"} == {50.0}
    assert {(a.src, a.dst) for a in acts} == {(0, 16), (0, 32)}
    # bounded by the horizon: cycles at 1 and 4 start; the second one's stop (4.75), past 4.5, is
    # kept so that what started ends
    short = load_scenario(path, TREE).actions(TREE, 4.5)
    assert [(a.time_s, a.kind) for a in short][::2] == [(1.0, "flow_start"), (1.75, "flow_stop"), (4.0, "flow_start"),
                                                        (4.75, "flow_stop")]


def test_duty_one_hands_over_stop_before_start(tmp_path: Path) -> None:
    path = write(tmp_path, '[[event]]\nkind="burst"\nsrc="p0t0s0g0"\ndst="p1t0s0g0"\nperiod=1\nduty=1\n')
    acts = load_scenario(path, TREE).actions(TREE, 2.5)
    assert [(a.time_s, a.kind, a.flow_id) for a in acts] == [
        (0.0, "flow_start", "e0.0#0"), (1.0, "flow_stop", "e0.0#0"), (1.0, "flow_start", "e0.0#1"),
        (2.0, "flow_stop", "e0.0#1"), (2.0, "flow_start", "e0.0#2"), (3.0, "flow_stop", "e0.0#2")]


def test_flow_duration_links_and_ordering(tmp_path: Path) -> None:
    path = write(tmp_path, """
[params]
t = 2.0
[[event]]
kind = "flow"
at = "$t"
src = ["p0t0s0g0", "p0t0s0g1"]
dst = "p3t1s1g3"
duration = 3
[[event]]
kind = "flow"
at = 0.5
src = "p0t0s0g2"
dst = "p0t0s0g3"
[[event]]
kind = "link"
at = 5
link = ["p0t0->p0a0", "p0t0<->p0a1"]
capacity_gbit_s = 200
[[event]]
kind = "link"
at = 5
link = "c1->p2a0"
factor = 0.25
""")
    acts = load_scenario(path, TREE).actions(TREE, 50.0)
    summary = [(a.time_s, a.kind, a.flow_id) for a in acts]
    assert summary == [(0.5, "flow_start", "e1.0"), (2.0, "flow_start", "e0.0"), (2.0, "flow_start", "e0.1"),
                       (5.0, "flow_stop", "e0.0"), (5.0, "flow_stop", "e0.1"),
                       (5.0, "link_capacity", None), (5.0, "link_capacity", None)]
    cap_change, factor_change = acts[5], acts[6]
    li = TREE.link_index
    assert cap_change.links == (li[("p0t0", "p0a0")], li[("p0t0", "p0a1")], li[("p0a1", "p0t0")])
    assert cap_change.factor == pytest.approx(200 / 800)
    assert factor_change.links == (li[("c1", "p2a0")],) and factor_change.factor == 0.25
    assert acts[0].rate_gbit_s is None and acts[0].dst == 3  # greedy, same-server flow
    # Past the horizon nothing starts or changes, but what started stops (the flows' stop at 5.0).
    assert [a.kind for a in load_scenario(path, TREE).actions(TREE, 4.0)] == ["flow_start"] * 3 + ["flow_stop"] * 2
    with pytest.raises(ScenarioError, match="horizon"):
        load_scenario(path, TREE).actions(TREE, 0.0)


def test_other_tree_names_validated(tmp_path: Path) -> None:
    small = FatTree(FatTreeConfig(pods=2))
    path = tmp_path / "mine.toml"  # a user's scenario without written_for: its names are checked
    path.write_text('description = "d"\n[[event]]\nkind = "flow"\nsrc = "p0t0s0g0"\ndst = "p2t1s1g0"\n')
    with pytest.raises(ScenarioError, match=r"mine\.toml: event\[0\]\.dst: unknown GPU host 'p2t1s1g0'"):
        load_scenario(str(path), small)


@pytest.mark.parametrize("name", ["hotspot", "decode-flap", "tenant"])
def test_builtin_refused_on_another_shape(name: str) -> None:
    """A built-in written for the 4-pod tree would load half of an 8-pod one: refused, with why."""
    big = FatTree(FatTreeConfig(pods=8))
    with pytest.raises(ScenarioError, match=rf"{name}\.toml: written for the fat-tree pods=4.*topology\.pods=8 "
                                            r"\(written for 4\)"):
        load_scenario(name, big)
    load_scenario("idle", big)  # no events, no shape: runs anywhere


def test_written_for_checked(tmp_path: Path) -> None:
    path = tmp_path / "w.toml"
    path.write_text('description = "d"\nwritten_for = { racks = 2 }\n')
    with pytest.raises(ScenarioError, match=r"w\.toml: written_for: unknown field\(s\) \['racks'\]"):
        load_scenario(str(path), TREE)
    path.write_text('description = "d"\nwritten_for = { pods = 4, cores = 4 }\n')
    assert load_scenario(str(path), TREE).events == []


# ------------------------------------------------------------------ rejections


FLOW = 'kind = "flow"\nsrc = "p0t0s0g0"\ndst = "p1t0s0g0"\n'
BURST = 'kind = "burst"\nsrc = "p0t0s0g0"\ndst = "p1t0s0g0"\n'


@pytest.mark.parametrize(
    "body, expected",
    [
        ('colour = "red"\n', r"s\.toml: unknown top-level key"),
        ('[[event]]\nkind = "storm"\n', r"event\[0\]\.kind: must be one of"),
        ('[[event]]\nsrc = "p0t0s0g0"\n', r"event\[0\]\.kind"),
        ('[[event]]\nkind = "flow"\nsrc = "p0t0s0g0"\n', r"event\[0\]\.dst: missing"),
        (f"[[event]]\n{FLOW}speed = 3\n", r"event\[0\]\.speed: unknown key"),
        (f"[[event]]\n{FLOW}[[event]]\n{FLOW}at = -1\n", r"event\[1\]\.at: must be >= 0"),
        (f"[[event]]\n{FLOW}at = true\n", r"event\[0\]\.at: must be a number"),
        (f"[[event]]\n{FLOW}rate_gbit_s = 0\n", r"event\[0\]\.rate_gbit_s: must be > 0"),
        (f"[[event]]\n{FLOW}duration = 0\n", r"event\[0\]\.duration: must be > 0"),
        ('[[event]]\nkind = "flow"\nsrc = "p9t0s0g0"\ndst = "p1t0s0g0"\n',
         r"event\[0\]\.src: unknown GPU host 'p9t0s0g0'"),
        ('[[event]]\nkind = "flow"\nsrc = "p0t0s0g0"\ndst = []\n',
         r"event\[0\]\.dst: must be a name or a non-empty list"),
        ('[[event]]\nkind = "flow"\nsrc = ["p0t0s0g0", "p0t0s0g1"]\ndst = ["p1t0s0g0", "p1t0s0g1", "p1t0s0g2"]\n',
         r"event\[0\]\.dst: 2 sources and 3 destinations"),
        ('[[event]]\nkind = "flow"\nsrc = "p0t0s0g0"\ndst = "p0t0s0g0"\n',
         r"event\[0\]\.dst: a flow from p0t0s0g0 to itself"),
        (f"[[event]]\n{BURST}period = 1\n", r"event\[0\]\.duty: missing"),
        (f"[[event]]\n{BURST}period = 0\nduty = 0.5\n", r"event\[0\]\.period: must be > 0"),
        (f"[[event]]\n{BURST}period = 1\nduty = 0\n", r"event\[0\]\.duty: must be in \(0, 1\]"),
        (f"[[event]]\n{BURST}period = 1\nduty = 1.5\n", r"event\[0\]\.duty: must be in \(0, 1\]"),
        (f"[[event]]\n{BURST}period = 1\nduty = 0.5\nat = 4\nuntil = 4\n", r"event\[0\]\.until: must be after at"),
        (f"[[event]]\n{BURST}period = \"$p\"\nduty = 0.5\n", r"event\[0\]\.period: unknown parameter reference '\$p'"),
        (f"[[event]]\n{BURST}period = \"fast\"\nduty = 0.5\n", r"event\[0\]\.period: must be a number or a"),
        ('[[event]]\nkind = "link"\nlink = "p0t0->c0"\nfactor = 0.5\n', r"event\[0\]\.link: unknown link 'p0t0->c0'"),
        ('[[event]]\nkind = "link"\nlink = "p0t0=>p0a0"\nfactor = 0.5\n', r"event\[0\]\.link: 'p0t0=>p0a0' is not"),
        ('[[event]]\nkind = "link"\nlink = "p0t0->p0a0"\nfactor = 1.5\n', r"event\[0\]\.factor: must be in \[0, 1\]"),
        ('[[event]]\nkind = "link"\nlink = "p0t0->p0a0"\nfactor = -0.1\n', r"event\[0\]\.factor: must be in \[0, 1\]"),
        ('[[event]]\nkind = "link"\nlink = "p0t0->p0a0"\n', r"event\[0\]\.factor: give exactly one of"),
        ('[[event]]\nkind = "link"\nlink = "p0t0->p0a0"\nfactor = 0.5\nstate = "down"\n',
         r"event\[0\]\.factor: give exactly one"),
        ('[[event]]\nkind = "link"\nlink = "p0t0->p0a0"\nstate = "off"\n',
         r"event\[0\]\.state: must be \"down\" or \"up\""),
        ('[[event]]\nkind = "link"\nlink = "p0a0->c0"\ncapacity_gbit_s = 500\n',
         r"event\[0\]\.capacity_gbit_s: 500 exceeds the nominal 400"),
        ("[params]\nperiod = \"2\"\n", r"s\.toml: params\.period: must be a finite number"),
        ("event = 3\n", r"s\.toml: event: must be an array of tables"),
        ("[[event\n", r"s\.toml: invalid TOML"),
    ],
)
def test_rejections_name_file_and_field(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(ScenarioError, match=expected):
        load_scenario(write(tmp_path, body), TREE)


def test_description_required(tmp_path: Path) -> None:
    p = tmp_path / "nodesc.toml"
    p.write_text('name = "x"\n')
    with pytest.raises(ScenarioError, match=r"nodesc\.toml: description: required"):
        load_scenario(str(p), TREE)


def test_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, f'[params]\np = 2.0\n[[event]]\n{BURST}period = "$p"\nduty = 0.5\n')
    assert load_scenario(path, TREE, {"p": "4"}).events[0]["period"] == 4.0
    assert load_scenario(path, TREE).params == {"p": 2.0}
    with pytest.raises(ScenarioError, match=r"unknown scenario parameter 'q' \(this scenario's parameters: p\)"):
        load_scenario(path, TREE, {"q": 1.0})
    with pytest.raises(ScenarioError, match="override must be a finite number"):
        load_scenario(path, TREE, {"p": "soon"})
    with pytest.raises(ScenarioError, match=r"event\[0\]\.period: must be > 0"):
        load_scenario(path, TREE, {"p": -1})


def test_unknown_name_lists_builtins_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as e:
        load_scenario("no-such-scenario", TREE)
    assert all(name in str(e.value) for name in BUILTINS)
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(str(tmp_path / "missing.toml"), TREE)


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, "", name="my-case.toml"), TREE)
    assert s.name == "my-case" and s.events == [] and s.describe()["events"] == 0


def test_burst_expansion_bounded(tmp_path: Path) -> None:
    path = write(tmp_path, f"[[event]]\n{BURST}period = 0.001\nduty = 0.5\n")
    s = load_scenario(path, TREE)
    assert len(s.actions(TREE, 1.0)) == 2000  # 1000 cycles; the last one stops at 0.9995 s
    with pytest.raises(ScenarioError, match=r"event\[0\]\.period: .* exceed"):
        s.actions(TREE, 3600.0)
