"""The simulator's telemetry: its fluid links sampled the way the controller samples port
counters (one formula: :mod:`topology.utilisation`), into the snapshots the oracles read."""
from __future__ import annotations

import numpy as np

from scheduler.decision.telemetry import TelemetryHistory, TelemetrySnapshot
from scheduler.sim.network import FlowNetwork
from topology.model import FatTree
from topology.utilisation import utilisation


class SimTelemetry:
    """Telemetry sampler of the simulated fabric: one snapshot per poll interval, from counters."""

    def __init__(self, tree: FatTree, net: FlowNetwork, interval_s: float, keep_s: float) -> None:
        self.tree = tree
        self.net = net
        self.interval = interval_s
        self.history = TelemetryHistory(max_age_s=keep_s)
        self.next_poll = interval_s
        self._prev_bytes = net.link_bytes.copy()
        self.samples: list[tuple[float, np.ndarray]] = []
        self.record_samples = False

    def catch_up(self, t: float) -> None:
        """Take every poll due at or before ``t``; rates are constant since the last network change,
        so counters at a past poll instant are exact."""
        net = self.net
        while self.next_poll <= t:
            tp = self.next_poll
            counters = net.link_bytes + net.link_rate * (tp - net.now)
            delta = counters - self._prev_bytes
            self._prev_bytes = counters
            util = utilisation(delta, self.interval, net.capacity)  # as the controller computes it
            util[-1] = 0.0  # the padding link
            self.history.add(TelemetrySnapshot(tp, util, net.capacity_factor()))
            if self.record_samples:
                self.samples.append((tp, util[:-1].astype(np.float32)))
            self.next_poll += self.interval

    def at(self, time_s: float) -> TelemetrySnapshot | None:
        return self.history.at(time_s)
