"""Pure model of the four-tier GPU fat-tree: names, tiers, directed links, paths, capacities.

One source of truth for the simulator, the oracle, the Mininet topology and the Ryu apps; no
Mininet import, so everything is checkable without root.

Shape (default 64 GPUs): ``pods`` x ``tors_per_pod`` x ``servers_per_tor`` x ``gpus_per_server``,
``aggs_per_pod`` aggregation switches per pod, ``cores`` core switches split into
``aggs_per_pod`` groups (aggregation switch k of every pod connects to every core of group k).

Every GPU has an NVLink interface to its server switch (tier 0) and a scale-out NIC to its ToR.

Names map to roles and positions (``p1t0s1g3`` = pod 1, ToR 0, server 1, GPU 3):

====================  =================  ===================================
node                  name               example
====================  =================  ===================================
GPU host              ``p{P}t{T}s{S}g{G}``   ``p0t1s0g3``
server NVLink switch  ``p{P}t{T}s{S}``       ``p0t1s0``
ToR switch            ``p{P}t{T}``           ``p0t1``
aggregation switch    ``p{P}a{K}``           ``p0a1``
core switch           ``c{C}``               ``c3``
====================  =================  ===================================

Tiers: 0 same server (NVLink, or the NICs with ``intra_server="nic"``), 1 same ToR, 2 same pod,
3 cross-pod; :func:`make_fabric` builds this tree or :class:`topology.rail.RailFabric` (``kind``).
Routing is destination-based by default (``routing="dst"``), so the oracle prices the path:
upward hops pick aggregation switch ``dst % aggs_per_pod`` and core ``(dst // aggs_per_pod) %
cores_per_agg`` inside that aggregation switch's group; downward hops are unique in a fat-tree.
``routing="ecmp"`` hashes (src, dst, flow key) instead, like a switch's ECMP select group.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np

TIER_NAMES = ("same-server", "same-rack", "same-pod", "cross-pod")
MAX_HOPS = 6  # longest path: gpu->tor->agg->core->agg->tor->gpu
ROUTE_CACHE_MAX = 65536
"""Routes :meth:`FatTree.route` keeps before it starts over (bounds memory over many failure sets)."""
GBIT = 1e9 / 8  # bytes per second in one Gbit/s
GBYTE = 1e9
TOPOLOGY_KINDS = ("fat-tree", "rail")
"""Values of ``topology.kind``: this module's fat-tree, or the rail-optimised fabric of topology/rail.py."""
CROSS_RAIL_PATHS = ("spine", "pxn")
"""Values of ``topology.cross_rail`` (rail fabric only; see :class:`topology.rail.RailFabric`)."""
INTRA_SERVER_PATHS = ("nvlink", "nic")
"""Values of ``topology.intra_server``: the path between two GPUs of one server."""


class TopologyError(ValueError):
    """A fat-tree parameter is invalid; the message names the parameter."""


