"""Wiring conventions of the fat-tree: OpenFlow port numbers, addresses, MACs and datapath ids.

Shared by the Mininet topology (``topology/mininet_topo.py``) and the Ryu apps, so port numbers and
addresses never have to be discovered at run time; derived from :class:`topology.model.FatTree`
alone (also importable from ``topology.model``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from topology.model import FatTree

# Ports (OpenFlow port numbers, 1-based):
#   server switch p.t.s : port i+1            -> GPU i of the server (its NVLink interface)
#   ToR p.t             : port i+1            -> i-th GPU under the ToR (its NIC), i < gpus per ToR
#                         port gpt+1+k        -> aggregation switch k of the pod
#   agg p.k             : port t+1            -> ToR t of the pod
#                         port tors_per_pod+1+j -> core j of group k
#   core (group k, j)   : port p+1            -> aggregation switch k of pod p
# Host interfaces: eth0 = scale-out NIC (to its ToR), eth1 = NVLink (to its server switch).
# Addresses: NIC 10.{pod}.{tor}.{n}/8 and NVLink 192.168.{global tor}.{n}/16 with n = index of
# the GPU under its ToR + 1; MACs 02:00:00:00:{hi}:{lo} (NIC) / 02:00:00:01:{hi}:{lo} (NVLink).


def nic_ip(tree: FatTree, g: int) -> str:
    p, t, _, _ = tree.position(g)
    return f"10.{p}.{t}.{g % tree.gpt + 1}"


def nvlink_ip(tree: FatTree, g: int) -> str:
    return f"192.168.{g // tree.gpt}.{g % tree.gpt + 1}"


def gpu_mac(g: int, nvlink: bool = False) -> str:
    return f"02:00:00:0{1 if nvlink else 0}:{(g >> 8) & 0xff:02x}:{g & 0xff:02x}"


def peer_ip(tree: FatTree, src: int, dst: int) -> str:
    """Address ``src`` uses to reach ``dst``: NVLink inside a server, the NIC otherwise."""
    return nvlink_ip(tree, dst) if tree.tier(src, dst) == 0 else nic_ip(tree, dst)


def switch_ports(tree: FatTree, switch: str) -> dict[int, str]:
    """OpenFlow port number -> neighbour node name for ``switch`` (see conventions above)."""
    from topology.model import TopologyError  # (topology.model imports this module)

    c = tree.config
    role = tree.switch_names().get(switch)
    if role is None:
        raise TopologyError(f"unknown switch {switch!r}")
    ports: dict[int, str] = {}
    if role == "server":
        first = next(g for g in range(0, tree.n_gpus, tree.gps) if tree.server_name(g) == switch)
        for i in range(tree.gps):
            ports[i + 1] = tree.gpu_name(first + i)
    elif role == "tor":
        tor = next(t for t in range(tree.n_tors) if tree.tor_name(t) == switch)
        for i in range(tree.gpt):
            ports[i + 1] = tree.gpu_name(tor * tree.gpt + i)
        for k in range(c.aggs_per_pod):
            ports[tree.gpt + 1 + k] = tree.agg_name(tor // c.tors_per_pod, k)
    elif role == "agg":
        pod, k = (int(x) for x in switch[1:].split("a"))
        for t in range(c.tors_per_pod):
            ports[t + 1] = tree.tor_name(pod * c.tors_per_pod + t)
        for j in range(tree.cores_per_agg):
            ports[c.tors_per_pod + 1 + j] = tree.core_name(k, j)
    else:
        k, j = divmod(int(switch[1:]), tree.cores_per_agg)
        for p in range(c.pods):
            ports[p + 1] = tree.agg_name(p, k)
    return ports


def switch_dpid(tree: FatTree, switch: str) -> int:
    """Deterministic datapath id: role in the high byte, ordinal in the rest."""
    from topology.model import TopologyError

    names = list(tree.switch_names())
    if switch not in names:
        raise TopologyError(f"unknown switch {switch!r}")
    role = tree.switch_names()[switch]
    return ({"server": 1, "tor": 2, "agg": 3, "core": 4}[role] << 40) | names.index(switch)
