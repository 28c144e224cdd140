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

The controller's configuration comes from a JSON file named by the ``NETKV_CONTROLLER_CONFIG``
environment variable (set by :mod:`controller.run`); see :class:`controller.run.ControllerConfig`.
"""
from __future__ import annotations

import time

from ryu.base import app_manager
from ryu.controller import ofp_event
from ryu.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from ryu.ofproto import ofproto_v1_3

from controller.linkstate_app import EventLinksChanged
from controller.routing import RoutingError, flow_entries
from controller.run import ControllerConfig
from topology.model import FatTree, switch_dpid

ROUTE_COOKIE = 0x4E4B56  # "NKV": marks every flow this app installs
TABLE_MISS_PRIORITY = 0


class RoutingApp(app_manager.RyuApp):
    """Installs proactive routes and a drop table-miss on every switch of the fat-tree."""

    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config = ControllerConfig.load()
        self.tree = FatTree(self.config.topology)
        self.dpid_names = {switch_dpid(self.tree, sw): sw for sw in self.tree.switch_names()}
        self.switches: dict[str, dict] = {}
        """Switch name -> {"connected", "ready", "flows", "connected_at", "ready_at"}."""
        self.datapaths: dict[str, object] = {}
        self.installed: dict[str, dict[tuple, int]] = {}
        """Switch name -> {match key: out port} as last sent."""
        self.down: frozenset[int] = frozenset()
        self.reroutes: list[dict] = []
        """One entry per link change: link, down, seen_at, source, sent_at, switches, entries,
        confirmed_at (the last barrier reply; None until then)."""
        self._barriers: dict[tuple[str, int], dict] = {}  # (switch, xid) -> the reroute awaiting it

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _switch_features_handler(self, ev) -> None:
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
        self.datapaths[name] = dp
        self.installed[name] = {_key(e.match): e.out_port for e in entries}
        self.switches[name] = {"connected": True, "ready": False, "flows": len(entries) + 1,
                               "connected_at": time.time(), "ready_at": None}
        self.logger.info("%s (%016x): %d routes sent", name, dp.id, len(entries))

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier_reply_handler(self, ev) -> None:
        name = self.dpid_names.get(ev.msg.datapath.id)
        reroute = self._barriers.pop((name, ev.msg.xid), None)
        if reroute is not None:
            reroute["pending"].discard(name)
            if not reroute["pending"]:
                reroute["confirmed_at"] = time.time()
                self.logger.info("reroute for %s confirmed by %d switch(es)", reroute["link"],
                                 len(reroute["switches"]))
            return
        state = self.switches.get(name) if name else None
        if state is not None and not state["ready"]:
            state["ready"], state["ready_at"] = True, time.time()
            self.logger.info("%s: routes installed", name)

    @set_ev_cls(EventLinksChanged)
    def _links_changed_handler(self, ev: EventLinksChanged) -> None:
        """Re-point, on every connected switch, the destinations whose route changed."""
        self.down = ev.down
        reroute = {"link": ev.change.name, "down": ev.change.down, "seen_at": ev.change.at,
                   "source": ev.change.source, "sent_at": None, "switches": [], "entries": 0,
                   "confirmed_at": None, "pending": set()}
        for name, dp in list(self.datapaths.items()):
            if not self.switches.get(name, {}).get("connected"):
                continue
            entries = flow_entries(self.tree, name, self.down)
            table = self.installed.setdefault(name, {})
            changed = [e for e in entries if table.get(_key(e.match)) != e.out_port]
            if not changed:
                continue
            parser = dp.ofproto_parser
            for e in changed:
                self._add_flow(dp, e.priority, parser.OFPMatch(**e.match), [parser.OFPActionOutput(e.out_port)])
                table[_key(e.match)] = e.out_port
            barrier = parser.OFPBarrierRequest(dp)
            dp.set_xid(barrier)
            self._barriers[(name, barrier.xid)] = reroute
            reroute["pending"].add(name)
            dp.send_msg(barrier)
            reroute["switches"].append(name)
            reroute["entries"] += len(changed)
        reroute["sent_at"] = time.time()
        if not reroute["pending"]:
            reroute["confirmed_at"] = reroute["sent_at"]
        self.reroutes.append(reroute)
        self.logger.info("link %s %s: %d entries re-pointed on %s", ev.change.name,
                         "down" if ev.change.down else "up", reroute["entries"], ", ".join(reroute["switches"]) or "no switch")

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change_handler(self, ev) -> None:
        if ev.state != DEAD_DISPATCHER or ev.datapath.id is None:
            return
        name = self.dpid_names.get(ev.datapath.id)
        if name in self.switches:
            self.switches[name].update(connected=False, ready=False)
            self.datapaths.pop(name, None)
            self.logger.info("%s disconnected", name)

    @staticmethod
    def _add_flow(dp, priority: int, match, actions: list) -> None:
        ofp, parser = dp.ofproto, dp.ofproto_parser
        inst = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)] if actions else []
        dp.send_msg(parser.OFPFlowMod(datapath=dp, cookie=ROUTE_COOKIE, priority=priority,
                                      command=ofp.OFPFC_ADD, match=match, instructions=inst))


def _key(match: dict) -> tuple:
    """Hashable form of a flow entry's match."""
    return tuple(sorted(match.items()))
