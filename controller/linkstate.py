"""Which links of the fat-tree are down, from what the switches say of their ports (pure: no Ryu).

A switch reports a port's state in an OpenFlow port-status message (``OFPT_PORT_STATUS``) and in
every port-description reply (``OFPMP_PORT_DESC``, which :mod:`controller.linkstate_app` polls as
well: docs/DESIGN.md#link-failures-on-the-fabric says why). A port is down when its state has
``OFPPS_LINK_DOWN``, its config ``OFPPC_PORT_DOWN``, or it was deleted. A physical link is down
when any port at its ends is: both its directed links are then down, whichever end reported it
(a GPU's links are seen from the switch end only: hosts run no OpenFlow). Names are the
scenarios' ``"upper<->lower"`` (e.g. ``"p1a0<->p1t1"``).

:meth:`LinkStatus.observe` returns a :class:`LinkChange` when a physical link changes state, with
the time and the source that showed it first; the routing and telemetry apps act on those.
"""
from __future__ import annotations

from dataclasses import dataclass

from topology.model import FatTree
from topology.wiring import switch_dpid, switch_ports

PORT_STATUS = "port_status"
"""Source of a change seen in an OpenFlow port-status message (event-driven)."""
PORT_DESC_POLL = "port_desc_poll"
"""Source of a change seen in a polled port-description reply (at most one poll interval late)."""


@dataclass(frozen=True)
class LinkChange:
    """A physical link ``name`` (``"u<->v"``) went ``down`` (True) or came back up (False) at unix
    time ``at``, first seen through ``source``; ``links`` are its directed link indices."""

    name: str
    links: tuple[int, int]
    down: bool
    at: float
    source: str

    def to_dict(self) -> dict:
        return {"link": self.name, "down": self.down, "at": self.at, "source": self.source}


def port_is_down(state: int, config: int, deleted: bool, link_down_bit: int, port_down_bit: int) -> bool:
    """Whether an OpenFlow port description says the port cannot forward."""
    return deleted or bool(state & link_down_bit) or bool(config & port_down_bit)


class LinkStatus:
    """Per-port down flags -> the set of directed links that are down, and their changes."""

    def __init__(self, tree: FatTree) -> None:
        self.tree = tree
        self._port_link: dict[tuple[int, int], tuple[str, tuple[int, int]]] = {}
        for sw in tree.switch_names():
            dpid = switch_dpid(tree, sw)
            for port, nb in switch_ports(tree, sw).items():
                up, dn = sorted((tree.link_index[(sw, nb)], tree.link_index[(nb, sw)]))
                lower, upper = tree.link_endpoints(up)  # the lower index is the upward direction
                self._port_link[(dpid, port)] = (f"{upper}<->{lower}", (up, dn))
        self._down_ports: dict[str, set[tuple[int, int]]] = {}  # physical link -> ports saying down
        self.changes: list[LinkChange] = []

    def link_of(self, dpid: int, port_no: int) -> str | None:
        """Physical link name at a switch port; None for ports outside the model (OFPP_LOCAL)."""
        entry = self._port_link.get((dpid, port_no))
        return entry[0] if entry else None

    def observe(self, dpid: int, port_no: int, down: bool, now: float, source: str) -> LinkChange | None:
        """Record one port's state; a :class:`LinkChange` when its physical link changed state."""
        entry = self._port_link.get((dpid, port_no))
        if entry is None:
            return None
        name, links = entry
        ports = self._down_ports.setdefault(name, set())
        was = bool(ports)
        if down:
            ports.add((dpid, port_no))
        else:
            ports.discard((dpid, port_no))
        if bool(ports) == was:
            return None
        change = LinkChange(name, links, not was, now, source)
        self.changes.append(change)
        return change

    def down_links(self) -> frozenset[int]:
        """Directed link indices of every physical link that is down now."""
        out: set[int] = set()
        for ports in self._down_ports.values():
            if ports:
                dpid, port = next(iter(ports))
                out.update(self._port_link[(dpid, port)][1])
        return frozenset(out)

    def down_names(self) -> list[str]:
        """Physical link names that are down now, sorted."""
        return sorted(name for name, ports in self._down_ports.items() if ports)
