"""Ryu app: poll OFPPortStats from every switch and keep per-link rates (one concern: telemetry).

Like Ryu's ``simple_monitor_13``: every connected switch is asked for all its port counters each
``poll_interval_s`` (:class:`controller.base_app.PollingApp`), and each reply feeds
:class:`controller.telemetry.LinkTelemetry` (pure counter arithmetic, rates from the switch's own
port durations). Capacities are the emulated ones from the controller config, so ``utilisation``
is relative to what the shaped links can carry. The same telemetry is exported for Prometheus
(:mod:`controller.exporter`, served at the REST app's ``/metrics``). A link the link-state app reports down
(:class:`controller.linkstate_app.EventLinksChanged`) shows capacity 0 until it is back up.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ryu.controller import ofp_event
from ryu.controller.handler import MAIN_DISPATCHER, set_ev_cls

from controller.base_app import PollingApp
from controller.exporter import export
from controller.linkstate_app import EventLinksChanged
from controller.telemetry import LinkTelemetry, PortSample, UnknownDatapathError

if TYPE_CHECKING:  # annotations only: importing it before ryu.base.app_manager is circular
    from ryu.controller.controller import Datapath


class TelemetryApp(PollingApp):
    """Port-stats poller; ``self.telemetry.snapshot()`` is the DESIGN.md telemetry schema."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.telemetry = LinkTelemetry(self.tree, self.config.link_capacity_bps or None,
                                       poll_interval_s=self.config.poll_interval_s)
        self.registry = export(self.telemetry)  # served by the REST app at /metrics

    def poll(self, dp: Datapath) -> None:
        dp.send_msg(dp.ofproto_parser.OFPPortStatsRequest(dp, 0, dp.ofproto.OFPP_ANY))

    @set_ev_cls(EventLinksChanged)
    def _links_changed_handler(self, ev: EventLinksChanged) -> None:
        for link in ev.change.links:
            self.telemetry.set_down(self.tree.link_name(link), ev.change.down)

    @set_ev_cls(ofp_event.EventOFPPortStatsReply, MAIN_DISPATCHER)
    def _port_stats_reply_handler(self, ev: Any) -> None:
        now = time.time()
        dpid = ev.msg.datapath.id
        try:
            for stat in ev.msg.body:
                self.telemetry.update(dpid, stat.port_no, PortSample.from_port_stats(stat), now)
        except UnknownDatapathError as exc:
            self.logger.warning("%s", exc)
