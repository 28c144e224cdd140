"""Port-stats counters -> per directed link utilisation (pure: no Ryu, no Mininet).

Like Ryu's ``simple_monitor_13`` the arithmetic only needs successive counter samples; the Ryu
app converts each ``OFPPortStats`` entry with :meth:`PortSample.from_port_stats` and calls
:meth:`LinkTelemetry.update`. Rates use the switch's own ``duration_sec/nsec`` of the port, not
the controller's clock, so controller jitter and late replies do not distort them.

Port -> link mapping (wiring conventions of :mod:`topology.model`):

* a switch port's **tx** measures the directed link ``switch->neighbour``;
* a port facing a GPU host also measures ``host->switch`` from its **rx** (hosts run no
  OpenFlow); its ``drops`` are the port's ``rx_dropped`` delta.

Every directed link of the model is therefore measured by exactly one (dpid, port, direction).

Links never measured yet are present in :meth:`LinkTelemetry.snapshot` with ``tx_bps`` 0,
``utilisation`` 0, ``drops`` 0 and ``sample_time`` null, so consumers always see the full set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from controller.settings import DEFAULT_POLL_INTERVAL_S
from topology.errors import UnknownLinkError
from topology.model import FatTree, switch_dpid, switch_ports
from topology.utilisation import utilisation

_RATE_FIELDS = ("tx_bytes", "rx_bytes")


class UnknownDatapathError(KeyError):
    """A port-stats sample came from a datapath id that is not a switch of the model."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class PortSample:
    """Counters of one switch port at one poll; ``duration_s`` is the switch's own
    ``duration_sec + duration_nsec * 1e-9`` for the port."""

    tx_bytes: int
    rx_bytes: int
    tx_dropped: int
    rx_dropped: int
    duration_s: float

    @classmethod
    def from_port_stats(cls, stat: Any) -> PortSample:
        """Build from any object with OFPPortStats attributes (duck-typed, no Ryu import)."""
        return cls(
            tx_bytes=int(stat.tx_bytes),
            rx_bytes=int(stat.rx_bytes),
            tx_dropped=int(stat.tx_dropped),
            rx_dropped=int(stat.rx_dropped),
            duration_s=float(stat.duration_sec) + float(stat.duration_nsec) * 1e-9,
        )


def rate_bps(prev: PortSample, cur: PortSample, field: str = "tx_bytes") -> float | None:
    """Bits/s of byte counter ``field`` between two samples of the same port.

    None when the counter went backwards (port reset, switch reconnect, 64-bit wrap) or the
    port's duration did not advance: the caller discards that interval."""
    if field not in _RATE_FIELDS:
        raise ValueError(f"rate field must be one of {_RATE_FIELDS}, got {field!r}")
    dt = cur.duration_s - prev.duration_s
    delta = getattr(cur, field) - getattr(prev, field)
    if dt <= 0 or delta < 0:
        return None
    return delta * 8.0 / dt


@dataclass(frozen=True)
class PortLinks:
    """The directed links one switch port measures: ``tx_link`` from its tx counters and, for
    ports facing a GPU host, ``rx_link`` (host->switch) from its rx counters."""

    tx_link: str
    rx_link: str | None


@dataclass
class _LinkState:
    capacity_bps: float
    tx_bps: float = 0.0
    drops: int = 0
    sample_time: float | None = None
    down: bool = False


