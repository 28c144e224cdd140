"""Port states -> down links, and telemetry's view of a link that is down (pure, no Ryu)."""
from __future__ import annotations

from controller.linkstate import PORT_DESC_POLL, PORT_STATUS, LinkStatus, port_is_down
from controller.telemetry import LinkTelemetry
from scheduler.decision.telemetry import snapshot_from_json
from topology.model import FatTree, switch_dpid, switch_ports

OFPPS_LINK_DOWN, OFPPC_PORT_DOWN = 1, 1  # OpenFlow 1.3's bit values


def _port(tree: FatTree, sw: str, nb: str) -> tuple[int, int]:
    return switch_dpid(tree, sw), next(p for p, n in switch_ports(tree, sw).items() if n == nb)


def test_port_is_down_reads_state_config_and_deletion() -> None:
    assert not port_is_down(0, 0, False, OFPPS_LINK_DOWN, OFPPC_PORT_DOWN)
    assert port_is_down(OFPPS_LINK_DOWN, 0, False, OFPPS_LINK_DOWN, OFPPC_PORT_DOWN)
    assert port_is_down(0, OFPPC_PORT_DOWN, False, OFPPS_LINK_DOWN, OFPPC_PORT_DOWN)
    assert port_is_down(0, 0, True, OFPPS_LINK_DOWN, OFPPC_PORT_DOWN)
    assert not port_is_down(4, 0, False, OFPPS_LINK_DOWN, OFPPC_PORT_DOWN)  # OFPPS_LIVE only


def test_a_link_is_down_while_either_end_says_so_and_changes_are_reported_once() -> None:
    tree = FatTree()
    status = LinkStatus(tree)
    agg, tor = _port(tree, "p1a0", "p1t1"), _port(tree, "p1t1", "p1a0")
    both = {tree.link_index[("p1a0", "p1t1")], tree.link_index[("p1t1", "p1a0")]}
    assert status.link_of(*agg) == status.link_of(*tor) == "p1a0<->p1t1"
    change = status.observe(*tor, True, 10.0, PORT_STATUS)
    assert change is not None and change.down and change.source == PORT_STATUS and change.at == 10.0
    assert set(change.links) == both and status.down_links() == frozenset(both)
    assert status.observe(*agg, True, 10.2, PORT_DESC_POLL) is None  # the other end: no new change
    assert status.observe(*tor, False, 11.0, PORT_DESC_POLL) is None  # still down at the aggregation end
    assert status.down_names() == ["p1a0<->p1t1"]
    up = status.observe(*agg, False, 11.5, PORT_DESC_POLL)
    assert up is not None and not up.down and status.down_links() == frozenset()
    assert [c.down for c in status.changes] == [True, False]


def test_gpu_links_are_seen_from_the_switch_and_foreign_ports_ignored() -> None:
    tree = FatTree()
    status = LinkStatus(tree)
    dpid, port = _port(tree, "p1t1", "p1t1s0g0")
    change = status.observe(dpid, port, True, 1.0, PORT_STATUS)
    assert change.name == "p1t1<->p1t1s0g0"
    assert status.down_links() == {tree.link_index[("p1t1", "p1t1s0g0")], tree.link_index[("p1t1s0g0", "p1t1")]}
    assert status.observe(dpid, 0xFFFFFFFE, True, 1.0, PORT_STATUS) is None  # OFPP_LOCAL


def test_telemetry_prices_a_down_link_at_capacity_zero_and_restores_it() -> None:
    tree = FatTree()
    tel = LinkTelemetry(tree)
    name = "p1a0->p1t1"
    tel.set_down(name, True)
    snap = tel.snapshot()["links"][name]
    assert snap["capacity_bps"] == 0.0 and snap["down"] is True
    payload = tel.snapshot()
    payload["time"] = 1.0
    factor = snapshot_from_json(tree, payload).capacity_factor
    assert factor[tree.link_index[("p1a0", "p1t1")]] == 0.0 and factor[tree.link_index[("p1t1", "p1a0")]] == 1.0
    tel.set_down(name, False)
    assert tel.snapshot()["links"][name]["capacity_bps"] == tree.capacity[tree.link_index[("p1a0", "p1t1")]] * 8
