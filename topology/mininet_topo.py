"""Mininet topology built from the fat-tree model (names, dpids, ports, addresses from the model).

Constructing :class:`FatTreeTopo` is pure data (no root, no kernel objects); root is needed only
when :class:`topology.fabric.Fabric` builds and starts it.

Emulated link rates
-------------------
Every link is a veth pair shaped with HTB on both ends (``ShapedLink``) at
``real capacity x scale`` Mbit/s. ``DEFAULT_SCALE = 2.5e-5`` (1 real Gbit/s -> 0.025 emulated
Mbit/s) gives, for the default 64-GPU tree:

=============  ==========  =============
link           real        emulated
=============  ==========  =============
NVLink         3600 Gb/s   90 Mbit/s
GPU NIC        400 Gb/s    10 Mbit/s
ToR-agg        800 Gb/s    20 Mbit/s
agg-core       400 Gb/s    10 Mbit/s
=============  ==========  =============

Why this scale: Mininet's HTB shaping stops at 1000 Mbit/s, so the fattest link (NVLink) must stay
below that; and the Open vSwitch userspace datapath (no openvswitch kernel module on this machine
kind) forwards with about one core for the whole fabric, ~600-700 Mbit/s x switch-hops in total
(measured: one TCP flow through 1 switch ~525 Mbit/s, through 5 switches ~145 Mbit/s). A
cross-pod transfer at 10 Mbit/s crosses 5 switches (50 Mbit/s x hops), so ~12 concurrent cross-pod
transfers, or the NVLink of ~6 servers at line rate, fit inside the budget before the datapath
(rather than the shaped links) becomes the bottleneck. Measured with scale 5e-5 (NVLink 180
Mbit/s, 2 ms HTB burst): a single same-server transfer reached only 61-92% of 180 Mbit/s while the controller
polled (one core is shared by everything), hence 2.5e-5 (tier 0 goodput 94-96%, with the short
burst of :data:`HTB_BURST_S` that keeps small transfers shaped). Byte counts scaled by the same factor keep
transfer *times* equal to the real ones. NVLink links are shaped like the others (the scaled
rate fits under 1000 Mbit/s); a larger ``scale`` that would push any link past 1000 Mbit/s is
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
HTB qdisc.
"""
from __future__ import annotations

import math
import os
import subprocess
from dataclasses import dataclass

from mininet.link import Intf, Link
from mininet.topo import Topo

from topology.cleanup import switch_intf_names
from topology.model import FatTree, gpu_mac, nic_ip, nvlink_ip, switch_dpid, switch_ports

DEFAULT_SCALE = 2.5e-5
"""Emulated Mbit/s per real Mbit/s (see the module docstring for the reasoning)."""
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


def link_rates_mbit(tree: FatTree, scale: float = DEFAULT_SCALE, nvlink_cap_mbit: float | None = None) -> dict[str, float]:
    """Emulated rate (Mbit/s) per link kind ('nvlink', 'nic', 'tor_agg', 'agg_core').

    Raises :class:`EmulationScaleError` when a rate falls outside
    [MIN_SHAPED_MBIT, MAX_SHAPED_MBIT]."""
    if not scale > 0:
        raise EmulationScaleError(f"scale must be > 0, got {scale}")
    rates = {kind: gbit * 1000.0 * scale for kind, gbit in tree.link_capacity_gbit_s.items()}
    if nvlink_cap_mbit is not None:
        rates["nvlink"] = min(rates["nvlink"], float(nvlink_cap_mbit))
    for kind, mbit in rates.items():
        if not MIN_SHAPED_MBIT <= mbit <= MAX_SHAPED_MBIT:
            raise EmulationScaleError(
                f"scale {scale:g} gives {kind} links {mbit:.3f} Mbit/s; HTB shaping here needs "
                f"{MIN_SHAPED_MBIT}..{MAX_SHAPED_MBIT:.0f} Mbit/s per link "
                f"(lower/raise --scale{', or cap NVLink with nvlink_cap_mbit' if kind == 'nvlink' else ''})"
            )
    return rates


def link_capacity_bps(tree: FatTree, scale: float = DEFAULT_SCALE, nvlink_cap_mbit: float | None = None) -> dict[str, float]:
    """Emulated capacity in bits/s of every directed link, keyed by ``FatTree.link_name``."""
    rates = link_rates_mbit(tree, scale, nvlink_cap_mbit)
    return {tree.link_name(i): rates[tree.link_kind(i)] * 1e6 for i in range(tree.n_links)}


def host_intf_name(host: str, nvlink: bool) -> str:
    return f"{host}-{NVLINK_INTF if nvlink else NIC_INTF}"


