"""Proactive routing tables reproduce the model's paths hop by hop."""
from __future__ import annotations

import random

import pytest

from controller.routing import (
    ETH_TYPE_ARP,
    ETH_TYPE_IPV4,
    FlowEntry,
    RoutingError,
    flow_entries,
    next_hop_port,
)
from topology.model import FatTree, FatTreeConfig, nic_ip, nvlink_ip, switch_ports

LARGE = FatTreeConfig(pods=8, aggs_per_pod=4, cores=8)


_PORTS: dict[tuple[FatTreeConfig, str], dict[int, str]] = {}


def _ports(tree: FatTree, switch: str) -> dict[int, str]:
    key = (tree.config, switch)
    if key not in _PORTS:
        _PORTS[key] = switch_ports(tree, switch)
    return _PORTS[key]


def _tables(tree: FatTree, down: frozenset[int] = frozenset()) -> dict[str, dict[tuple[int, str], int]]:
    """switch -> {(eth_type, address): out_port}, asserting no duplicate matches."""
    tables: dict[str, dict[tuple[int, str], int]] = {}
    for sw in tree.switch_names():
        table: dict[tuple[int, str], int] = {}
        for e in flow_entries(tree, sw, down):
            key_field = "ipv4_dst" if e.match["eth_type"] == ETH_TYPE_IPV4 else "arp_tpa"
            assert set(e.match) == {"eth_type", key_field}
            key = (int(e.match["eth_type"]), str(e.match[key_field]))
            assert key not in table, f"duplicate match {key} at {sw}"
            table[key] = e.out_port
        tables[sw] = table
    return tables


