"""Ryu app: which fabric links are up (one concern: port liveness), announced as an event.

Two sources feed :class:`controller.linkstate.LinkStatus`: OpenFlow port-status messages, when
the switch sends them, and a port-description request to every switch each ``poll_interval_s``
(like the telemetry poll), because a link-down does not always produce a port-status message
(docs/DESIGN.md#link-failures-on-the-fabric has what was measured here). Every change of a
physical link is sent to the other apps as :class:`EventLinksChanged`: the routing app re-routes,
the telemetry app marks the link's capacity 0. After a controller restart the first poll
rediscovers links that are still down.
"""
from __future__ import annotations

import time

from ryu.base import app_manager
from ryu.controller import event, ofp_event
from ryu.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from ryu.lib import hub
from ryu.ofproto import ofproto_v1_3

from controller.linkstate import PORT_DESC_POLL, PORT_STATUS, LinkChange, LinkStatus, port_is_down
from controller.run import ControllerConfig
from topology.model import FatTree


class EventLinksChanged(event.EventBase):
    """A physical link changed state: ``change`` says which and how it was seen; ``down`` is
    every directed link index down now (what routes must avoid)."""

    def __init__(self, change: LinkChange, down: frozenset[int]) -> None:
        super().__init__()
        self.change = change
        self.down = down


class LinkStateApp(app_manager.RyuApp):
    """Tracks port liveness from port-status messages and polled port descriptions."""

    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]
    _EVENTS = [EventLinksChanged]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config = ControllerConfig.load()
        self.status = LinkStatus(FatTree(self.config.topology))
        self.datapaths: dict[int, object] = {}
        self.port_status_messages = 0
        self.monitor_thread = hub.spawn(self._monitor)

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change_handler(self, ev) -> None:
        dp = ev.datapath
        if ev.state == MAIN_DISPATCHER and dp.id is not None:
            self.datapaths[dp.id] = dp
            self._request_desc(dp)
        elif ev.state == DEAD_DISPATCHER:
            self.datapaths.pop(dp.id, None)

    def _monitor(self) -> None:
        while True:
            hub.sleep(self.config.poll_interval_s)
            for dp in list(self.datapaths.values()):
                self._request_desc(dp)

    @staticmethod
    def _request_desc(dp) -> None:
        dp.send_msg(dp.ofproto_parser.OFPPortDescStatsRequest(dp, 0))

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status_handler(self, ev) -> None:
        msg, ofp = ev.msg, ev.msg.datapath.ofproto
        self.port_status_messages += 1
        desc = msg.desc
        down = port_is_down(desc.state, desc.config, msg.reason == ofp.OFPPR_DELETE,
                            ofp.OFPPS_LINK_DOWN, ofp.OFPPC_PORT_DOWN)
        self._observe(msg.datapath.id, desc.port_no, down, PORT_STATUS)

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def _port_desc_stats_reply_handler(self, ev) -> None:
        dp = ev.msg.datapath
        ofp = dp.ofproto
        for desc in ev.msg.body:
            down = port_is_down(desc.state, desc.config, False, ofp.OFPPS_LINK_DOWN, ofp.OFPPC_PORT_DOWN)
            self._observe(dp.id, desc.port_no, down, PORT_DESC_POLL)

    def _observe(self, dpid: int, port_no: int, down: bool, source: str) -> None:
        change = self.status.observe(dpid, port_no, down, time.time(), source)
        if change is not None:
            self.logger.info("link %s %s (seen by %s)", change.name, "down" if change.down else "up", source)
            self.send_event_to_observers(EventLinksChanged(change, self.status.down_links()))