QUEUE_MS = 100.0
"""Egress buffer of every shaped link, in milliseconds of traffic at the link's rate (a byte-limited
FIFO leaf under the HTB class). Datacenter switches have shallow buffers; without this limit the
HTB leaf would queue txqueuelen (1000) packets, 1.2 s at 10 Mbit/s, and a KV transfer behind a
greedy background flow would wait seconds (bufferbloat) instead of taking its fair share. Packets
are 1500 bytes whatever the scale, so the buffer cannot be made as short in time as a real
switch's: 100 ms (about 80 packets at 10 Mbit/s) lets TCP fill the link and share it, and
keeps drops (each one a TCP timeout for a short transfer) rare."""
QUEUE_MIN_PACKETS = 10
"""Never fewer than this many full-size packets of buffer (TCP's initial window)."""
LEAF_HANDLE = "10:"
HTB_BURST_S = 0.0007
"""HTB burst (and cburst) of switch links (NIC, ToR-aggregation, aggregation-core), in seconds of
traffic at the class rate: tokens saved while the link idles let that much leave at line rate.
With 10 ms an idle link let the first 15 kB (the floor then) of every transfer through unshaped:
sporadic cross-pod KV transfers ran at x0.66 of the fluid time. With 0.7 ms (floored at two
frames: 3 kB at 5-20 Mbit/s) tiers 1-3 calibrate at x0.95-1.04 (200 Gbit/s), goodput 94-96%."""
NVLINK_HTB_BURST_S = 0.01
"""Rate-bucket depth of NVLink links (90 Mbit/s by default), in seconds at the class rate. Deep,
because at 90 Mbit/s a shallow rate bucket (0.7 ms) loses the tokens of every late dequeue on this
shared VM: single-transfer goodput fell to 75-86% in CI runs (iperf3 and calibration). A deep rate
bucket alone lets short transfers out unshaped, hence the ceil bucket below."""
NVLINK_CEIL_FACTOR = 1.25
"""NVLink's HTB ``ceil`` as a multiple of its rate: a second token bucket that caps the line-rate
burst an idle NVLink would otherwise allow (10 ms = 112 kB, more than a whole 8k-token KV cache at
the default scale: x0.40-0.50 of the simulator's time). HTB sends only while both buckets hold
tokens, so a transfer from idle runs at 1.25x the rate after a floor-sized burst, while the deep
rate bucket keeps the long-run rate and absorbs late dequeues (25% headroom for catching up).
Measured on the calibration pair (2-core VM, median of 7): 1.25 gives x1.00 idle and x1.02 with a
busy-looping core, goodput 96% both; 1.5 gave x0.63-1.10 and 1.15 x1.03-1.60 (too little headroom
to catch up under load)."""
NVLINK_CBURST_S = 0.0
"""Ceil-bucket depth of NVLink links in seconds at the ceil rate; 0 leaves the floor
(:data:`HTB_MIN_BURST_BYTES`). 0.7 ms (9.8 kB) gave x0.82-0.86: a third of the 27 kB reference out
at line rate."""
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


def leaf_command(intf: str, bw_mbit: float) -> str:
    """The byte-limited FIFO leaf of the HTB class (see :data:`QUEUE_MS`)."""
    limit = int(max(QUEUE_MIN_PACKETS * 1514, bw_mbit * 1e6 / 8 * QUEUE_MS / 1000))
    return f"tc qdisc replace dev {intf} parent 5:1 handle {LEAF_HANDLE} bfifo limit {limit}"


def htb_commands(intf: str, bw_mbit: float, shape: HtbShape = SWITCH_SHAPE) -> list[str]:
    """tc commands that shape ``intf``'s egress to ``bw_mbit`` with one HTB class and a shallow
    FIFO leaf.

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
        f"tc qdisc replace dev {intf} root handle 5: htb default 1 r2q {r2q}",
        f"tc class replace dev {intf} parent 5: classid 5:1 htb rate {bw_mbit:f}Mbit ceil {ceil_mbit:f}Mbit "
        f"burst {burst} cburst {cburst} quantum {quantum}",
        leaf_command(intf, bw_mbit),
    ]


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
        return self.bw is None or "htb 5:" in self.cmd(f"tc qdisc show dev {self.name} root")


class ShapedLink(Link):
    """veth pair with :class:`ShapedIntf` on both ends (same parameters both ways)."""

    def __init__(self, node1, node2, **params):
        params.setdefault("cls1", ShapedIntf)
        params.setdefault("cls2", ShapedIntf)
        super().__init__(node1, node2, **params)


class FatTreeTopo(Topo):
    """Hosts, switches and links of ``tree`` with the model's names, dpids, ports and addresses.

    Host ``eth0`` (port 0) is the scale-out NIC to its ToR, ``eth1`` (port 1) the NVLink interface
    to its server switch. Link options carry ``bw`` (Mbit/s) for :class:`ShapedLink`."""

    def build(self, tree: FatTree, scale: float = DEFAULT_SCALE, nvlink_cap_mbit: float | None = None) -> None:  # noqa: D401
        self.tree = tree
        self.scale = scale
        self.rates_mbit = rates = link_rates_mbit(tree, scale, nvlink_cap_mbit)
        too_long = [n for n in (*switch_intf_names(tree), host_intf_name(tree.gpu_names[-1], True)) if len(n) > IFNAMSIZ]
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
                    opts = {"bw": rates[kind], "cls": ShapedLink, "shape": htb_shape(kind)}
                    if nvlink:
                        opts["params1"] = {"ip": f"{nvlink_ip(tree, g)}/{NVLINK_PREFIX}"}
                        opts["addr1"] = gpu_mac(g, nvlink=True)
                    self.addLink(nb, sw, port1=1 if nvlink else 0, port2=port, **opts)
                elif switch_ports(tree, nb) and self._is_lower(tree, sw, nb):
                    kind = "tor_agg" if tree.switch_names()[sw] == "tor" else "agg_core"
                    back = next(p for p, n in switch_ports(tree, nb).items() if n == sw)
                    self.addLink(sw, nb, port1=port, port2=back, bw=rates[kind], cls=ShapedLink,
                                 shape=htb_shape(kind))

    @staticmethod
    def _is_lower(tree: FatTree, a: str, b: str) -> bool:
        order = {"server": 0, "tor": 1, "agg": 2, "core": 3}
        roles = tree.switch_names()
        return order[roles[a]] < order[roles[b]]
