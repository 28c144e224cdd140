"""Tests for scheduler/scenario.py and the built-in scenarios/*.toml."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from scheduler.scenario import BUILTIN_DIR, Action, ScenarioError, list_builtin, load_scenario
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
    assert {"idle", "background", "hotspot", "bursty", "rack-hotspot", "link-failure"} <= set(names)
    for name, desc in list_builtin():
        s = load_scenario(name, TREE)
        assert s.name == name and s.description == desc and desc and "$" not in desc
        assert s.source == str(BUILTIN_DIR / f"{name}.toml")
        s.actions(TREE, 60.0)


def test_idle_has_no_actions() -> None:
    assert load_scenario("idle", TREE).actions(TREE, 100.0) == []


def test_hotspot_saturates_pod1_core_links_three_flows_each() -> None:
    acts = load_scenario("hotspot", TREE).actions(TREE, 100.0)
    assert all(a.kind == "flow_start" and a.rate_gbit_s is None and a.time_s == 0.0 for a in acts)
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
        assert any(n in ("p1a0", "p1a1") for link in path for n in link.split("->"))
    # No NIC carries two hotspot flows in the same direction.
    nics = [link for path in flow_paths(acts) for link in (path[0], path[-1])]
    assert max(Counter(nics).values()) == 1


def test_hotspot_path_nodes_cross_pod1_aggregation_and_core() -> None:
    acts = load_scenario("hotspot", TREE).actions(TREE, 10.0)
    for a in acts:
        nodes = TREE.path_nodes(a.src, a.dst)
        assert len(nodes) == 7 and nodes[3].startswith("c")  # cross-pod, through a core
        assert "p1" in nodes[2] or "p1" in nodes[4]


def test_background_loads_every_core_link_at_60_percent() -> None:
    s = load_scenario("background", TREE)
    acts = s.actions(TREE, 100.0)
    load: Counter[int] = Counter()
    for a in acts:
        assert a.rate_gbit_s == 120.0
        for i in TREE.path(a.src, a.dst):
            load[i] += a.rate_gbit_s
    cap = TREE.link_capacity_gbit_s
    core = [load[i] / cap["agg_core"] for i in range(TREE.b_agg_core, TREE.n_links)]
    assert core == [pytest.approx(0.6)] * len(core)
    assert max(load[i] / cap[TREE.link_kind(i)] for i in load) == pytest.approx(0.6)
    heavier = load_scenario("background", TREE, {"rate": 160}).actions(TREE, 1.0)
    assert {a.rate_gbit_s for a in heavier} == {160.0}


def test_rack_hotspot_saturates_tor_uplinks_only_there() -> None:
    acts = load_scenario("rack-hotspot", TREE).actions(TREE, 10.0)
    per_link = Counter(link for path in flow_paths(acts) for link in path)
    assert per_link["p1t0->p1a0"] == 4 and per_link["p1t0->p1a1"] == 4
    # 4 greedy flows share 800 Gbit/s = 200 each: no other non-NIC link has more than 2 of them.
    others = [n for link, n in per_link.items() if "g" not in link and not link.startswith("p1t0->")]
    assert max(others) <= 2


def test_bursty_and_link_failure_actions() -> None:
    acts = load_scenario("bursty", TREE).actions(TREE, 5.0)
    starts = sorted({a.time_s for a in acts if a.kind == "flow_start"})
    stops = sorted({a.time_s for a in acts if a.kind == "flow_stop"})
    assert starts == [0.0, 2.0, 4.0] and stops == [1.0, 3.0]  # the stop at 5.0 is at the horizon
    lf = load_scenario("link-failure", TREE, {"outage": 3}).actions(TREE, 60.0)
    up, down = TREE.link_index[("p1a0", "c0")], TREE.link_index[("c0", "p1a0")]
    assert [(a.time_s, a.factor, a.links) for a in lf] == [(5.0, 0.0, (up, down)), (8.0, 1.0, (up, down))]


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
    # bounded by the horizon: cycles at 1 and 4 start, the second one's stop (4.75) is past 4.5
    short = load_scenario(path, TREE).actions(TREE, 4.5)
    assert [(a.time_s, a.kind) for a in short][::2] == [(1.0, "flow_start"), (1.75, "flow_stop"), (4.0, "flow_start")]


def test_duty_one_hands_over_stop_before_start(tmp_path: Path) -> None:
    path = write(tmp_path, '[[event]]\nkind="burst"\nsrc="p0t0s0g0"\ndst="p1t0s0g0"\nperiod=1\nduty=1\n')
    acts = load_scenario(path, TREE).actions(TREE, 2.5)
    assert [(a.time_s, a.kind, a.flow_id) for a in acts] == [
        (0.0, "flow_start", "e0.0#0"), (1.0, "flow_stop", "e0.0#0"), (1.0, "flow_start", "e0.0#1"),
        (2.0, "flow_stop", "e0.0#1"), (2.0, "flow_start", "e0.0#2")]


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
    # A flow that outlives the horizon is only started.
    assert [a.kind for a in load_scenario(path, TREE).actions(TREE, 4.0)] == ["flow_start"] * 3
    with pytest.raises(ScenarioError, match="horizon"):
        load_scenario(path, TREE).actions(TREE, 0.0)


def test_other_tree_names_validated(tmp_path: Path) -> None:
    small = FatTree(FatTreeConfig(pods=2))
    with pytest.raises(ScenarioError, match=r"hotspot\.toml: event\[0\]\.dst: unknown GPU host 'p2t0s0g0'"):
        load_scenario("hotspot", small)


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
        ('[[event]]\nkind = "flow"\nsrc = "p9t0s0g0"\ndst = "p1t0s0g0"\n', r"event\[0\]\.src: unknown GPU host 'p9t0s0g0'"),
        ('[[event]]\nkind = "flow"\nsrc = "p0t0s0g0"\ndst = []\n', r"event\[0\]\.dst: must be a name or a non-empty list"),
        ('[[event]]\nkind = "flow"\nsrc = ["p0t0s0g0", "p0t0s0g1"]\ndst = ["p1t0s0g0", "p1t0s0g1", "p1t0s0g2"]\n',
         r"event\[0\]\.dst: 2 sources and 3 destinations"),
        ('[[event]]\nkind = "flow"\nsrc = "p0t0s0g0"\ndst = "p0t0s0g0"\n', r"event\[0\]\.dst: a flow from p0t0s0g0 to itself"),
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
        ('[[event]]\nkind = "link"\nlink = "p0t0->p0a0"\nfactor = 0.5\nstate = "down"\n', r"event\[0\]\.factor: give exactly one"),
        ('[[event]]\nkind = "link"\nlink = "p0t0->p0a0"\nstate = "off"\n', r"event\[0\]\.state: must be \"down\" or \"up\""),
        ('[[event]]\nkind = "link"\nlink = "p0a0->c0"\ncapacity_gbit_s = 500\n', r"event\[0\]\.capacity_gbit_s: 500 exceeds the nominal 400"),
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
