"""Mininet topology built from the fat-tree model (names, dpids, ports, addresses from the model).

Constructing :class:`FatTreeTopo` is pure data (no root, no kernel objects); root is needed only
when :class:`topology.fabric.Fabric` builds and starts it.

Emulated link rates
-------------------
Every link is a veth pair shaped with HTB on both ends (``ShapedLink``) at the emulated rate
(:func:`topology.emulated.emulated_mbit`: ``real capacity x scale`` Mbit/s); ``DEFAULT_SCALE`` gives
NVLink 90, NIC 10, ToR-agg 20, agg-core 10 Mbit/s on the default tree, and why that scale is in
docs/calibration.md#link-rates-and-scale. A ``scale`` that would push any link past 1000 Mbit/s is
rejected with :class:`EmulationScaleError` (pass ``nvlink_cap_mbit`` to cap NVLink instead).

Every interface the datapath touches (host and switch side) gets checksum/segmentation offloads
off: with the userspace datapath TCP through veth stalls otherwise (ping still works); Mininet's
``TCIntf`` would turn tx/rx checksum offload *on*, so :class:`ShapedIntf` replaces it (same HTB
idea, one shell round trip per interface). HTB gets an explicit ``quantum`` (and a matching
``r2q``) so rates of hundreds of Mbit/s do not trigger the kernel's "quantum of class is big"
complaint. Switch links have one shallow bucket (:data:`HTB_BURST_S`); NVLink has two
(:data:`NVLINK_SHAPE`: a deep rate bucket for goodput, a floor-sized ceil bucket at
:data:`NVLINK_CEIL_FACTOR` x the rate so transfers from idle are shaped too). Open vSwitch 3.x
leaves root qdiscs of its ports alone unless QoS is configured (we configure none);
:class:`topology.fabric.Fabric` checks after start-up that every shaped interface still has its
HTB qdisc. The tc commands are built as argument lists (:func:`htb_argvs`, :func:`leaf_argv`); the
shell strings the interfaces run are those lists joined.
"""
from __future__ import annotations

import math
import os
import subprocess
from dataclasses import dataclass

from mininet.link import Intf, Link
from mininet.topo import Topo

from topology.cleanup import switch_intf_names
from topology.emulated import kind_rates_mbit
from topology.model import FatTree, TopologyError, gpu_mac, nic_ip, nvlink_ip, switch_dpid, switch_ports

DEFAULT_SCALE = 2.5e-5
"""Emulated Mbit/s per real Mbit/s: NVLink under HTB's 1000 Mbit/s and the traffic inside the userspace
datapath's one-core budget (docs/calibration.md#link-rates-and-scale)."""
MAX_SHAPED_MBIT = 1000.0
"""Mininet's HTB parameters are only valid up to 1000 Mbit/s (``TCIntf.bwParamMax``)."""
MIN_SHAPED_MBIT = 0.1
"""Below this HTB's token bucket granularity dominates; rejected as a scale mistake."""
IFNAMSIZ = 15
"""Longest Linux interface name."""
NIC_PREFIX = 8
NVLINK_PREFIX = 16
NIC_INTF = "eth0"
NVLINK_INTF = "eth1"


class EmulationScaleError(ValueError):
    """The requested scale gives a link rate outside what HTB/Mininet can shape; the message
    names the link kind, its rate and the allowed range."""


