"""Proactive, destination-based routing tables for the fat-tree (pure: no Ryu, no Mininet).

The tables reproduce :meth:`topology.model.FatTree.path_nodes` exactly for ``routing="dst"``:
the next hop at every switch depends only on the destination GPU, so one exact-match entry per
destination address is enough and no packet is ever flooded (the fat-tree has loops).

* server NVLink switch: the NVLink addresses of its own GPUs -> the GPU's port;
* ToR: GPUs under it -> their port; any other GPU -> aggregation switch ``dst % aggs_per_pod``;
* aggregation switch: GPUs of its pod -> the ToR port; other pods -> core
  ``(dst // aggs_per_pod) % cores_per_agg`` of its group;
* core: the aggregation switch of the destination pod.

Every IPv4 entry has an ARP twin (``arp_tpa``) with the same output port, so ARP requests and
replies travel the same paths as data and hosts resolve each other without static ARP tables.
The table-miss entry (drop) is the Ryu app's business.

With failed links (``down``: directed link indices the controller knows are down) a ToR takes
the first aggregation switch, in the order of :meth:`topology.model.FatTree.up_choices`, whose
own route to the destination survives, and an aggregation switch the first surviving core: the
paths :meth:`FatTree.paths` gives with the same ``down`` set (``tests/unit/test_routing.py``
walks the tables against it). Where nothing survives the default port stays.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from topology.model import FatTree, nic_ip, nvlink_ip
from topology.wiring import switch_ports

ETH_TYPE_IPV4 = 0x0800
ETH_TYPE_ARP = 0x0806
ROUTE_PRIORITY = 100
"""Priority of every routing entry (matches never overlap, so one priority suffices)."""

_SWITCH_RE = {
    "server": re.compile(r"^p(\d+)t(\d+)s(\d+)$"),
    "tor": re.compile(r"^p(\d+)t(\d+)$"),
    "agg": re.compile(r"^p(\d+)a(\d+)$"),
    "core": re.compile(r"^c(\d+)$"),
}


class RoutingError(ValueError):
    """A routing question has no answer (unsupported routing mode, unknown switch, unreachable
    destination); the message names the switch and destination."""


@dataclass(frozen=True)
class FlowEntry:
    """One OpenFlow 1.3 flow: ``match`` holds Ryu ``OFPMatch`` keyword arguments
    (e.g. ``{"eth_type": 0x0800, "ipv4_dst": "10.0.0.1"}``), the action is output to ``out_port``."""

    priority: int
    match: dict[str, object]
    out_port: int


@lru_cache(maxsize=4096)
def _ports(tree: FatTree, switch: str) -> dict[int, str]:
    """:func:`switch_ports`, cached (rerouting asks for the same switches many times); callers do not mutate it."""
    return switch_ports(tree, switch)


def _check_routing(tree: FatTree) -> None:
    if tree.config.routing != "dst":
        raise RoutingError(
            f"proactive routing tables support only routing='dst' (destination-based); "
            f"this tree uses routing={tree.config.routing!r}"
        )


@lru_cache(maxsize=64)
def _roles(tree: FatTree) -> dict[str, str]:
    return tree.switch_names()


@lru_cache(maxsize=16384)
def _role_and_numbers(tree: FatTree, switch: str) -> tuple[str, tuple[int, ...]]:
    role = _roles(tree).get(switch)
    if role is None:
        raise RoutingError(f"unknown switch {switch!r} in this fat-tree")
    m = _SWITCH_RE[role].match(switch)
    assert m is not None  # names come from the model, so they always parse
    return role, tuple(int(x) for x in m.groups())


def _check_dst(tree: FatTree, dst: int) -> None:
    if not 0 <= dst < tree.n_gpus:
        raise RoutingError(f"destination GPU index {dst} out of range 0..{tree.n_gpus - 1}")


def next_hop_port(tree: FatTree, switch: str, dst: int, nvlink: bool, down: frozenset[int] = frozenset()) -> int:
    """OpenFlow output port at ``switch`` for traffic to GPU ``dst``, avoiding the directed links
    in ``down`` where a surviving route exists.

    ``nvlink=True`` asks for dst's NVLink address, which only dst's own server switch carries;
    ``nvlink=False`` asks for its NIC address, carried by ToR, aggregation and core switches.
    Raises :class:`RoutingError` for routing='ecmp', unknown switches and impossible questions.
    """
    _check_routing(tree)
    _check_dst(tree, dst)
    role, nums = _role_and_numbers(tree, switch)
    return _port(tree, switch, role, nums, dst, nvlink, down)


def _port(tree: FatTree, switch: str, role: str, nums: tuple[int, ...], dst: int, nvlink: bool,
          down: frozenset[int] = frozenset()) -> int:
    default = _default_port(tree, switch, role, nums, dst, nvlink)
    if not down or role not in ("tor", "agg"):
        return default
    c = tree.config
    if role == "tor":
        if dst // tree.gpt == nums[0] * c.tors_per_pod + nums[1]:
            return default  # down to one of its own GPUs: one way only
        first, k0, n = tree.gpt + 1, dst % c.aggs_per_pod, c.aggs_per_pod
    else:
        if dst // tree.gpp == nums[0]:
            return default  # down to a ToR of its pod: one way only
        first, k0, n = c.tors_per_pod + 1, (dst // c.aggs_per_pod) % tree.cores_per_agg, tree.cores_per_agg
    ports = _ports(tree, switch)
    for choice in [k0] + [x for x in range(n) if x != k0]:  # FatTree.up_choices' order
        port = first + choice
        if tree.link_index[(switch, ports[port])] not in down and _survives(tree, ports[port], dst, down):
            return port
    return default


def _survives(tree: FatTree, node: str, dst: int, down: frozenset[int]) -> bool:
    """Whether the route from switch ``node`` to GPU ``dst`` under ``down`` avoids every down link."""
    roles = _roles(tree)
    while node in roles:
        role, nums = _role_and_numbers(tree, node)
        nxt = _ports(tree, node)[_port(tree, node, role, nums, dst, False, down)]
        if tree.link_index[(node, nxt)] in down:
            return False
        node = nxt
    return True


def _default_port(tree: FatTree, switch: str, role: str, nums: tuple[int, ...], dst: int, nvlink: bool) -> int:
    c = tree.config
    a, cpa = c.aggs_per_pod, tree.cores_per_agg
    if role == "server":
        p, t, s = nums
        server = (p * c.tors_per_pod + t) * c.servers_per_tor + s
        if not nvlink or dst // tree.gps != server:
            raise RoutingError(
                f"server switch {switch} only carries the NVLink addresses of its own GPUs; "
                f"no route to GPU {dst} ({tree.gpu_name(dst)}, nvlink={nvlink})"
            )
        return dst % tree.gps + 1
    if nvlink:
        raise RoutingError(
            f"NVLink address of GPU {dst} ({tree.gpu_name(dst)}) is only reachable through its "
            f"server switch {tree.server_name(dst)}, not {switch}"
        )
    if role == "tor":
        p, t = nums
        tor = p * c.tors_per_pod + t
        if dst // tree.gpt == tor:
            return dst % tree.gpt + 1
        return tree.gpt + 1 + dst % a
    if role == "agg":
        p, _k = nums
        if dst // tree.gpp == p:
            return (dst // tree.gpt) % c.tors_per_pod + 1
        return c.tors_per_pod + 1 + (dst // a) % cpa
    # core: down to the aggregation switch of the destination pod (same group as this core)
    return dst // tree.gpp + 1


def _entries_for(address: str, out_port: int) -> list[FlowEntry]:
    return [
        FlowEntry(ROUTE_PRIORITY, {"eth_type": ETH_TYPE_IPV4, "ipv4_dst": address}, out_port),
        FlowEntry(ROUTE_PRIORITY, {"eth_type": ETH_TYPE_ARP, "arp_tpa": address}, out_port),
    ]


def flow_entries(tree: FatTree, switch: str, down: frozenset[int] = frozenset()) -> list[FlowEntry]:
    """All routing entries of ``switch``: IPv4 + ARP per reachable GPU address, no flooding;
    routes avoid the directed links in ``down`` where they can.

    Server switches get the NVLink addresses of their own GPUs; every other switch gets the NIC
    address of every GPU in the fabric. Order: by destination GPU, IPv4 before ARP."""
    _check_routing(tree)
    role, nums = _role_and_numbers(tree, switch)
    out: list[FlowEntry] = []
    if role == "server":
        p, t, s = nums
        first = ((p * tree.config.tors_per_pod + t) * tree.config.servers_per_tor + s) * tree.gps
        for g in range(first, first + tree.gps):
            out += _entries_for(nvlink_ip(tree, g), _port(tree, switch, role, nums, g, nvlink=True))
        return out
    for g in range(tree.n_gpus):
        out += _entries_for(nic_ip(tree, g), _port(tree, switch, role, nums, g, False, down))
    return out
