"""Ryu app: proactive fat-tree routes on every switch connect (one concern: the flow tables).

On ``EventOFPSwitchFeatures`` the app installs :func:`controller.routing.flow_entries` for the
switch (exact matches, one output port each, no flooding: the fat-tree has loops) plus a
table-miss entry that drops. A barrier follows; its reply marks the switch ``ready``. Installing is
idempotent (OpenFlow ADD with an identical match and priority replaces the entry), so a restarted
controller re-installs over the flows the switches kept (bridges run with fail-mode secure).

On :class:`controller.linkstate_app.EventLinksChanged` it recomputes every switch's table with the
down links avoided (:func:`controller.routing.flow_entries`), sends only the entries whose port
changed, and a barrier to each switch it changed; ``reroutes`` records, per link change, when it
was seen, when the flow-mods left and when the last switch confirmed them (served by the REST app).

The config, the tree and the connected switches come from :class:`controller.base_app.FabricApp`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ryu.controller import ofp_event
from ryu.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER, set_ev_cls

from controller.base_app import FabricApp
from controller.linkstate_app import EventLinksChanged
from controller.routing import RoutingError, flow_entries

if TYPE_CHECKING:  # annotations only: importing it before ryu.base.app_manager is circular
    from ryu.controller.controller import Datapath

ROUTE_COOKIE = 0x4E4B56  # "NKV": marks every flow this app installs
TABLE_MISS_PRIORITY = 0

MatchKey = tuple[tuple[str, object], ...]
"""Hashable form of a flow entry's match (:func:`_key`)."""


@dataclass
class Reroute:
    """One link change and the flow-mods it caused: the ``link`` that went ``down`` (or up), when
    the change was seen (``seen_at``, through ``source``), when the flow-mods left (``sent_at``),
    the ``switches`` changed and how many ``entries``, and when the last switch confirmed them
    (``confirmed_at``, the last barrier reply; None until then)."""

    link: str
    down: bool
    seen_at: float
    source: str
    sent_at: float | None = None
    switches: list[str] = field(default_factory=list)
    entries: int = 0
    confirmed_at: float | None = None
    pending: set[str] = field(default_factory=set)
    """Switches whose barrier reply is still awaited (not served)."""

    def to_dict(self) -> dict[str, Any]:
        """The REST ``status`` form (everything but ``pending``)."""
        return {"link": self.link, "down": self.down, "seen_at": self.seen_at, "source": self.source,
                "sent_at": self.sent_at, "switches": list(self.switches), "entries": self.entries,
                "confirmed_at": self.confirmed_at}


class RoutingApp(FabricApp):
    """Installs proactive routes and a drop table-miss on every switch of the fat-tree."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.switches: dict[str, dict[str, Any]] = {}
        """Switch name -> {"connected", "ready", "flows", "connected_at", "ready_at"}."""
        self.installed: dict[str, dict[MatchKey, int]] = {}
        """Switch name -> {match key: out port} as last sent."""
        self.down: frozenset[int] = frozenset()
        self.reroutes: list[Reroute] = []
        """One entry per link change."""
        self._barriers: dict[tuple[str, int], Reroute] = {}  # (switch, xid) -> the reroute awaiting it

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _switch_features_handler(self, ev: Any) -> None:
        dp = ev.msg.datapath
        name = self.dpid_names.get(dp.id)
        if name is None:
            self.logger.warning("ignoring datapath %016x: not a switch of this fat-tree", dp.id)
            return
        try:
            entries = flow_entries(self.tree, name, self.down)
        except RoutingError as exc:
            self.logger.error("no routes for %s: %s", name, exc)
            return
        parser = dp.ofproto_parser
        for e in entries:
            actions = [parser.OFPActionOutput(e.out_port)]
            self._add_flow(dp, e.priority, parser.OFPMatch(**e.match), actions)
        self._add_flow(dp, TABLE_MISS_PRIORITY, parser.OFPMatch(), [])  # drop: no flooding ever
        dp.send_msg(parser.OFPBarrierRequest(dp))
        self.datapaths[dp.id] = dp  # already now: a link change before MAIN_DISPATCHER re-routes it too
        self.installed[name] = {_key(e.match): e.out_port for e in entries}
        self.switches[name] = {"connected": True, "ready": False, "flows": len(entries) + 1,
                               "connected_at": time.time(), "ready_at": None}
        self.logger.info("%s (%016x): %d routes sent", name, dp.id, len(entries))

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier_reply_handler(self, ev: Any) -> None:
        name = self.dpid_names.get(ev.msg.datapath.id)
        if name is None:
            return
        reroute = self._barriers.pop((name, ev.msg.xid), None)
        if reroute is not None:
            reroute.pending.discard(name)
            if not reroute.pending:
                reroute.confirmed_at = time.time()
                self.logger.info("reroute for %s confirmed by %d switch(es)", reroute.link, len(reroute.switches))
            return
        state = self.switches.get(name)
        if state is not None and not state["ready"]:
            state["ready"], state["ready_at"] = True, time.time()
            self.logger.info("%s: routes installed", name)

    @set_ev_cls(EventLinksChanged)
    def _links_changed_handler(self, ev: EventLinksChanged) -> None:
        """Re-point, on every connected switch, the destinations whose route changed."""
        self.down = ev.down
        reroute = Reroute(link=ev.change.name, down=ev.change.down, seen_at=ev.change.at, source=ev.change.source)
        for dpid, dp in list(self.datapaths.items()):
            name = self.dpid_names.get(dpid)
            if name is None or not self.switches.get(name, {}).get("connected"):
                continue
            changed = self._repoint(dp, name)
            if not changed:
                continue
            barrier = dp.ofproto_parser.OFPBarrierRequest(dp)
            dp.set_xid(barrier)
            self._barriers[(name, barrier.xid)] = reroute
            reroute.pending.add(name)
            dp.send_msg(barrier)
            reroute.switches.append(name)
            reroute.entries += changed
        reroute.sent_at = time.time()
        if not reroute.pending:
            reroute.confirmed_at = reroute.sent_at
        self.reroutes.append(reroute)
        self.logger.info("link %s %s: %d entries re-pointed on %s", ev.change.name,
                         "down" if ev.change.down else "up", reroute.entries,
                         ", ".join(reroute.switches) or "no switch")

    def _repoint(self, dp: Datapath, name: str) -> int:
        """Send switch ``name`` the entries whose output port differs with ``self.down``; how many."""
        table = self.installed.setdefault(name, {})
        changed = [e for e in flow_entries(self.tree, name, self.down) if table.get(_key(e.match)) != e.out_port]
        parser = dp.ofproto_parser
        for e in changed:
            self._add_flow(dp, e.priority, parser.OFPMatch(**e.match), [parser.OFPActionOutput(e.out_port)])
            table[_key(e.match)] = e.out_port
        return len(changed)

    def switch_left(self, dp: Datapath) -> None:
        name = self.dpid_names.get(dp.id)
        if name in self.switches:
            self.switches[name].update(connected=False, ready=False)
            self.logger.info("%s disconnected", name)

    @staticmethod
    def _add_flow(dp: Datapath, priority: int, match: Any, actions: list[Any]) -> None:
        ofp, parser = dp.ofproto, dp.ofproto_parser
        inst = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)] if actions else []
        dp.send_msg(parser.OFPFlowMod(datapath=dp, cookie=ROUTE_COOKIE, priority=priority,
                                      command=ofp.OFPFC_ADD, match=match, instructions=inst))


def _key(match: dict[str, object]) -> MatchKey:
    """Hashable form of a flow entry's match."""
    return tuple(sorted(match.items()))
