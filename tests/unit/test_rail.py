"""The rail-optimised fabric (topology.kind = "rail"): names, classes, paths, the cross-rail and
intra-server options, the config validation and the refusals where it does not apply."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.decision.oracle import StaticTierOracle
from scheduler.model.config import ConfigError, build_config
from scheduler.model.scenario import ScenarioError, load_scenario
from topology.model import FatTree, FatTreeConfig, TopologyError, make_fabric
from topology.rail import RailFabric


def rail(**kw) -> RailFabric:
    fabric = make_fabric(FatTreeConfig(kind="rail", **kw))
    assert isinstance(fabric, RailFabric)
    return fabric


# (source, destination, label tier, rail class, cross_rail, intra_server, node path)
PATHS = [
    # same server: NVLink, or out of one NIC and into the other over the spine (different rails)
    ("p0t0s0g0", "p0t0s0g1", 0, 0, "spine", "nvlink", ["p0t0s0"]),
    ("p0t0s0g0", "p0t0s0g1", 0, 0, "spine", "nic", ["p0r0", "sp1", "p0r1"]),
    ("p0t0s0g0", "p0t0s0g1", 0, 0, "pxn", "nic", ["p0r0", "sp1", "p0r1"]),
    # same rail: one rail switch, same rack or not (the label scorer sees rack vs zone)
    ("p0t0s0g2", "p0t0s1g2", 1, 1, "spine", "nvlink", ["p0r2"]),
    ("p0t0s0g2", "p0t1s1g2", 2, 1, "spine", "nvlink", ["p0r2"]),
    # another rail in the unit: through the spine, or NVLink to the same-rail GPU first (PXN)
    ("p0t0s0g0", "p0t0s1g1", 1, 2, "spine", "nvlink", ["p0r0", "sp1", "p0r1"]),
    ("p0t0s0g0", "p0t0s1g1", 1, 2, "pxn", "nvlink", ["p0t0s0", "p0t0s0g1", "p0r1"]),
    # another unit: same rail over the spine; another rail with PXN relays first
    ("p0t0s0g3", "p2t1s0g3", 3, 3, "spine", "nvlink", ["p0r3", "sp3", "p2r3"]),
    ("p0t0s0g0", "p2t1s0g3", 3, 3, "spine", "nvlink", ["p0r0", "sp3", "p2r3"]),
    ("p0t0s0g0", "p2t1s0g3", 3, 3, "pxn", "nvlink", ["p0t0s0", "p0t0s0g3", "p0r3", "sp3", "p2r3"]),
]


@pytest.mark.parametrize("src, dst, label, klass, cross_rail, intra, middle", PATHS)
def test_rail_paths_tiers_and_classes(src, dst, label, klass, cross_rail, intra, middle):
    f = rail(cross_rail=cross_rail, intra_server=intra)
    s, d = f.gpu_index(src), f.gpu_index(dst)
    assert f.path_nodes(s, d) == [src, *middle, dst]
    assert f.tier(s, d) == label  # the placement labels, as on the fat-tree
    assert int(f.rail_tiers(s, np.array([d]))[0]) == klass
    # the route is made of real links, consecutive, each priced at its kind's capacity
    for link in f.path(s, d):
        assert f.capacity[link] == f.link_capacity_gbit_s[f.link_kind(link)] * 1e9 / 8


def test_rail_shape_switches_and_capacities():
    f = rail()  # default shape: 4 units x 4 servers x 4 GPUs, 4 spines, 2:1 rail oversubscription
    roles = f.switch_names()
    assert sum(r == "rail" for r in roles.values()) == 16 and sum(r == "spine" for r in roles.values()) == 4
    assert f.link_endpoints(f.link_index[("p1r2", "sp3")]) == ("p1r2", "sp3")
    # a rail switch's 4 NIC downlinks (1600 Gbit/s) over 4 spine uplinks at 2:1
    assert f.link_capacity_gbit_s["rail_spine"] == 200.0
    assert {kind for *_, kind in f.undirected_links()} == {"nvlink", "nic", "rail_spine"}
    assert len(list(f.undirected_links())) * 2 == f.n_links == len(f.link_index)
    with pytest.raises(TopologyError, match="no ToR"):
        f.tor_name(0)


def test_rail_reroutes_around_a_down_spine_link():
    f = rail()
    s, d = f.gpu_index("p0t0s0g0"), f.gpu_index("p1t0s0g0")
    first = f.path(s, d)
    spine_link = next(i for i in first if f.link_kind(i) == "rail_spine")
    moved = f.path(s, d, down={spine_link})
    assert spine_link not in moved and f.path_nodes(s, d)[2] == "sp0"
    assert [f.link_endpoints(i)[1] for i in moved][1] == "sp1"


def test_idle_oracle_prices_rails_not_labels():
    """The label scorer's view (rack beats zone) is wrong on rails: a same-rack GPU on another
    rail costs more than a same-rail one in another rack; PXN keeps it off the spine."""
    nbytes = np.array([1e9, 1e9])
    for cross_rail, cross_rack_same_rail_cheaper in (("spine", True), ("pxn", True)):
        f = rail(cross_rail=cross_rail)
        src = f.gpu_index("p0t0s0g0")
        same_rack_other_rail, other_rack_same_rail = f.gpu_index("p0t0s1g1"), f.gpu_index("p0t1s0g0")
        cost = StaticTierOracle(f).cost(_query(src, [same_rack_other_rail, other_rack_same_rail], nbytes))
        assert (cost[1] < cost[0]) == cross_rack_same_rail_cheaper
    spine = StaticTierOracle(rail(cross_rail="spine")).cost(_query(0, [5], nbytes[:1]))
    pxn = StaticTierOracle(rail(cross_rail="pxn")).cost(_query(0, [5], nbytes[:1]))
    assert pxn[0] < spine[0]  # the NIC (400) instead of the oversubscribed spine link (200 Gbit/s)


@pytest.mark.parametrize("kind", ["fat-tree", "rail"])
def test_intra_server_nic_costs_what_a_fabric_route_costs(kind):
    """With intra_server=nic a same-server transfer is no cheaper than a cross-server one: host
    affinity has nothing to buy."""
    nbytes = np.array([1e9, 1e9])
    nv = make_fabric(FatTreeConfig(kind=kind))
    nic = make_fabric(FatTreeConfig(kind=kind, intra_server="nic"))
    src, same_server, next_server = 0, 1, nv.gps  # GPU 1: same server; GPU gps: next server (rail 0)
    c_nv = StaticTierOracle(nv).cost(_query(src, [same_server, next_server], nbytes))
    c_nic = StaticTierOracle(nic).cost(_query(src, [same_server, next_server], nbytes))
    assert c_nv[0] < c_nv[1]  # NVLink: host affinity pays
    assert c_nic[0] >= c_nic[1]  # NIC path: it does not
    assert all(nic.link_kind(i) != "nvlink" for i in nic.path(src, same_server))


def test_fat_tree_default_paths_unchanged_by_the_new_fields():
    """The defaults keep the fat-tree as it was: NVLink inside a server, the tree's routes."""
    t = FatTree()
    assert t.path_nodes(0, 1) == ["p0t0s0g0", "p0t0s0", "p0t0s0g1"]
    assert t.path_nodes(0, 63) == ["p0t0s0g0", "p0t0", "p0a1", "c3", "p3a1", "p3t1", "p3t1s1g3"]
    assert type(make_fabric(FatTreeConfig())) is FatTree


