"""Ryu app: proactive fat-tree routes on every switch connect (one concern: the flow tables).

On ``EventOFPSwitchFeatures`` the app installs :func:`controller.routing.flow_entries` for the
switch (exact matches, one output port each, no flooding: the fat-tree has loops) plus a
table-miss entry that drops. A barrier follows; its reply marks the switch ``ready``. Installing is
idempotent (OpenFlow ADD with an identical match and priority replaces the entry), so a restarted
controller re-installs over the flows the switches kept (bridges run with fail-mode secure).

The controller's configuration comes from a JSON file named by the ``NETKV_CONTROLLER_CONFIG``
environment variable (set by :mod:`controller.run`); see :class:`controller.run.ControllerConfig`.
"""
from __future__ import annotations

import time

from ryu.base import app_manager
from ryu.controller import ofp_event
from ryu.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from ryu.ofproto import ofproto_v1_3

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

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _switch_features_handler(self, ev) -> None:
        dp = ev.msg.datapath
        name = self.dpid_names.get(dp.id)
        if name is None:
            self.logger.warning("ignoring datapath %016x: not a switch of this fat-tree", dp.id)
            return
        try:
            entries = flow_entries(self.tree, name)
        except RoutingError as exc:
            self.logger.error("no routes for %s: %s", name, exc)
            return
        parser = dp.ofproto_parser
        for e in entries:
            actions = [parser.OFPActionOutput(e.out_port)]
            self._add_flow(dp, e.priority, parser.OFPMatch(**e.match), actions)
        self._add_flow(dp, TABLE_MISS_PRIORITY, parser.OFPMatch(), [])  # drop: no flooding ever
        dp.send_msg(parser.OFPBarrierRequest(dp))
        self.switches[name] = {"connected": True, "ready": False, "flows": len(entries) + 1,
                               "connected_at": time.time(), "ready_at": None}
        self.logger.info("%s (%016x): %d routes sent", name, dp.id, len(entries))

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier_reply_handler(self, ev) -> None:
        name = self.dpid_names.get(ev.msg.datapath.id)
        state = self.switches.get(name) if name else None
        if state is not None and not state["ready"]:
            state["ready"], state["ready_at"] = True, time.time()
            self.logger.info("%s: routes installed", name)

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change_handler(self, ev) -> None:
        if ev.state != DEAD_DISPATCHER or ev.datapath.id is None:
            return
        name = self.dpid_names.get(ev.datapath.id)
        if name in self.switches:
            self.switches[name].update(connected=False, ready=False)
            self.logger.info("%s disconnected", name)

    @staticmethod
    def _add_flow(dp, priority: int, match, actions: list) -> None:
        ofp, parser = dp.ofproto, dp.ofproto_parser
        inst = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)] if actions else []
        dp.send_msg(parser.OFPFlowMod(datapath=dp, cookie=ROUTE_COOKIE, priority=priority,
                                      command=ofp.OFPFC_ADD, match=match, instructions=inst))