def kernel_has_ovs_module() -> bool:
    """True when the kernel has (or can load) the openvswitch module -> kernel datapath."""
    if os.path.isdir("/sys/module/openvswitch"):
        return True
    try:
        done = subprocess.run(["modprobe", "-n", "openvswitch"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def default_datapath() -> str:
    """Mininet ``OVSSwitch`` datapath: ``'kernel'`` when the module is there, else ``'user'``."""
    return "kernel" if kernel_has_ovs_module() else "user"


def link_rates_mbit(tree: FatTree, scale: float = DEFAULT_SCALE,
                    nvlink_cap_mbit: float | None = None) -> dict[str, float]:
    """Emulated rate (Mbit/s) per link kind ('nvlink', 'nic', 'tor_agg', 'agg_core').

    Raises :class:`EmulationScaleError` when a rate falls outside
    [MIN_SHAPED_MBIT, MAX_SHAPED_MBIT]."""
    if not scale > 0:
        raise EmulationScaleError(f"scale must be > 0, got {scale}")
    rates = kind_rates_mbit(tree, scale, nvlink_cap_mbit=nvlink_cap_mbit)
    for kind, mbit in rates.items():
        if not MIN_SHAPED_MBIT <= mbit <= MAX_SHAPED_MBIT:
            raise EmulationScaleError(
                f"scale {scale:g} gives {kind} links {mbit:.3f} Mbit/s; HTB shaping here needs "
                f"{MIN_SHAPED_MBIT}..{MAX_SHAPED_MBIT:.0f} Mbit/s per link "
                f"(lower/raise --scale{', or cap NVLink with nvlink_cap_mbit' if kind == 'nvlink' else ''})"
            )
    return rates


def link_capacity_bps(tree: FatTree, scale: float = DEFAULT_SCALE,
                      nvlink_cap_mbit: float | None = None) -> dict[str, float]:
    """Emulated capacity in bits/s of every directed link, keyed by ``FatTree.link_name``."""
    rates = link_rates_mbit(tree, scale, nvlink_cap_mbit)
    return {tree.link_name(i): rates[tree.link_kind(i)] * 1e6 for i in range(tree.n_links)}


def host_intf_name(host: str, nvlink: bool) -> str:
    return f"{host}-{NVLINK_INTF if nvlink else NIC_INTF}"


QUEUE_MS = 100.0
"""Egress buffer of every shaped link, ms of traffic at its rate (a byte-limited FIFO leaf): shallow
as a datacenter switch's, yet deep enough for TCP to fill and share the link (docs/calibration.md#queue-ms)."""
QUEUE_MIN_PACKETS = 10
"""Never fewer than this many full-size packets of buffer (TCP's initial window)."""
ROOT_HANDLE = "5:"
"""Handle of the HTB root qdisc on every shaped interface."""
HTB_CLASS = "5:1"
"""The one HTB class under it (its rate is the link's)."""
LEAF_HANDLE = "10:"
"""Handle of the class's leaf qdisc (the shallow FIFO)."""
HTB_BURST_S = 0.0007
"""HTB burst (and cburst) of switch links, s of traffic at the class rate: short, so sporadic small
transfers are shaped too (docs/calibration.md#htb-burst)."""
NVLINK_HTB_BURST_S = 0.01
"""Rate-bucket depth of NVLink links, s at the class rate: deep, so late dequeues on the shared VM do
not lose goodput (docs/calibration.md#nvlink-shape)."""
NVLINK_CEIL_FACTOR = 1.25
"""NVLink's HTB ``ceil`` / rate: a second bucket that shapes transfers from idle while leaving 25%
headroom to catch up (docs/calibration.md#nvlink-shape)."""
NVLINK_CBURST_S = 0.0
"""Ceil-bucket depth of NVLink links, s at the ceil rate; 0 leaves the two-frame floor
(docs/calibration.md#nvlink-shape)."""
HTB_MIN_BURST_BYTES = 2 * 1514
"""Floor of every HTB bucket: two full-size frames, so a class can always send a packet pair."""


@dataclass(frozen=True)
class HtbShape:
    """How one HTB class shapes a link at its rate R: a rate bucket ``burst_s`` deep (seconds at R)
    and a ceil bucket at ``ceil_factor`` x R, ``cburst_s`` deep (seconds at the ceil rate; None =
    same bytes as the rate bucket). Both buckets are floored at :data:`HTB_MIN_BURST_BYTES`."""

    burst_s: float = HTB_BURST_S
    ceil_factor: float = 1.0
    cburst_s: float | None = None

    def __post_init__(self) -> None:
        if self.burst_s < 0 or self.ceil_factor < 1.0 or (self.cburst_s is not None and self.cburst_s < 0):
            raise ValueError(f"HTB shape needs burst_s >= 0, ceil_factor >= 1, cburst_s >= 0: {self}")


SWITCH_SHAPE = HtbShape(HTB_BURST_S)
"""Switch links (NIC, ToR-aggregation, aggregation-core): one shallow bucket (ceil = rate)."""
NVLINK_SHAPE = HtbShape(NVLINK_HTB_BURST_S, NVLINK_CEIL_FACTOR, NVLINK_CBURST_S)
"""NVLink links: deep rate bucket, shallow ceil bucket slightly above the rate."""


def htb_shape(kind: str) -> HtbShape:
    """HTB shape of a link kind: :data:`NVLINK_SHAPE` for NVLink, else :data:`SWITCH_SHAPE`."""
    return NVLINK_SHAPE if kind == "nvlink" else SWITCH_SHAPE


def leaf_argv(intf: str, bw_mbit: float, verb: str = "replace") -> list[str]:
    """tc command (``verb``: replace or add) for the byte-limited FIFO leaf of the HTB class
    (see :data:`QUEUE_MS`)."""
    limit = int(max(QUEUE_MIN_PACKETS * 1514, bw_mbit * 1e6 / 8 * QUEUE_MS / 1000))
    return ["tc", "qdisc", verb, "dev", intf, "parent", HTB_CLASS, "handle", LEAF_HANDLE, "bfifo", "limit", str(limit)]


def leaf_command(intf: str, bw_mbit: float) -> str:
    """:func:`leaf_argv` as one shell command."""
    return " ".join(leaf_argv(intf, bw_mbit))


def htb_argvs(intf: str, bw_mbit: float, shape: HtbShape = SWITCH_SHAPE) -> list[list[str]]:
    """tc commands that shape ``intf``'s egress to ``bw_mbit`` with one HTB class and a shallow
    FIFO leaf: the root qdisc, the class, the leaf.

    ``quantum`` ~1 ms of traffic (1514..200000 bytes) and ``r2q`` to match, so the kernel never
    complains that the quantum is big; the buckets as ``shape`` says (:func:`htb_shape`)."""
    if not 0 < bw_mbit <= MAX_SHAPED_MBIT:
        raise EmulationScaleError(f"{intf}: rate {bw_mbit} Mbit/s outside 0..{MAX_SHAPED_MBIT:.0f}")
    rate_bytes = bw_mbit * 1e6 / 8
    quantum = int(min(200_000, max(1514, rate_bytes / 1000)))
    r2q = max(1, math.ceil(rate_bytes / quantum))
    burst = int(max(HTB_MIN_BURST_BYTES, rate_bytes * shape.burst_s))
    ceil_mbit = bw_mbit * shape.ceil_factor
    cburst = burst if shape.cburst_s is None else int(max(HTB_MIN_BURST_BYTES,
                                                          rate_bytes * shape.ceil_factor * shape.cburst_s))
    return [
        ["tc", "qdisc", "replace", "dev", intf, "root", "handle", ROOT_HANDLE, "htb", "default", "1", "r2q", str(r2q)],
        ["tc", "class", "replace", "dev", intf, "parent", ROOT_HANDLE, "classid", HTB_CLASS, "htb",
         "rate", f"{bw_mbit:f}Mbit", "ceil", f"{ceil_mbit:f}Mbit", "burst", str(burst), "cburst", str(cburst),
         "quantum", str(quantum)],
        leaf_argv(intf, bw_mbit),
    ]


def htb_commands(intf: str, bw_mbit: float, shape: HtbShape = SWITCH_SHAPE) -> list[str]:
    """:func:`htb_argvs` as shell commands (what :class:`ShapedIntf` runs)."""
    return [" ".join(argv) for argv in htb_argvs(intf, bw_mbit, shape)]


def offload_command(intf: str) -> str:
    """Checksum and segmentation offloads off (the userspace datapath needs it for TCP)."""
    return f"ethtool -K {intf} tx off rx off tso off gso off gro off"


class ShapedIntf(Intf):
    """veth end with offloads off and, when ``bw`` (Mbit/s) is given, an HTB root qdisc.

    One shell round trip per interface (Mininet's ``TCIntf`` needs ~7, and turns tx/rx checksum
    offload on by default), so building the 64-GPU fabric stays fast."""

    def config(self, bw: float | None = None, shape: HtbShape = SWITCH_SHAPE, **params):
        self.bw = bw
        up = params.pop("up", True)
        result = super().config(up=None, **params)  # None: Mininet skips its own `ifconfig up`
        cmds = [offload_command(self.name)] + (htb_commands(self.name, bw, shape) if bw is not None else [])
        if up:
            cmds.append(f"ip link set dev {self.name} up")
        out = self.cmd(" && ".join(f"{c} >/dev/null" for c in cmds) + " && echo netkv-ok")
        if "netkv-ok" not in out:
            raise EmulationScaleError(f"configuring {self.name} failed: {out.strip()}")
        return result

    def shaped(self) -> bool:
        """True when the HTB root qdisc is in place (or no shaping was asked for)."""
        return self.bw is None or f"htb {ROOT_HANDLE}" in self.cmd(f"tc qdisc show dev {self.name} root")


class ShapedLink(Link):
    """veth pair with :class:`ShapedIntf` on both ends (same parameters both ways)."""

    def __init__(self, node1, node2, **params):
        params.setdefault("cls1", ShapedIntf)
        params.setdefault("cls2", ShapedIntf)
        super().__init__(node1, node2, **params)


class FatTreeTopo(Topo):
    """Hosts, switches and links of ``tree`` with the model's names, dpids, ports and addresses.

    Host ``eth0`` (port 0) is the scale-out NIC to its ToR, ``eth1`` (port 1) the NVLink interface
    to its server switch. Link options carry ``bw`` (Mbit/s) for :class:`ShapedLink` (or ``link_cls``,
    e.g. the cluster mode's tunnel-or-veth link, :mod:`topology.cluster`)."""

    def build(self, tree: FatTree, scale: float = DEFAULT_SCALE, nvlink_cap_mbit: float | None = None,
              link_cls: type[Link] = ShapedLink) -> None:
        c = tree.config
        if c.kind != "fat-tree" or c.intra_server != "nvlink":
            # the wiring (ports, addresses) and the controller's routes are the fat-tree's, same-server
            # traffic on the NVLink switch: anything else would run other paths than the model prices
            raise TopologyError(f"the emulated fabric is built for topology.kind='fat-tree' with "
                                f"intra_server='nvlink' only, got kind={c.kind!r}, intra_server={c.intra_server!r}; "
                                f"run it with `netkv simulate` (docs/rail.md)")
        self.tree = tree
        self.scale = scale
        self.rates_mbit = rates = link_rates_mbit(tree, scale, nvlink_cap_mbit)
        names = (*switch_intf_names(tree), host_intf_name(tree.gpu_names[-1], True))
        too_long = [n for n in names if len(n) > IFNAMSIZ]
        if too_long:
            raise EmulationScaleError(
                f"interface names longer than {IFNAMSIZ} characters ({too_long[0]!r}): this fat-tree shape is "
                f"too large to emulate with the model's names"
            )
        for sw in tree.switch_names():
            self.addSwitch(sw, dpid=f"{switch_dpid(tree, sw):016x}")
        for g, host in enumerate(tree.gpu_names):
            self.addHost(host, ip=f"{nic_ip(tree, g)}/{NIC_PREFIX}", mac=gpu_mac(g))
        for sw in tree.switch_names():
            for port, nb in switch_ports(tree, sw).items():
                if nb in tree._gpu_index:
                    g = tree.gpu_index(nb)
                    nvlink = tree.switch_names()[sw] == "server"
                    kind = "nvlink" if nvlink else "nic"
                    opts = {"bw": rates[kind], "cls": link_cls, "shape": htb_shape(kind)}
                    if nvlink:
                        opts["params1"] = {"ip": f"{nvlink_ip(tree, g)}/{NVLINK_PREFIX}"}
                        opts["addr1"] = gpu_mac(g, nvlink=True)
                    self.addLink(nb, sw, port1=1 if nvlink else 0, port2=port, **opts)
                elif switch_ports(tree, nb) and self._is_lower(tree, sw, nb):
                    kind = "tor_agg" if tree.switch_names()[sw] == "tor" else "agg_core"
                    back = next(p for p, n in switch_ports(tree, nb).items() if n == sw)
                    self.addLink(sw, nb, port1=port, port2=back, bw=rates[kind], cls=link_cls,
                                 shape=htb_shape(kind))

    @staticmethod
    def _is_lower(tree: FatTree, a: str, b: str) -> bool:
        order = {"server": 0, "tor": 1, "agg": 2, "core": 3}
        roles = tree.switch_names()
        return order[roles[a]] < order[roles[b]]