def _query(src, dsts, nbytes):
    from scheduler.decision.oracle import OracleQuery
    return OracleQuery(src, np.array(dsts), np.asarray(nbytes, dtype=float), 0.0)


# ------------------------------------------------------------------ validation and refusals
@pytest.mark.parametrize("item, names", [
    ("topology.kind=mesh", "'kind'"),
    ("topology.cross_rail=direct", "'cross_rail'"),
    ("topology.intra_server=pcie", "'intra_server'"),
])
def test_config_rejects_unknown_topology_choices(item, names):
    with pytest.raises(ConfigError, match=names):
        build_config(overrides=[item])


def test_fat_tree_class_refuses_a_rail_config():
    """Components built for the fat-tree only (the Mininet fabric, the controller, the oracle
    service) construct FatTree directly: a rail config is refused there, not mis-built."""
    with pytest.raises(TopologyError, match="fat-trees only"):
        FatTree(FatTreeConfig(kind="rail"))


def test_fat_tree_scenarios_refused_on_rail_and_unwritten_ones_run():
    f = rail()
    with pytest.raises(ScenarioError, match=r"background\.toml: written for a fat-tree fabric.*topology\.kind=rail"):
        load_scenario("background", f)
    assert load_scenario("idle", f).events == []


def test_rail_scenario_link_names(tmp_path):
    f = rail()
    text = ('name = "x"\ndescription = "d"\nwritten_for = { kind = "rail", pods = 4 }\n'
            '[[event]]\nkind = "link"\nat = 0.0\nlink = "%s"\nfactor = 0.5\n')
    ok = tmp_path / "ok.toml"
    ok.write_text(text % "p0r1<->sp2")
    (action,) = load_scenario(str(ok), f).actions(f, 1.0)
    assert {f.link_name(i) for i in action.links} == {"p0r1->sp2", "sp2->p0r1"}
    bad = tmp_path / "bad.toml"
    bad.write_text(text % "p0t0<->p0a1")
    with pytest.raises(ScenarioError, match=r"unknown link 'p0t0<->p0a1'.*names look like p0r0->sp0"):
        load_scenario(str(bad), f)


