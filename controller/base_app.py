"""What every NetKV Ryu app shares: the controller config, the fat-tree it describes, the connected
switches, and (for the apps that poll) a green thread that asks every switch for its state.

:class:`FabricApp` loads :class:`controller.run.ControllerConfig` (from ``$NETKV_CONTROLLER_CONFIG``),
builds the :class:`topology.model.FatTree`, maps datapath ids to switch names and tracks the
datapaths in ``MAIN_DISPATCHER`` from Ryu's state-change events; subclasses react to a switch
joining or leaving through :meth:`FabricApp.switch_joined` / :meth:`FabricApp.switch_left`.
:class:`PollingApp` adds a poll of every tracked switch each ``poll_interval_s``, like Ryu's
``simple_monitor_13``; it resumes by itself when a switch reconnects (e.g. after a controller
restart). Ryu loads only the classes defined in the module it is given, so these bases are
never started as apps of their own.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ryu.base import app_manager
from ryu.controller import ofp_event
from ryu.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from ryu.lib import hub
from ryu.ofproto import ofproto_v1_3

from controller.run import ControllerConfig
from topology.model import FatTree, switch_dpid

if TYPE_CHECKING:  # annotations only: importing it before ryu.base.app_manager is circular
    from ryu.controller.controller import Datapath


class FabricApp(app_manager.RyuApp):
    """A Ryu app of the fat-tree named by the controller config; ``datapaths`` are the switches
    connected now (datapath id -> Ryu datapath)."""

    OFP_VERSIONS: ClassVar[list[int]] = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = ControllerConfig.load()
        self.tree = FatTree(self.config.topology)
        self.dpid_names: dict[int, str] = {switch_dpid(self.tree, sw): sw for sw in self.tree.switch_names()}
        self.datapaths: dict[int, Datapath] = {}

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change_handler(self, ev: Any) -> None:
        dp = ev.datapath
        if ev.state == MAIN_DISPATCHER and dp.id is not None:
            self.datapaths[dp.id] = dp
            self.switch_joined(dp)
        elif ev.state == DEAD_DISPATCHER:
            self.datapaths.pop(dp.id, None)
            if dp.id is not None:
                self.switch_left(dp)

    def switch_joined(self, dp: Datapath) -> None:
        """A switch reached ``MAIN_DISPATCHER`` (it is in ``datapaths`` already); nothing by default."""

    def switch_left(self, dp: Datapath) -> None:
        """A switch's connection died (it is out of ``datapaths`` already); nothing by default."""


class PollingApp(FabricApp):
    """A :class:`FabricApp` that sends :meth:`poll` to every connected switch each
    ``poll_interval_s``; ``polls`` counts the rounds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.polls = 0
        self.monitor_thread = hub.spawn(self._monitor)

    def _monitor(self) -> None:
        while True:
            for dp in list(self.datapaths.values()):
                self.poll(dp)
            self.polls += 1
            hub.sleep(self.config.poll_interval_s)

    def poll(self, dp: Datapath) -> None:
        """Send this app's request to one switch."""
        raise NotImplementedError