@dataclass(frozen=True)
class FatTreeConfig:
    """Shape and real-unit capacities of the fat-tree. All fields are overridable from the CLI."""

    pods: int = field(default=4, metadata={"help": "Number of pods."})
    tors_per_pod: int = field(default=2, metadata={"help": "ToR (rack) switches per pod."})
    servers_per_tor: int = field(default=2, metadata={"help": "GPU servers under each ToR."})
    gpus_per_server: int = field(default=4, metadata={"help": "GPUs per server, joined by the server's NVLink switch."})
    aggs_per_pod: int = field(default=2, metadata={"help": (
        "Aggregation switches per pod; each ToR has one uplink to each of them.")})
    cores: int = field(default=4, metadata={"help": (
        "Core switches; must be a multiple of aggs_per_pod (one group per aggregation index).")})
    nvlink_gbyte_s: float = field(default=450.0, metadata={"help": (
        "NVLink 4 bandwidth per direction per GPU, GB/s (H100 SXM: ~900 GB/s bidirectional).")})
    nic_gbit_s: float = field(default=400.0, metadata={"help": (
        "Scale-out NIC per GPU, Gbit/s (ConnectX-7 class; Mooncake pairs H800 with 200-400 Gb/s).")})
    tor_oversubscription: float = field(default=2.0, metadata={"help": (
        "ToR downlink (GPU NICs) : uplink capacity ratio. 2:1 is a common cost-optimised choice for inference "
        "clusters that are not rail-optimised training fabrics; 1.0 = non-blocking.")})
    agg_oversubscription: float = field(default=2.0, metadata={"help": (
        "Aggregation downlink : core uplink ratio. With the ToR ratio, the default makes cross-pod bisection "
        "4:1, which is where live congestion bites and where the paper's claims live.")})
    hop_latency_us: float = field(default=2.0, metadata={"help": (
        "Per switch hop latency, microseconds (reference: ~1-3 us per hop).")})
    nvlink_latency_us: float = field(default=1.0, metadata={"help": (
        "Latency of the NVLink switch hop inside a server, microseconds.")})
    routing: str = field(default="dst", metadata={"help": (
        "``dst``: deterministic destination-based paths (default); ``ecmp``: hash of the flow.")})
    reroute_delay_s: float = field(default=0.5, metadata={"help": (
        "Time from a link going down (or back up) to every switch forwarding on the new routes, s: the "
        "controller learns it from a port-status message or at the latest from its next port-stats poll (0.5 s, "
        "the worst case taken as default), then reinstalls routes avoiding the link.")})
    kind: str = field(default="fat-tree", metadata={"help": (
        "``fat-tree``: the four-tier tree above; ``rail``: a rail-optimised fabric (topology/rail.py): a pod is a "
        "scalable unit, GPU i of every server in it on rail switch i, ``cores`` spine switches above every rail "
        "switch; ToRs and aggregation switches do not exist (the ``t`` of a GPU name is then its rack label only).")})
    cross_rail: str = field(default="spine", metadata={"help": (
        "Rail fabric only: how a transfer between GPUs on different rails (not on one server) goes. ``spine``: the "
        "source NIC, its rail switch, a spine, the destination's rail switch; ``pxn``: NVLink to the GPU on the "
        "destination's rail in the source server first, then that GPU's NIC (NCCL's PXN, NCCL_PXN_DISABLE=0).")})
    intra_server: str = field(default="nvlink", metadata={"help": (
        "Path between two GPUs of one server: ``nvlink`` (the server's NVLink switch) or ``nic`` (out of the "
        "source NIC and back into the destination's over the fabric, as a transfer library that does not use "
        "NVLink for same-node copies does: same-node then costs what a cross-node transfer costs).")})

    def __post_init__(self) -> None:
        for f in ("pods", "tors_per_pod", "servers_per_tor", "gpus_per_server", "aggs_per_pod", "cores"):
            if int(getattr(self, f)) < 1:
                raise TopologyError(f"topology parameter '{f}' must be >= 1, got {getattr(self, f)}")
        for f in ("nvlink_gbyte_s", "nic_gbit_s", "tor_oversubscription", "agg_oversubscription"):
            if not float(getattr(self, f)) > 0:  # also rejects NaN
                raise TopologyError(f"topology parameter '{f}' must be > 0, got {getattr(self, f)}")
        for f in ("hop_latency_us", "nvlink_latency_us", "reroute_delay_s"):
            if not float(getattr(self, f)) >= 0:  # also rejects NaN
                raise TopologyError(f"topology parameter '{f}' must be >= 0, got {getattr(self, f)}")
        if self.cores % self.aggs_per_pod:
            raise TopologyError(
                f"topology parameter 'cores' ({self.cores}) must be a multiple of 'aggs_per_pod' ({self.aggs_per_pod})"
            )
        if self.routing not in ("dst", "ecmp"):
            raise TopologyError(f"topology parameter 'routing' must be 'dst' or 'ecmp', got {self.routing!r}")
        for f, allowed in (("kind", TOPOLOGY_KINDS), ("cross_rail", CROSS_RAIL_PATHS),
                           ("intra_server", INTRA_SERVER_PATHS)):
            if getattr(self, f) not in allowed:
                raise TopologyError(f"topology parameter '{f}' must be one of {', '.join(allowed)}, "
                                    f"got {getattr(self, f)!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class FatTree:
    """Index arithmetic over a :class:`FatTreeConfig`: GPUs are numbered 0..n_gpus-1 in
    (pod, tor, server, gpu) order; directed links are numbered 0..n_links-1 in blocks."""

    def __init__(self, config: FatTreeConfig | None = None) -> None:
        self.config = c = config or FatTreeConfig()
        if c.kind != "fat-tree":
            raise TopologyError(f"topology.kind={c.kind!r}: this component is built for fat-trees only (the "
                                f"simulator runs rail fabrics, docs/rail.md; the Mininet fabric, its controller "
                                f"and the oracle service do not)")
        self.gps = c.gpus_per_server
        self.gpt = c.gpus_per_server * c.servers_per_tor  # GPUs per ToR
        self.gpp = self.gpt * c.tors_per_pod  # GPUs per pod
        self.n_gpus = self.gpp * c.pods
        self.n_tors = c.pods * c.tors_per_pod
        self.cores_per_agg = c.cores // c.aggs_per_pod
        n, a = self.n_gpus, c.aggs_per_pod
        # Directed link blocks.
        self.b_nv_up = 0  # gpu -> its server switch
        self.b_nv_down = n  # server switch -> gpu
        self.b_nic_up = 2 * n  # gpu -> tor
        self.b_nic_down = 3 * n  # tor -> gpu
        self.n_tor_agg = self.n_tors * a
        self.b_tor_agg = 4 * n  # tor -> agg, index tor*a + k
        self.b_agg_tor = self.b_tor_agg + self.n_tor_agg
        self.n_agg_core = c.pods * a * self.cores_per_agg
        self.b_agg_core = self.b_agg_tor + self.n_tor_agg  # index (pod*a + k)*cpa + j
        self.b_core_agg = self.b_agg_core + self.n_agg_core
        self.n_links = self.b_core_agg + self.n_agg_core
        self.pad = self.n_links  # padding link index in path arrays (infinite capacity)
        self._routes: dict[tuple[int, int, frozenset[int]], np.ndarray] = {}  # see route()

    # ----------------------------------------------------------------- capacities
    @cached_property
    def link_capacity_gbit_s(self) -> dict[str, float]:
        c = self.config
        tor_down = self.gpt * c.nic_gbit_s
        tor_agg = tor_down / (c.aggs_per_pod * c.tor_oversubscription)
        agg_core = c.tors_per_pod * tor_agg / (self.cores_per_agg * c.agg_oversubscription)
        return {"nvlink": c.nvlink_gbyte_s * 8, "nic": c.nic_gbit_s, "tor_agg": tor_agg, "agg_core": agg_core}

    def switch_link_bands(self) -> list[tuple[int, int, str]]:
        """The link-index ranges above the NICs and their :attr:`link_capacity_gbit_s` keys."""
        return [(self.b_tor_agg, self.b_agg_core, "tor_agg"), (self.b_agg_core, self.n_links, "agg_core")]

    @cached_property
    def capacity(self) -> np.ndarray:
        """Directed link capacity in bytes/s, length n_links + 1 (last entry: padding, +inf)."""
        cap = np.empty(self.n_links + 1)
        g = self.link_capacity_gbit_s
        n = self.n_gpus
        cap[0 : 2 * n] = g["nvlink"] * GBIT
        cap[2 * n : 4 * n] = g["nic"] * GBIT
        for start, end, key in self.switch_link_bands():
            cap[start:end] = g[key] * GBIT
        cap[self.n_links] = np.inf
        return cap

    @cached_property
    def latency_s(self) -> np.ndarray:
        """Per directed link latency in seconds (padding entry 0)."""
        lat = np.full(self.n_links + 1, self.config.hop_latency_us * 1e-6)
        lat[0 : 2 * self.n_gpus] = self.config.nvlink_latency_us * 1e-6
        lat[self.n_links] = 0.0
        return lat

    # ----------------------------------------------------------------- positions and names
    def position(self, g: int) -> tuple[int, int, int, int]:
        """(pod, tor-in-pod, server-in-tor, gpu-in-server) of GPU ``g``."""
        self._check_gpu(g)
        return (g // self.gpp, (g % self.gpp) // self.gpt, (g % self.gpt) // self.gps, g % self.gps)

    def _check_gpu(self, g: int) -> None:
        if not 0 <= g < self.n_gpus:
            raise TopologyError(f"GPU index {g} out of range 0..{self.n_gpus - 1}")

    def gpu_name(self, g: int) -> str:
        p, t, s, i = self.position(g)
        return f"p{p}t{t}s{s}g{i}"

    def server_name(self, g: int) -> str:
        p, t, s, _ = self.position(g)
        return f"p{p}t{t}s{s}"

    def tor_name(self, tor: int) -> str:
        return f"p{tor // self.config.tors_per_pod}t{tor % self.config.tors_per_pod}"

    def agg_name(self, pod: int, k: int) -> str:
        return f"p{pod}a{k}"

    def core_name(self, k: int, j: int) -> str:
        return f"c{k * self.cores_per_agg + j}"

    @cached_property
    def gpu_names(self) -> list[str]:
        return [self.gpu_name(g) for g in range(self.n_gpus)]

    @cached_property
    def _gpu_index(self) -> dict[str, int]:
        return {name: g for g, name in enumerate(self.gpu_names)}

    def gpu_index(self, name: str) -> int:
        try:
            return self._gpu_index[name]
        except KeyError:
            raise TopologyError(
                f"unknown GPU host {name!r} (names look like p0t1s0g3; this fabric has {self.n_gpus} GPUs: "
                f"{self.gpu_names[0]}..{self.gpu_names[-1]})"
            ) from None

    def switch_names(self) -> dict[str, str]:
        """Every switch name -> role ('server', 'tor', 'agg', 'core')."""
        c = self.config
        out: dict[str, str] = {}
        for srv in range(self.n_gpus // self.gps):
            out[self.server_name(srv * self.gps)] = "server"
        for t in range(self.n_tors):
            out[self.tor_name(t)] = "tor"
        for p in range(c.pods):
            for k in range(c.aggs_per_pod):
                out[self.agg_name(p, k)] = "agg"
        for k in range(c.aggs_per_pod):
            for j in range(self.cores_per_agg):
                out[self.core_name(k, j)] = "core"
        return out

    def link_endpoints(self, link: int) -> tuple[str, str]:
        """(from-node, to-node) names of directed link ``link``."""
        n, a, cpa = self.n_gpus, self.config.aggs_per_pod, self.cores_per_agg
        if not 0 <= link < self.n_links:
            raise TopologyError(f"link index {link} out of range 0..{self.n_links - 1}")
        if link < n:
            return self.gpu_name(link), self.server_name(link)
        if link < 2 * n:
            return self.server_name(link - n), self.gpu_name(link - n)
        if link < 3 * n:
            g = link - 2 * n
            return self.gpu_name(g), self.tor_name(g // self.gpt)
        if link < 4 * n:
            g = link - 3 * n
            return self.tor_name(g // self.gpt), self.gpu_name(g)
        if link < self.b_agg_core:
            up = link < self.b_agg_tor
            i = link - (self.b_tor_agg if up else self.b_agg_tor)
            tor, k = divmod(i, a)
            ends = (self.tor_name(tor), self.agg_name(tor // self.config.tors_per_pod, k))
            return ends if up else (ends[1], ends[0])
        up = link < self.b_core_agg
        i = link - (self.b_agg_core if up else self.b_core_agg)
        pk, j = divmod(i, cpa)
        pod, k = divmod(pk, a)
        ends = (self.agg_name(pod, k), self.core_name(k, j))
        return ends if up else (ends[1], ends[0])

    def link_name(self, link: int) -> str:
        u, v = self.link_endpoints(link)
        return f"{u}->{v}"

    @cached_property
    def link_index(self) -> dict[tuple[str, str], int]:
        return {self.link_endpoints(i): i for i in range(self.n_links)}

    def sample_fabric_link(self) -> str:
        """A switch-to-switch link's name, to show what link names look like in a message."""
        return self.link_name(self.b_tor_agg)

    def link_kind(self, link: int) -> str:
        if link < 2 * self.n_gpus:
            return "nvlink"
        if link < 4 * self.n_gpus:
            return "nic"
        return "tor_agg" if link < self.b_agg_core else "agg_core"

    def undirected_links(self) -> Iterator[tuple[str, str, str]]:
        """(node-a, node-b, kind) for every physical link, a = the lower-tier end."""
        for i in range(self.n_links):
            kind = self.link_kind(i)
            up = (i < self.n_gpus) or (2 * self.n_gpus <= i < 3 * self.n_gpus) or (
                self.b_tor_agg <= i < self.b_agg_tor) or (self.b_agg_core <= i < self.b_core_agg)
            if up:
                u, v = self.link_endpoints(i)
                yield u, v, kind

    # ----------------------------------------------------------------- tiers and paths
    def tier(self, a: int, b: int) -> int:
        return int(self.tiers(a, np.array([b]))[0])

    def tiers(self, src: int, dsts: np.ndarray) -> np.ndarray:
        """Tier (0..3) from ``src`` to each of ``dsts``; vectorised."""
        dsts = np.asarray(dsts)
        t = np.full(dsts.shape, 3, dtype=np.int8)
        t[dsts // self.gpp == src // self.gpp] = 2
        t[dsts // self.gpt == src // self.gpt] = 1
        t[dsts // self.gps == src // self.gps] = 0
        return t

    def _up_choice(self, src: int | np.ndarray, dsts: np.ndarray,
                   flow_key: int | None) -> tuple[np.ndarray, np.ndarray]:
        a, cpa = self.config.aggs_per_pod, self.cores_per_agg
        if self.config.routing == "dst" or flow_key is None:
            h = np.asarray(dsts)
        else:
            h = np.array([zlib.crc32(f"{src}:{d}:{flow_key}".encode()) for d in np.atleast_1d(dsts)])
        return h % a, (h // a) % cpa

    def paths(self, src: int, dsts: np.ndarray, flow_key: int | None = None,
              down: frozenset[int] | set[int] | None = None) -> np.ndarray:
        """Directed link indices of the path from ``src`` to each of ``dsts``.

        Returns an int array of shape (len(dsts), MAX_HOPS) padded with ``self.pad`` (whose
        capacity is +inf and latency 0), so ``capacity[paths].min(axis=1)`` is the bottleneck.
        ``src == dst`` gives an empty (all padding) path.

        ``down``: directed links the routing avoids (failed links the controller knows of). A path
        crossing one moves to the first surviving (aggregation switch, core) choice in the order
        of :meth:`up_choices`; where none survives (a GPU's own NIC or NVLink link is down) the
        path is kept as it is, dead link included, so its capacity 0 shows it unreachable."""
        self._check_gpu(src)
        d = np.asarray(dsts, dtype=np.int64).reshape(-1)
        if d.size and (d.min() < 0 or d.max() >= self.n_gpus):
            raise TopologyError(f"destination GPU index out of range 0..{self.n_gpus - 1}")
        k, j = self._up_choice(src, d, flow_key)
        out = self._paths_via(src, d, k, j)
        if down:
            dead = np.isin(out, np.fromiter(down, dtype=np.int64, count=len(down))).any(axis=1)
            for row in np.flatnonzero(dead):
                for kk, jj in self.up_choices(int(k[row]), int(j[row])):
                    alt = self._paths_via(src, d[row:row + 1], np.array([kk]), np.array([jj]))
                    if not any(int(x) in down for x in alt[0]):
                        out[row] = alt[0]
                        break
        return out

    def up_choices(self, k: int, j: int) -> Iterator[tuple[int, int]]:
        """Every (aggregation switch, core in its group) choice, the routing's own ``(k, j)``
        first, then the other cores of group ``k``, then the other aggregation switches (each
        with core ``j`` first). A ToR picks the first ``k`` under which a surviving path exists and
        the aggregation switch the first surviving ``j``: the order a destination-based
        controller can install, switch by switch (``controller.routing`` follows it)."""
        a, cpa = self.config.aggs_per_pod, self.cores_per_agg
        for kk in [k] + [x for x in range(a) if x != k]:
            for jj in [j] + [x for x in range(cpa) if x != j]:
                yield kk, jj

    def _paths_via(self, src: int, d: np.ndarray, k: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Paths from ``src`` to ``d`` whose upward hops take aggregation switch ``k`` and core
        ``j`` of its group (per destination); tiers 0 and 1 ignore both. Every row is first
        written as the cross-pod path it is for most destinations of a large fabric, then the
        destinations in the source's own pod get theirs (:meth:`_paths_by_tier`)."""
        a, cpa = self.config.aggs_per_pod, self.cores_per_agg
        src_pod = src // self.gpp
        dst_pod = d // self.gpp
        out = np.empty((d.size, MAX_HOPS), dtype=np.int64)
        out[:, 0] = self.b_nic_up + src
        out[:, 1] = self.b_tor_agg + (src // self.gpt) * a + k
        out[:, 2] = self.b_agg_core + (src_pod * a + k) * cpa + j
        out[:, 3] = self.b_core_agg + (dst_pod * a + k) * cpa + j
        out[:, 4] = self.b_agg_tor + (d // self.gpt) * a + k
        out[:, 5] = self.b_nic_down + d
        near = np.flatnonzero(dst_pod == src_pod)
        if near.size:
            out[near] = self._paths_by_tier(src, d[near], k[near], j[near])
        return out

    def _paths_by_tier(self, src: int, d: np.ndarray, k: np.ndarray, j: np.ndarray) -> np.ndarray:
        """:meth:`_paths_via`, written tier by tier."""
        a, cpa = self.config.aggs_per_pod, self.cores_per_agg
        out = np.full((d.size, MAX_HOPS), self.pad, dtype=np.int64)
        tier = self.tiers(src, d)
        same = d == src
        src_tor, dst_tor = src // self.gpt, d // self.gpt
        src_pod, dst_pod = src // self.gpp, d // self.gpp
        # tier 0: nvlink up, nvlink down
        m = (tier == 0) & ~same
        if self.config.intra_server == "nvlink":
            out[m, 0] = self.b_nv_up + src
            out[m, 1] = self.b_nv_down + d[m]
        else:  # out of the NIC, through the ToR, into the other GPU's NIC: a same-rack route
            out[m, 0] = self.b_nic_up + src
            out[m, 1] = self.b_nic_down + d[m]
        # tier >= 1 all start with the NIC uplink and end with the NIC downlink
        m1 = tier == 1
        out[m1, 0] = self.b_nic_up + src
        out[m1, 1] = self.b_nic_down + d[m1]
        m2 = tier == 2
        out[m2, 0] = self.b_nic_up + src
        out[m2, 1] = self.b_tor_agg + src_tor * a + k[m2]
        out[m2, 2] = self.b_agg_tor + dst_tor[m2] * a + k[m2]
        out[m2, 3] = self.b_nic_down + d[m2]
        m3 = tier == 3
        out[m3, 0] = self.b_nic_up + src
        out[m3, 1] = self.b_tor_agg + src_tor * a + k[m3]
        out[m3, 2] = self.b_agg_core + (src_pod * a + k[m3]) * cpa + j[m3]
        out[m3, 3] = self.b_core_agg + (dst_pod[m3] * a + k[m3]) * cpa + j[m3]
        out[m3, 4] = self.b_agg_tor + dst_tor[m3] * a + k[m3]
        out[m3, 5] = self.b_nic_down + d[m3]
        return out

    def route(self, src: int, dst: int, flow_key: int | None = None,
              down: frozenset[int] = frozenset()) -> np.ndarray:
        """``paths(src, [dst], flow_key, down)[0]``, read-only. Destination-based routing makes it
        independent of the flow, so it is computed once per (src, dst, down) and shared (the
        simulator's flows and the inflight oracle's ledger ask for the same routes over and over);
        ECMP routes depend on the flow and are computed each time."""
        if self.config.routing != "dst":
            return self.paths(src, np.array([dst]), flow_key, down)[0]
        key = (src, dst, down)
        hit = self._routes.get(key)
        if hit is None:
            if len(self._routes) > ROUTE_CACHE_MAX:  # many failure sets over a long run
                self._routes.clear()
            if not down and type(self).paths is FatTree.paths:  # this class's own routes (a subclass has its own)
                hit = self._route_up(src, dst)
            else:
                hit = self.paths(src, np.array([dst]), flow_key, down)[0]
            hit.flags.writeable = False
            self._routes[key] = hit
        return hit

    def _route_up(self, src: int, dst: int) -> np.ndarray:
        """``paths(src, [dst])[0]`` under destination-based routing with every link up, in plain
        integers (one pair: no arrays to build until the row itself)."""
        self._check_gpu(src)
        if not 0 <= dst < self.n_gpus:
            raise TopologyError(f"destination GPU index out of range 0..{self.n_gpus - 1}")
        c = self.config
        a = c.aggs_per_pod
        k, j = dst % a, (dst // a) % self.cores_per_agg
        pad = self.pad
        if dst == src:
            row = [pad] * MAX_HOPS
        elif dst // self.gps == src // self.gps:
            nvlink = c.intra_server == "nvlink"
            row = [(self.b_nv_up if nvlink else self.b_nic_up) + src,
                   (self.b_nv_down if nvlink else self.b_nic_down) + dst] + [pad] * (MAX_HOPS - 2)
        elif dst // self.gpt == src // self.gpt:
            row = [self.b_nic_up + src, self.b_nic_down + dst] + [pad] * (MAX_HOPS - 2)
        elif dst // self.gpp == src // self.gpp:
            row = [self.b_nic_up + src, self.b_tor_agg + (src // self.gpt) * a + k,
                   self.b_agg_tor + (dst // self.gpt) * a + k, self.b_nic_down + dst, pad, pad]
        else:
            cpa = self.cores_per_agg
            row = [self.b_nic_up + src, self.b_tor_agg + (src // self.gpt) * a + k,
                   self.b_agg_core + ((src // self.gpp) * a + k) * cpa + j,
                   self.b_core_agg + ((dst // self.gpp) * a + k) * cpa + j,
                   self.b_agg_tor + (dst // self.gpt) * a + k, self.b_nic_down + dst]
        return np.array(row, dtype=np.int64)

    def path(self, src: int, dst: int, flow_key: int | None = None,
             down: frozenset[int] | set[int] | None = None) -> list[int]:
        row = self.paths(src, np.array([dst]), flow_key, down)[0]
        return [int(x) for x in row if x != self.pad]

    def path_nodes(self, src: int, dst: int, flow_key: int | None = None) -> list[str]:
        """Node names along the path, both end hosts included."""
        links = self.path(src, dst, flow_key)
        if not links:
            return [self.gpu_name(src)]
        return [self.link_endpoints(links[0])[0]] + [self.link_endpoints(i)[1] for i in links]

    def describe(self) -> dict:
        """Summary for summary.json and the CLI."""
        return {
            **self.config.to_dict(),
            "gpus": self.n_gpus,
            "switches": len(self.switch_names()),
            "directed_links": self.n_links,
            "link_capacity_gbit_s": self.link_capacity_gbit_s,
        }


def make_fabric(config: FatTreeConfig | None = None) -> FatTree:
    """The fabric ``config.kind`` names: a :class:`FatTree`, or a :class:`topology.rail.RailFabric`
    (a subclass answering the same questions: names, tiers, links, capacities, paths)."""
    if config is not None and config.kind == "rail":
        from topology.rail import RailFabric  # imports this module
        return RailFabric(config)
    return FatTree(config)


# the wiring conventions (ports, addresses, MACs, dpids) live in topology/wiring.py
from topology.wiring import gpu_mac, nic_ip, nvlink_ip, peer_ip, switch_dpid, switch_ports  # noqa: E402,F401
