"""Ryu app: poll OFPPortStats from every switch and keep per-link rates (one concern: telemetry).

Like Ryu's ``simple_monitor_13``: datapaths are tracked from state-change events, a green thread
asks every connected switch for all its port counters each ``poll_interval_s``, and each reply
feeds :class:`controller.telemetry.LinkTelemetry` (pure counter arithmetic, rates from the
switch's own port durations). Capacities are the emulated ones from the controller config, so
``utilisation`` is relative to what the shaped links can carry. Polling resumes by itself when a
switch reconnects (e.g. after a controller restart). A link the link-state app reports down
(:class:`controller.linkstate_app.EventLinksChanged`) shows capacity 0 until it is back up.
"""
from __future__ import annotations

import time

from ryu.base import app_manager
from ryu.controller import ofp_event
from ryu.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from ryu.lib import hub
from ryu.ofproto import ofproto_v1_3

from controller.app import ControllerConfig
from controller.linkstate_app import EventLinksChanged
from controller.telemetry import LinkTelemetry, PortSample, UnknownDatapathError
from topology.model import FatTree


class TelemetryApp(app_manager.RyuApp):
    """Port-stats poller; ``self.telemetry.snapshot()`` is the DESIGN.md telemetry schema."""

    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config = ControllerConfig.load()
        self.tree = FatTree(self.config.topology)
        self.telemetry = LinkTelemetry(self.tree, self.config.link_capacity_bps or None,
                                       poll_interval_s=self.config.poll_interval_s)
        self.datapaths: dict[int, object] = {}
        self.polls = 0
        self.monitor_thread = hub.spawn(self._monitor)

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change_handler(self, ev) -> None:
        dp = ev.datapath
        if ev.state == MAIN_DISPATCHER and dp.id is not None:
            self.datapaths[dp.id] = dp
        elif ev.state == DEAD_DISPATCHER:
            self.datapaths.pop(dp.id, None)

    @set_ev_cls(EventLinksChanged)
    def _links_changed_handler(self, ev: EventLinksChanged) -> None:
        for link in ev.change.links:
            self.telemetry.set_down(self.tree.link_name(link), ev.change.down)

    def _monitor(self) -> None:
        while True:
            for dp in list(self.datapaths.values()):
                parser = dp.ofproto_parser
                dp.send_msg(parser.OFPPortStatsRequest(dp, 0, dp.ofproto.OFPP_ANY))
            self.polls += 1
            hub.sleep(self.config.poll_interval_s)

    @set_ev_cls(ofp_event.EventOFPPortStatsReply, MAIN_DISPATCHER)
    def _port_stats_reply_handler(self, ev) -> None:
        now = time.time()
        dpid = ev.msg.datapath.id
        try:
            for stat in ev.msg.body:
                self.telemetry.update(dpid, stat.port_no, PortSample.from_port_stats(stat), now)
        except UnknownDatapathError as exc:
            self.logger.warning("%s", exc)