class LinkTelemetry:
    """Per directed link rates from per port samples, in the DESIGN.md snapshot schema."""

    def __init__(
        self,
        tree: FatTree,
        capacity_bps: dict[str, float] | None = None,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    ) -> None:
        if not poll_interval_s > 0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s}")
        self.tree = tree
        self.poll_interval_s = float(poll_interval_s)
        self._links: dict[str, _LinkState] = {
            tree.link_name(i): _LinkState(capacity_bps=float(tree.capacity[i]) * 8.0)
            for i in range(tree.n_links)
        }
        self.port_map: dict[tuple[int, int], PortLinks] = {}
        self.dpid_names: dict[int, str] = {}
        gpus = set(tree.gpu_names)
        for sw in tree.switch_names():
            dpid = switch_dpid(tree, sw)
            self.dpid_names[dpid] = sw
            for port, nb in switch_ports(tree, sw).items():
                rx = f"{nb}->{sw}" if nb in gpus else None
                self.port_map[(dpid, port)] = PortLinks(tx_link=f"{sw}->{nb}", rx_link=rx)
        self._prev: dict[tuple[int, int], PortSample] = {}
        self._time: float | None = None
        for name, bps in (capacity_bps or {}).items():
            self.set_capacity(name, bps)

    def set_capacity(self, link_name: str, bps: float) -> None:
        """Capacity (bits/s) used for ``utilisation``; 0 marks a link that is down."""
        state = self._links.get(link_name)
        if state is None:
            raise UnknownLinkError(f"unknown directed link {link_name!r} (names look like 'p0t0->p0a1')")
        if not bps >= 0:
            raise ValueError(f"capacity of {link_name} must be >= 0 bits/s, got {bps}")
        state.capacity_bps = float(bps)

    def set_down(self, link_name: str, down: bool) -> None:
        """Mark a directed link down (its snapshot capacity becomes 0, its nominal one is kept for
        when it returns) or up again."""
        state = self._links.get(link_name)
        if state is None:
            raise UnknownLinkError(f"unknown directed link {link_name!r} (names look like 'p0t0->p0a1')")
        state.down = bool(down)

    def update(self, dpid: int, port_no: int, sample: PortSample, now: float) -> None:
        """Feed one port's counters polled at unix time ``now``.

        The first sample of a port is only remembered; an interval whose counters went backwards
        or whose duration did not advance is discarded (the sample becomes the new baseline).
        Ports outside the wiring conventions (e.g. OFPP_LOCAL) are ignored."""
        if dpid not in self.dpid_names:
            raise UnknownDatapathError(f"datapath id {dpid:#x} is not a switch of this fat-tree")
        links = self.port_map.get((dpid, port_no))
        if links is None:
            return
        self._time = now if self._time is None else max(self._time, now)
        prev = self._prev.get((dpid, port_no))
        self._prev[(dpid, port_no)] = sample
        if prev is None:
            return
        tx_drops = sample.tx_dropped - prev.tx_dropped
        self._record(links.tx_link, rate_bps(prev, sample, "tx_bytes"), tx_drops, now)
        if links.rx_link is not None:
            rx_drops = sample.rx_dropped - prev.rx_dropped
            self._record(links.rx_link, rate_bps(prev, sample, "rx_bytes"), rx_drops, now)

    def _record(self, link: str, bps: float | None, drops: int, now: float) -> None:
        if bps is None:
            return
        state = self._links[link]
        state.tx_bps = bps
        state.drops = max(0, drops)
        state.sample_time = now

    def counters(self) -> dict[str, tuple[int, int]]:
        """Per directed link the switch's own cumulative counters at its newest poll: (bytes sent,
        packets dropped), from the tx counters of the port that sends on it (rx for a host's link
        into its switch). What a switch exporter hands Prometheus: ``rate()`` over these is the
        link's rate, measured by the switch, not integrated by the controller. Links no poll has
        reached yet are absent."""
        out: dict[str, tuple[int, int]] = {}
        for key, sample in self._prev.items():
            links = self.port_map.get(key)
            if links is None:
                continue
            out[links.tx_link] = (sample.tx_bytes, sample.tx_dropped)
            if links.rx_link is not None:
                out[links.rx_link] = (sample.rx_bytes, sample.rx_dropped)
        return out

    def snapshot(self) -> dict:
        """``{"time", "poll_interval_s", "links": {name: {capacity_bps, tx_bps, utilisation,
        drops, sample_time, down}}}``; ``time`` is the newest poll seen (null before any); a link
        that is down has ``capacity_bps`` 0."""
        states = list(self._links.values())
        caps = [0.0 if s.down else s.capacity_bps for s in states]
        # the bits of one second at the measured rate against the capacity, every link at once
        # (the simulator's formula)
        util = utilisation(np.array([s.tx_bps for s in states]), 1.0, np.array(caps)).tolist()
        links: dict[str, dict] = {}
        for (name, s), u, cap in zip(self._links.items(), util, caps):
            links[name] = {
                "capacity_bps": cap,
                "tx_bps": s.tx_bps,
                "utilisation": u,
                "drops": s.drops,
                "sample_time": s.sample_time,
                "down": s.down,
            }
        return {"time": self._time, "poll_interval_s": self.poll_interval_s, "links": links}