def _walk(tree: FatTree, tables: dict, src: int, dst: int, eth_type: int) -> list[str]:
    """Follow the tables from the switch src sends into until a host is reached."""
    tier0 = tree.tier(src, dst) == 0
    addr = nvlink_ip(tree, dst) if tier0 else nic_ip(tree, dst)
    node = tree.server_name(src) if tier0 else tree.tor_name(src // tree.gpt)
    nodes = [tree.gpu_name(src), node]
    hosts = set(tree.gpu_names)
    while node not in hosts:
        port = tables[node].get((eth_type, addr))
        assert port is not None, f"no entry for {addr} at {node} ({tree.gpu_name(src)}->{tree.gpu_name(dst)})"
        node = _ports(tree, node)[port]
        assert node not in nodes, f"loop at {node}: {nodes}"
        nodes.append(node)
        assert len(nodes) <= 7
    return nodes


@pytest.fixture(scope="module")
def default_tree() -> tuple[FatTree, dict]:
    tree = FatTree()
    return tree, _tables(tree)


@pytest.mark.parametrize("eth_type", [ETH_TYPE_IPV4, ETH_TYPE_ARP])
def test_every_pair_of_default_tree_follows_model_path(default_tree, eth_type: int) -> None:
    tree, tables = default_tree
    tiers = set()
    for src in range(tree.n_gpus):
        for dst in range(tree.n_gpus):
            if src == dst:
                continue
            tiers.add(tree.tier(src, dst))
            assert _walk(tree, tables, src, dst, eth_type) == tree.path_nodes(src, dst)
    assert tiers == {0, 1, 2, 3}


def test_larger_shape_sample_of_pairs() -> None:
    tree = FatTree(LARGE)
    assert tree.cores_per_agg == 2
    tables = _tables(tree)
    rng = random.Random(7)
    pairs = [(rng.randrange(tree.n_gpus), rng.randrange(tree.n_gpus)) for _ in range(2000)]
    seen_cores = set()
    for src, dst in pairs:
        if src == dst:
            continue
        nodes = _walk(tree, tables, src, dst, ETH_TYPE_IPV4)
        assert nodes == tree.path_nodes(src, dst)
        seen_cores.update(n for n in nodes if n.startswith("c"))
    assert len(seen_cores) == LARGE.cores  # the sample exercises every core


def test_next_hop_agrees_with_path_for_every_source(default_tree) -> None:
    """Destination-based: every path through a switch leaves it by next_hop_port's port."""
    tree, _ = default_tree
    for src in range(tree.n_gpus):
        for dst in range(tree.n_gpus):
            nodes = tree.path_nodes(src, dst)
            nv = tree.tier(src, dst) == 0
            for here, nxt in zip(nodes[1:-1], nodes[2:]):
                assert _ports(tree, here)[next_hop_port(tree, here, dst, nv)] == nxt


def _both_ways(tree: FatTree, link: int) -> frozenset[int]:
    u, v = tree.link_endpoints(link)
    return frozenset({link, tree.link_index[(v, u)]})


def _nodes_links(tree: FatTree, nodes: list[str]) -> list[int]:
    return [tree.link_index[(u, v)] for u, v in zip(nodes, nodes[1:])]


@pytest.mark.parametrize("config,failures,seed", [(FatTreeConfig(), 1, 1), (FatTreeConfig(), 2, 2),
                                                  (FatTreeConfig(), 3, 3), (LARGE, 2, 4)])
def test_tables_with_failed_links_follow_the_models_surviving_paths(config, failures: int, seed: int) -> None:
    """A controller that knows the down links installs, switch by switch, the paths the model
    (and so the simulator) reroutes onto: every surviving model path is walked hop by hop; where
    the model has none left, the tables do not invent one either."""
    tree = FatTree(config)
    rng = random.Random(seed)
    fabric_links = [i for i in range(tree.n_links) if tree.link_kind(i) != "nvlink"]
    rerouted = 0
    for _ in range(6):
        down = frozenset().union(*(_both_ways(tree, rng.choice(fabric_links)) for _ in range(failures)))
        tables = _tables(tree, down)
        pairs = [(rng.randrange(tree.n_gpus), rng.randrange(tree.n_gpus)) for _ in range(400)]
        for src, dst in pairs:
            if src == dst or tree.tier(src, dst) == 0:
                continue
            model = [int(x) for x in tree.path(src, dst, down=down)]
            walked = _nodes_links(tree, _walk(tree, tables, src, dst, ETH_TYPE_IPV4))
            if not down.intersection(model):
                assert walked == model, (tree.gpu_name(src), tree.gpu_name(dst), sorted(down))
                rerouted += model != [int(x) for x in tree.path(src, dst)]
            else:
                assert down.intersection(walked), "the tables found a path the model says does not exist"
    assert rerouted > 0  # the failures hit paths in use, so some routes really moved


def test_failed_link_moves_exactly_the_routes_through_it(default_tree) -> None:
    """p1a0<->p1t1 down: aggregation switches (and ToRs) re-point only destinations behind it."""
    tree, base = default_tree
    down = _both_ways(tree, tree.link_index[("p1a0", "p1t1")])
    tables = _tables(tree, down)
    changed = {sw for sw in tables if tables[sw] != base[sw]}
    assert changed and changed <= {sw for sw, role in tree.switch_names().items() if role in ("tor", "agg")}
    for dst in range(tree.n_gpus):
        if tree.tor_name(dst // tree.gpt) != "p1t1":
            continue
        for src in (0, tree.n_gpus - 1):
            assert "p1a0" not in _walk(tree, tables, src, dst, ETH_TYPE_IPV4) or tree.tier(src, dst) < 2
    assert _tables(tree, frozenset()) == base  # link back up: the original routes


def test_entries_shape(default_tree) -> None:
    tree, _ = default_tree
    tor = flow_entries(tree, "p0t0")
    assert len(tor) == 2 * tree.n_gpus
    assert all(isinstance(e, FlowEntry) and e.priority > 0 for e in tor)
    assert FlowEntry(100, {"eth_type": 0x0800, "ipv4_dst": "10.0.0.1"}, 1) in tor
    server = flow_entries(tree, "p0t0s1")
    assert len(server) == 2 * tree.gps
    addrs = {e.match.get("ipv4_dst") for e in server} - {None}
    assert addrs == {nvlink_ip(tree, g) for g in range(4, 8)}
    # nothing floods: every output port is a real wired port of the switch
    for sw in tree.switch_names():
        ports = switch_ports(tree, sw)
        assert all(e.out_port in ports for e in flow_entries(tree, sw))


def test_errors() -> None:
    tree = FatTree()
    with pytest.raises(RoutingError, match="unknown switch"):
        next_hop_port(tree, "p9t9", 0, False)
    with pytest.raises(RoutingError, match="out of range"):
        next_hop_port(tree, "p0t0", tree.n_gpus, False)
    with pytest.raises(RoutingError, match="server switch"):
        next_hop_port(tree, "p0t0s0", 5, True)  # GPU 5 lives on p0t0s1
    with pytest.raises(RoutingError, match="server switch"):
        next_hop_port(tree, "p0t0s0", 1, False)
    with pytest.raises(RoutingError, match="NVLink"):
        next_hop_port(tree, "p0t0", 1, True)
    ecmp = FatTree(FatTreeConfig(routing="ecmp"))
    with pytest.raises(RoutingError, match="ecmp"):
        next_hop_port(ecmp, "p0t0", 9, False)
    with pytest.raises(RoutingError, match="ecmp"):
        flow_entries(ecmp, "c0")
