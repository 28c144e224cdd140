"""Ryu app: which fabric links are up (one concern: port liveness), announced as an event.

Two sources feed :class:`controller.linkstate.LinkStatus`: OpenFlow port-status messages, when
the switch sends them, and a port-description request to every switch each ``poll_interval_s``
(like the telemetry poll), because a link-down does not always produce a port-status message
(docs/DESIGN.md#link-failures-on-the-fabric). Every change of a physical link is sent to the
other apps as :class:`EventLinksChanged`: the routing app re-routes, the telemetry app marks the
link's capacity 0. After a controller restart the first poll rediscovers links that are still down.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

from ryu.controller import event, ofp_event
from ryu.controller.handler import MAIN_DISPATCHER, set_ev_cls

from controller.base_app import PollingApp
from controller.linkstate import PORT_DESC_POLL, PORT_STATUS, LinkChange, LinkStatus, port_is_down

if TYPE_CHECKING:  # annotations only: importing it before ryu.base.app_manager is circular
    from ryu.controller.controller import Datapath


class EventLinksChanged(event.EventBase):
    """A physical link changed state: ``change`` says which and how it was seen; ``down`` is
    every directed link index down now (what routes must avoid)."""

    def __init__(self, change: LinkChange, down: frozenset[int]) -> None:
        super().__init__()
        self.change = change
        self.down = down


class LinkStateApp(PollingApp):
    """Tracks port liveness from port-status messages and polled port descriptions."""

    _EVENTS: ClassVar[list[type]] = [EventLinksChanged]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.status = LinkStatus(self.tree)
        self.port_status_messages = 0

    def switch_joined(self, dp: Datapath) -> None:
        self.poll(dp)  # a (re)connected switch reports its ports at once, not one interval later

    def poll(self, dp: Datapath) -> None:
        dp.send_msg(dp.ofproto_parser.OFPPortDescStatsRequest(dp, 0))

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status_handler(self, ev: Any) -> None:
        msg, ofp = ev.msg, ev.msg.datapath.ofproto
        self.port_status_messages += 1
        desc = msg.desc
        down = port_is_down(desc.state, desc.config, msg.reason == ofp.OFPPR_DELETE,
                            ofp.OFPPS_LINK_DOWN, ofp.OFPPC_PORT_DOWN)
        self._observe(msg.datapath.id, desc.port_no, down, PORT_STATUS)

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def _port_desc_stats_reply_handler(self, ev: Any) -> None:
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
