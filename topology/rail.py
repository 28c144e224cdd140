"""Pure model of a rail-optimised GPU fabric (``topology.kind = "rail"``): links, capacities, paths.

Production GPU fabrics are mostly rail-optimised: GPU i of every server in a scalable unit has its
NIC on rail switch i of that unit, spine switches join the rail switches (docs/rail.md has the
sources). Shape, from :class:`topology.model.FatTreeConfig`'s fields so overrides keep their names:
a pod is a unit of ``tors_per_pod x servers_per_tor`` servers; each unit has ``gpus_per_server``
rail switches ``p{P}r{R}``; ``cores`` spines ``sp{K}`` link to every rail switch; rail-switch
oversubscription is ``tor_oversubscription``. GPU names and :meth:`tiers` are the fat-tree's: the
``t`` of a name is a rack label with no switch behind it (``aggs_per_pod`` has no effect).

Paths (:meth:`RailFabric.paths`), ``k`` the spine (``dst % cores`` under ``routing="dst"``, a hash
of the flow under ``"ecmp"``):

===========================  ===================================================================
pair                         path
===========================  ===================================================================
same server                  NVLink up, NVLink down (``intra_server="nvlink"``); with ``"nic"``:
                             NIC, rail switch, spine k, the other rail switch, NIC
same unit, same rail         NIC up, NIC down (one rail switch)
other unit, same rail        NIC, rail switch, spine k, the rail switch of the other unit, NIC
different rails              ``cross_rail="spine"``: NIC, rail switch, spine k, rail switch, NIC;
                             ``"pxn"``: NVLink to the source server's GPU on the destination's
                             rail, then that GPU's NIC and the same-rail route above
===========================  ===================================================================

PXN is NCCL's default since 2.12 (docs/rail.md). Label tiers do not order cost here (a same-rack
GPU on another rail crosses the spine); :meth:`RailFabric.rail_tiers` gives the classes that do.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterator
from functools import cached_property

import numpy as np

from topology.model import MAX_HOPS, FatTree, FatTreeConfig, TopologyError

RAIL_TIER_NAMES = ("same-server", "same-rail", "cross-rail", "cross-unit")
"""Classes of :meth:`RailFabric.rail_tiers`: 0 one server, 1 one rail switch (same unit, same rail),
2 another rail in the same unit, 3 another scalable unit."""


class RailFabric(FatTree):
    """Index arithmetic over a rail-optimised fabric. A :class:`FatTree` subclass so every caller
    typed against the fat-tree takes it: GPU numbering, names, label tiers and the route cache are
    inherited; switches, links, capacities and paths are the rail fabric's. Directed links are
    numbered in blocks: NVLink up/down, NIC up/down (GPU to its rail switch), rail-to-spine,
    spine-to-rail. The fat-tree's ToR, aggregation and core names do not exist (TopologyError)."""

    def __init__(self, config: FatTreeConfig | None = None) -> None:
        c = config or FatTreeConfig(kind="rail")
        if c.kind != "rail":
            raise TopologyError(f"RailFabric needs topology.kind='rail', got {c.kind!r}")
        self.config = c
        self.gps = c.gpus_per_server
        self.gpt = c.gpus_per_server * c.servers_per_tor  # GPUs per rack label
        self.gpp = self.gpt * c.tors_per_pod  # GPUs per scalable unit
        self.n_gpus = self.gpp * c.pods
        self.spu = self.gpp // self.gps  # servers per unit: each rail switch's NIC downlinks
        self.n_rails = c.pods * self.gps  # rail switches, index unit * gps + rail
        self.spines = c.cores
        n = self.n_gpus
        self.b_nv_up = 0
        self.b_nv_down = n
        self.b_nic_up = 2 * n  # gpu -> its rail switch
        self.b_nic_down = 3 * n
        self.n_rail_spine = self.n_rails * self.spines
        self.b_rail_spine = 4 * n  # index rail * spines + k
        self.b_spine_rail = self.b_rail_spine + self.n_rail_spine
        self.n_links = self.b_spine_rail + self.n_rail_spine
        self.pad = self.n_links
        self._routes: dict[tuple[int, int, frozenset[int]], np.ndarray] = {}

    # ----------------------------------------------------------------- capacities
    @cached_property
    def link_capacity_gbit_s(self) -> dict[str, float]:
        c = self.config
        rail_spine = self.spu * c.nic_gbit_s / (self.spines * c.tor_oversubscription)
        return {"nvlink": c.nvlink_gbyte_s * 8, "nic": c.nic_gbit_s, "rail_spine": rail_spine}

    def switch_link_bands(self) -> list[tuple[int, int, str]]:
        return [(self.b_rail_spine, self.n_links, "rail_spine")]

    # ----------------------------------------------------------------- names
    def rail_of(self, g: int) -> int:
        """Rail switch index (unit * gpus_per_server + rail) of GPU ``g``'s NIC."""
        self._check_gpu(g)
        return (g // self.gpp) * self.gps + g % self.gps

    def rail_name(self, rail: int) -> str:
        return f"p{rail // self.gps}r{rail % self.gps}"

    def spine_name(self, k: int) -> str:
        return f"sp{k}"

    def tor_name(self, tor: int) -> str:
        raise TopologyError("a rail fabric has no ToR switches (topology.kind='rail'): GPU NICs are on rail "
                            "switches p{unit}r{rail}")

    def agg_name(self, pod: int, k: int) -> str:
        raise TopologyError("a rail fabric has no aggregation switches (topology.kind='rail')")

    def core_name(self, k: int, j: int) -> str:
        raise TopologyError("a rail fabric has spine switches sp{k}, not cores (topology.kind='rail')")

    def up_choices(self, k: int, j: int) -> Iterator[tuple[int, int]]:
        raise TopologyError("a rail fabric has no (aggregation, core) choices: a route picks one spine")

    def switch_names(self) -> dict[str, str]:
        """Every switch name -> role ('server', 'rail', 'spine')."""
        out: dict[str, str] = {}
        for srv in range(self.n_gpus // self.gps):
            out[self.server_name(srv * self.gps)] = "server"
        for r in range(self.n_rails):
            out[self.rail_name(r)] = "rail"
        for k in range(self.spines):
            out[self.spine_name(k)] = "spine"
        return out

    def link_endpoints(self, link: int) -> tuple[str, str]:
        n = self.n_gpus
        if not 0 <= link < self.n_links:
            raise TopologyError(f"link index {link} out of range 0..{self.n_links - 1}")
        if link < n:
            return self.gpu_name(link), self.server_name(link)
        if link < 2 * n:
            return self.server_name(link - n), self.gpu_name(link - n)
        if link < 3 * n:
            g = link - 2 * n
            return self.gpu_name(g), self.rail_name(self.rail_of(g))
        if link < 4 * n:
            g = link - 3 * n
            return self.rail_name(self.rail_of(g)), self.gpu_name(g)
        up = link < self.b_spine_rail
        rail, k = divmod(link - (self.b_rail_spine if up else self.b_spine_rail), self.spines)
        ends = (self.rail_name(rail), self.spine_name(k))
        return ends if up else (ends[1], ends[0])

    def link_kind(self, link: int) -> str:
        if link < 2 * self.n_gpus:
            return "nvlink"
        return "nic" if link < 4 * self.n_gpus else "rail_spine"

    def undirected_links(self) -> Iterator[tuple[str, str, str]]:
        """(node-a, node-b, kind) for every physical link, a = the lower-tier end."""
        n = self.n_gpus
        for i in list(range(n)) + list(range(2 * n, 3 * n)) + list(range(self.b_rail_spine, self.b_spine_rail)):
            u, v = self.link_endpoints(i)
            yield u, v, self.link_kind(i)

    def sample_fabric_link(self) -> str:
        return self.link_name(self.b_rail_spine)

    # ----------------------------------------------------------------- classes and paths
    def rail_tiers(self, src: int, dsts: np.ndarray) -> np.ndarray:
        """Class (0..3, :data:`RAIL_TIER_NAMES`) from ``src`` to each of ``dsts``; vectorised."""
        d = np.asarray(dsts)
        t = np.full(d.shape, 3, dtype=np.int8)
        unit = d // self.gpp == src // self.gpp
        t[unit] = 2
        t[unit & (d % self.gps == src % self.gps)] = 1
        t[d // self.gps == src // self.gps] = 0
        return t

    def _spine(self, src: int, d: np.ndarray, flow_key: int | None) -> np.ndarray:
        if self.config.routing == "dst" or flow_key is None:
            return d % self.spines
        return np.array([zlib.crc32(f"{src}:{x}:{flow_key}".encode()) for x in d], dtype=np.int64) % self.spines

    def paths(self, src: int, dsts: np.ndarray, flow_key: int | None = None,
              down: frozenset[int] | set[int] | None = None) -> np.ndarray:
        """Directed link indices from ``src`` to each of ``dsts``, padded to ``MAX_HOPS`` with
        ``self.pad`` (as :meth:`FatTree.paths`). ``down``: links the routing avoids; a path
        crossing one moves to the first surviving spine in the order k, k+1, ... (mod spines);
        where none survives (a NIC or NVLink link is down) the path keeps the dead link."""
        self._check_gpu(src)
        d = np.asarray(dsts, dtype=np.int64).reshape(-1)
        if d.size and (d.min() < 0 or d.max() >= self.n_gpus):
            raise TopologyError(f"destination GPU index out of range 0..{self.n_gpus - 1}")
        k = self._spine(src, d, flow_key)
        out = self._paths_via_spine(src, d, k)
        if down:
            dead = np.isin(out, np.fromiter(down, dtype=np.int64, count=len(down))).any(axis=1)
            for row in np.flatnonzero(dead):
                for step in range(1, self.spines):
                    kk = np.array([(int(k[row]) + step) % self.spines])
                    alt = self._paths_via_spine(src, d[row:row + 1], kk)
                    if not any(int(x) in down for x in alt[0]):
                        out[row] = alt[0]
                        break
        return out

    def _paths_via_spine(self, src: int, d: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Paths from ``src`` to ``d`` whose spine hop (where they have one) takes spine ``k``."""
        c = self.config
        out = np.full((d.size, MAX_HOPS), self.pad, dtype=np.int64)
        gps, s_unit = self.gps, src // self.gpp
        d_unit, d_rail = d // self.gpp, d % gps
        same_server = (d // gps == src // gps) & (d != src)
        if c.intra_server == "nvlink":
            out[same_server, 0] = self.b_nv_up + src
            out[same_server, 1] = self.b_nv_down + d[same_server]
            via_nic = ~same_server & (d != src)
        else:
            via_nic = d != src
        relay = np.full(d.shape, src, dtype=np.int64)  # the GPU whose NIC the data leaves from
        col = np.zeros(d.shape, dtype=np.int64)
        if c.cross_rail == "pxn":
            pxn = via_nic & ~same_server & (d_rail != src % gps)
            relay[pxn] = src - src % gps + d_rail[pxn]
            out[pxn, 0] = self.b_nv_up + src
            out[pxn, 1] = self.b_nv_down + relay[pxn]
            col[pxn] = 2
        rows = np.flatnonzero(via_nic)
        r, cc = relay[rows], col[rows]
        out[rows, cc] = self.b_nic_up + r
        one_switch = (d_unit[rows] == s_unit) & (d_rail[rows] == r % gps)
        o, t = rows[one_switch], rows[~one_switch]
        out[o, col[o] + 1] = self.b_nic_down + d[o]
        src_rail = s_unit * gps + relay[t] % gps
        dst_rail = d_unit[t] * gps + d_rail[t]
        out[t, col[t] + 1] = self.b_rail_spine + src_rail * self.spines + k[t]
        out[t, col[t] + 2] = self.b_spine_rail + dst_rail * self.spines + k[t]
        out[t, col[t] + 3] = self.b_nic_down + d[t]
        return out

    def describe(self) -> dict:
        out = super().describe()
        out["rails_per_unit"] = self.gps
        out["servers_per_unit"] = self.spu
        return out
