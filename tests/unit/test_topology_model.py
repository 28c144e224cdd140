"""Pure fat-tree model (topology/model.py): shape, capacities, tiers, paths, wiring conventions."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from topology.model import (
    MAX_HOPS,
    FatTree,
    FatTreeConfig,
    TopologyError,
    gpu_mac,
    nic_ip,
    nvlink_ip,
    peer_ip,
    switch_dpid,
    switch_ports,
)

EXPECTED_HOPS = {0: 2, 1: 2, 2: 4, 3: 6}
BIG = dict(pods=8, tors_per_pod=4, servers_per_tor=4, gpus_per_server=4, aggs_per_pod=4, cores=8)


@pytest.fixture(scope="module")
def tree() -> FatTree:
    return FatTree()


def assert_valid_path(tree: FatTree, src: int, dst: int, links: list[int]) -> None:
    """links form a connected chain of directed links from src's host to dst's host."""
    assert links, f"empty path {src}->{dst}"
    assert all(0 <= link < tree.n_links for link in links)
    ends = [tree.link_endpoints(link) for link in links]
    assert ends[0][0] == tree.gpu_name(src)
    assert ends[-1][1] == tree.gpu_name(dst)
    for (_, v), (u, _) in zip(ends, ends[1:]):
        assert v == u, f"path {src}->{dst} is not connected: {ends}"
    nodes = [ends[0][0]] + [e[1] for e in ends]
    assert len(set(nodes)) == len(nodes), f"path {src}->{dst} revisits a node: {nodes}"
    assert len(links) == EXPECTED_HOPS[tree.tier(src, dst)]


# ----------------------------------------------------------------------------- shape
def test_default_shape_counts(tree):
    assert tree.n_gpus == 64
    roles = Counter(tree.switch_names().values())
    assert len(tree.switch_names()) == 36
    # 16 servers, 8 ToRs, 8 aggregation switches, 4 cores
    assert roles == {"server": 16, "tor": 8, "agg": 8, "core": 4}
    assert tree.n_links == 320
    assert len(tree.gpu_names) == len(set(tree.gpu_names)) == 64


def test_default_capacities_gbit_s(tree):
    assert tree.link_capacity_gbit_s == pytest.approx(
        {"nvlink": 3600.0, "nic": 400.0, "tor_agg": 800.0, "agg_core": 400.0})
    # the byte-rate array agrees with the per-kind figures, and the padding entry is +inf
    for link in range(tree.n_links):
        kind = tree.link_kind(link)
        assert tree.capacity[link] == pytest.approx(tree.link_capacity_gbit_s[kind] * 1e9 / 8)
    assert tree.capacity.shape == (tree.n_links + 1,)
    assert np.isinf(tree.capacity[tree.pad])
    assert tree.latency_s[tree.pad] == 0.0


def test_link_kind_counts(tree):
    kinds = Counter(tree.link_kind(i) for i in range(tree.n_links))
    assert kinds == {"nvlink": 128, "nic": 128, "tor_agg": 32, "agg_core": 32}


def test_names_and_positions(tree):
    assert tree.gpu_name(0) == "p0t0s0g0"
    assert tree.gpu_name(63) == "p3t1s1g3"
    assert tree.position(tree.gpu_index("p1t0s1g3")) == (1, 0, 1, 3)
    for g in range(tree.n_gpus):
        assert tree.gpu_index(tree.gpu_name(g)) == g
    with pytest.raises(TopologyError, match="p9t0s0g0"):
        tree.gpu_index("p9t0s0g0")


# ----------------------------------------------------------------------------- tiers
@pytest.mark.parametrize("a,b,tier", [
    ("p0t0s0g0", "p0t0s0g0", 0),
    ("p0t0s0g0", "p0t0s0g3", 0),
    ("p0t0s0g0", "p0t0s1g0", 1),
    ("p0t1s1g2", "p0t1s0g0", 1),
    ("p0t0s0g0", "p0t1s0g0", 2),
    ("p2t1s1g3", "p2t0s0g0", 2),
    ("p0t0s0g0", "p1t0s0g0", 3),
    ("p3t1s1g3", "p0t0s0g0", 3),
])
def test_tiers_of_known_pairs(tree, a, b, tier):
    ia, ib = tree.gpu_index(a), tree.gpu_index(b)
    assert tree.tier(ia, ib) == tier
    assert tree.tier(ib, ia) == tier


def test_tier_counts_from_one_gpu(tree):
    tiers = tree.tiers(0, np.arange(tree.n_gpus))
    assert Counter(tiers.tolist()) == {0: 4, 1: 4, 2: 8, 3: 48}


# ----------------------------------------------------------------------------- paths
def test_every_path_is_a_connected_chain_of_the_right_length(tree):
    all_dsts = np.arange(tree.n_gpus)
    for src in range(tree.n_gpus):
        rows = tree.paths(src, all_dsts)
        assert rows.shape == (tree.n_gpus, MAX_HOPS)
        for dst in range(tree.n_gpus):
            links = [int(x) for x in rows[dst] if x != tree.pad]
            if dst == src:
                assert links == []
                continue
            assert links == tree.path(src, dst)
            assert_valid_path(tree, src, dst, links)


def test_path_nodes_readable(tree):
    nodes = tree.path_nodes(tree.gpu_index("p0t0s0g0"), tree.gpu_index("p3t1s1g3"))
    assert nodes[0] == "p0t0s0g0" and nodes[-1] == "p3t1s1g3"
    assert len(nodes) == 7
    assert nodes[1] == "p0t0" and nodes[5] == "p3t1"
    assert nodes[3].startswith("c")
    assert tree.path_nodes(5, 5) == [tree.gpu_name(5)]


def test_routing_is_deterministic(tree):
    other = FatTree()
    for src in (0, 17, 42, 63):
        a = tree.paths(src, np.arange(tree.n_gpus))
        b = tree.paths(src, np.arange(tree.n_gpus))
        c = other.paths(src, np.arange(tree.n_gpus))
        assert np.array_equal(a, b) and np.array_equal(a, c)
        # in dst mode the flow key is ignored: the path is knowable from (src, dst) alone
        assert np.array_equal(a, tree.paths(src, np.arange(tree.n_gpus), flow_key=12345))


def test_bottleneck_of_padded_paths(tree):
    """capacity[paths].min(axis=1) is the bottleneck of each path (padding never limits)."""
    rows = tree.paths(0, np.arange(1, tree.n_gpus))
    bott = tree.capacity[rows].min(axis=1)
    tiers = tree.tiers(0, np.arange(1, tree.n_gpus))
    gbit = 1e9 / 8
    assert np.allclose(bott[tiers == 0], 3600 * gbit)
    assert np.allclose(bott[tiers == 1], 400 * gbit)
    assert np.allclose(bott[tiers == 2], 400 * gbit)
    assert np.allclose(bott[tiers == 3], 400 * gbit)


def test_ecmp_changes_paths_with_flow_key_but_stays_valid():
    tree = FatTree(FatTreeConfig(routing="ecmp"))
    src, dst = 0, 63  # cross-pod: 2 aggregation x 2 core choices
    seen = set()
    for key in range(64):
        links = tree.path(src, dst, flow_key=key)
        assert_valid_path(tree, src, dst, links)
        assert links == tree.path(src, dst, flow_key=key)  # same key, same path
        seen.add(tuple(links))
    assert len(seen) > 1, "ECMP never spread a cross-pod pair over different paths"
    # every pair stays valid under a few keys
    for s in range(0, tree.n_gpus, 7):
        for key in (1, 2, 3):
            rows = tree.paths(s, np.arange(tree.n_gpus), flow_key=key)
            for d in range(tree.n_gpus):
                if d != s:
                    assert_valid_path(tree, s, d, [int(x) for x in rows[d] if x != tree.pad])


def test_larger_shape_builds_and_paths_are_valid():
    tree = FatTree(FatTreeConfig(**BIG))
    assert tree.n_gpus == 8 * 4 * 4 * 4
    roles = Counter(tree.switch_names().values())
    assert roles == {"server": 128, "tor": 32, "agg": 32, "core": 8}
    # directed links: 2 x (nvlink + nic per GPU) + 2 x tor-agg + 2 x agg-core
    assert tree.n_links == 4 * 512 + 2 * 32 * 4 + 2 * 8 * 4 * 2
    assert len(tree.link_index) == tree.n_links
    for src in (0, 77, 511):
        rows = tree.paths(src, np.arange(tree.n_gpus))
        for dst in range(0, tree.n_gpus, 3):
            if dst != src:
                assert_valid_path(tree, src, dst, [int(x) for x in rows[dst] if x != tree.pad])


def test_out_of_range_gpu_rejected(tree):
    with pytest.raises(TopologyError):
        tree.paths(64, np.array([0]))
    with pytest.raises(TopologyError):
        tree.paths(0, np.array([64]))
    with pytest.raises(TopologyError):
        tree.link_endpoints(tree.n_links)


# ----------------------------------------------------------------------------- invalid parameters
@pytest.mark.parametrize("kwargs,name", [
    (dict(pods=0), "pods"),
    (dict(tors_per_pod=0), "tors_per_pod"),
    (dict(servers_per_tor=-1), "servers_per_tor"),
    (dict(gpus_per_server=0), "gpus_per_server"),
    (dict(aggs_per_pod=0), "aggs_per_pod"),
    (dict(cores=0), "cores"),
    (dict(cores=3), "cores"),  # not a multiple of aggs_per_pod=2
    (dict(nic_gbit_s=0), "nic_gbit_s"),
    (dict(nvlink_gbyte_s=-5), "nvlink_gbyte_s"),
    (dict(tor_oversubscription=0), "tor_oversubscription"),
    (dict(agg_oversubscription=-1), "agg_oversubscription"),
    (dict(hop_latency_us=-1), "hop_latency_us"),
    (dict(nvlink_latency_us=-0.5), "nvlink_latency_us"),
    (dict(routing="random"), "routing"),
])
def test_invalid_parameters_raise_topology_error_naming_parameter(kwargs, name):
    with pytest.raises(TopologyError, match=f"'{name}'"):
        FatTreeConfig(**kwargs)


def test_topology_error_is_value_error():
    assert issubclass(TopologyError, ValueError)


# ----------------------------------------------------------------------------- wiring conventions
@pytest.mark.parametrize("shape", [{}, BIG], ids=["default", "big"])
def test_switch_ports_cover_each_physical_link_once_from_both_ends(shape):
    tree = FatTree(FatTreeConfig(**shape))
    switches = tree.switch_names()
    # (switch, neighbour) pairs seen through the port tables
    seen: Counter = Counter()
    for sw in switches:
        ports = switch_ports(tree, sw)
        assert sorted(ports) == list(range(1, len(ports) + 1)), f"{sw}: ports not 1..n"
        for nb in ports.values():
            seen[(sw, nb)] += 1
    expected: Counter = Counter()
    n_physical = 0
    for a, b, _kind in tree.undirected_links():
        n_physical += 1
        for u, v in ((a, b), (b, a)):
            if u in switches:
                expected[(u, v)] += 1
    assert n_physical == tree.n_links // 2
    assert all(c == 1 for c in seen.values()), [k for k, c in seen.items() if c > 1]
    assert seen == expected
    # every directed link has its reverse
    for i in range(tree.n_links):
        u, v = tree.link_endpoints(i)
        assert (v, u) in tree.link_index


def test_undirected_links_unique_and_lower_tier_first(tree):
    links = list(tree.undirected_links())
    pairs = [frozenset((a, b)) for a, b, _ in links]
    assert len(pairs) == len(set(pairs)) == 160
    order = {"gpu": 0, "server": 1, "tor": 1, "agg": 2, "core": 3}
    roles = tree.switch_names()
    for a, b, _ in links:
        ra = roles.get(a, "gpu")
        rb = roles.get(b, "gpu")
        assert order[ra] < order[rb], (a, b)


def test_dpids_unique_and_unknown_switch_rejected(tree):
    dpids = [switch_dpid(tree, sw) for sw in tree.switch_names()]
    assert len(set(dpids)) == len(dpids) == 36
    assert all(0 < d < 2**64 for d in dpids)
    with pytest.raises(TopologyError):
        switch_dpid(tree, "nope")
    with pytest.raises(TopologyError):
        switch_ports(tree, "nope")


@pytest.mark.parametrize("shape", [{}, BIG], ids=["default", "big"])
def test_addresses_unique(shape):
    tree = FatTree(FatTreeConfig(**shape))
    nics = [nic_ip(tree, g) for g in range(tree.n_gpus)]
    nvs = [nvlink_ip(tree, g) for g in range(tree.n_gpus)]
    macs = [gpu_mac(g) for g in range(tree.n_gpus)] + [gpu_mac(g, nvlink=True) for g in range(tree.n_gpus)]
    assert len(set(nics)) == tree.n_gpus
    assert len(set(nvs)) == tree.n_gpus
    assert len(set(nics) | set(nvs)) == 2 * tree.n_gpus
    assert len(set(macs)) == 2 * tree.n_gpus
    for ip in nics + nvs:
        parts = [int(x) for x in ip.split(".")]
        assert len(parts) == 4 and all(0 <= x <= 255 for x in parts), ip


def test_peer_ip_uses_nvlink_inside_server(tree):
    assert peer_ip(tree, 0, 1) == nvlink_ip(tree, 1)
    assert peer_ip(tree, 0, 4) == nic_ip(tree, 4)
    assert peer_ip(tree, 0, 63) == nic_ip(tree, 63)