def test_emulator_refuses_rail_and_the_nic_path():
    from mininet.topo import Topo  # noqa: F401  (the Topo is pure data: no root needed)

    from topology.mininet_topo import FatTreeTopo
    for cfg in (FatTreeConfig(kind="rail"), FatTreeConfig(intra_server="nic")):
        with pytest.raises(TopologyError, match=r"built for topology\.kind='fat-tree' with intra_server='nvlink'"):
            FatTreeTopo(tree=make_fabric(cfg))


@pytest.mark.parametrize("override, says", [
    ("topology.kind=rail", "topology.kind='rail'"),
    ("topology.intra_server=nic", "topology.intra_server='nic'"),
])
def test_check_emulable_refuses_rail_and_the_nic_path(override, says):
    from scheduler.emulate.emulable import EmulationUnsupportedError, check_emulable
    from scheduler.study.experiment import prepare

    cfg = build_config(overrides=[override])
    exp, _ = prepare(cfg, None, "idle", "cache-load", 20, 0, tune=False)
    with pytest.raises(EmulationUnsupportedError, match=says):
        check_emulable(exp, 2.5e-5, 1.0)


def test_simulator_runs_on_rail_and_pxn_changes_transfer_times():
    """The same short run on the rail fabric through the spine and with PXN: every request
    finishes, the cross-rail transfers take other routes, so their times differ."""
    from scheduler.policies.base import REGISTRY
    from scheduler.sim.simulator import Simulator
    from scheduler.study.experiment import prepare

    times = {}
    for cross_rail in ("spine", "pxn"):
        cfg = build_config(overrides=["topology.kind=rail", f"topology.cross_rail={cross_rail}",
                                      "cluster.placement=mixed", "oracle.kind=static"])
        exp, _ = prepare(cfg, None, "idle", "cache-load", 60, 0, tune=False)
        assert isinstance(exp.tree, RailFabric)
        sim = Simulator(cfg, exp.requests, REGISTRY["cache-load"](), exp.actions())
        assert isinstance(sim.tree, RailFabric)
        records = sim.run()
        assert len(records) == 60
        times[cross_rail] = [r.transfer_s for r in records]
    assert times["spine"] != times["pxn"]
