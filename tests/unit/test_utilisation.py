"""One utilisation formula for both backends: the controller's port counters and the simulator's
link counters give the oracle the same number for the same traffic (topology/utilisation.py)."""
from __future__ import annotations

import numpy as np
import pytest

from controller.telemetry import LinkTelemetry, PortSample
from scheduler.sim.network import FlowNetwork
from scheduler.sim.telemetry import SimTelemetry
from topology.model import FatTree, FatTreeConfig
from topology.utilisation import utilisation

SMALL = FatTreeConfig(pods=2, tors_per_pod=2, servers_per_tor=1, gpus_per_server=2, aggs_per_pod=2, cores=2)
INTERVAL_S = 0.5


def _controller_util(tree: FatTree, link: int, nbytes: float, capacity_Bps: float) -> float:
    """Utilisation the controller reports for ``link`` after ``nbytes`` crossed it in one poll."""
    name = tree.link_name(link)
    tel = LinkTelemetry(tree, {name: capacity_Bps * 8.0}, poll_interval_s=INTERVAL_S)
    (dpid, port), = [k for k, v in tel.port_map.items() if v.tx_link == name]
    tel.update(dpid, port, PortSample(0, 0, 0, 0, 10.0), now=100.0)
    tel.update(dpid, port, PortSample(int(nbytes), 0, 0, 0, 10.0 + INTERVAL_S), now=100.0 + INTERVAL_S)
    return tel.snapshot()["links"][name]["utilisation"]


def _simulator_util(tree: FatTree, link: int, rate_Bps: float, factor: float) -> float:
    """Utilisation the simulator's telemetry reports for ``link`` carrying ``rate_Bps`` for one poll."""
    net = FlowNetwork(tree.capacity, tree.pad)
    if factor != 1.0:
        net.set_capacity([link], factor)
    path = np.array([link])
    net.add(path, np.inf, cap=rate_Bps)
    net.release()
    sim = SimTelemetry(tree, net, INTERVAL_S, keep_s=10.0)
    sim.catch_up(INTERVAL_S)
    return float(sim.at(INTERVAL_S).utilisation[link])


@pytest.mark.parametrize("share", [0.0, 0.25, 0.731, 1.0])
def test_controller_and_simulator_agree_on_the_same_counters(share):
    tree = FatTree(SMALL)
    link = next(i for i in range(tree.n_links) if tree.link_name(i).startswith("p0t0->"))
    cap = float(tree.capacity[link])
    rate = share * cap
    ctrl = _controller_util(tree, link, rate * INTERVAL_S, cap)
    sim = _simulator_util(tree, link, rate, 1.0)
    assert ctrl == pytest.approx(share, rel=1e-9, abs=1e-12)
    assert sim == pytest.approx(ctrl, rel=1e-9, abs=1e-12)


def test_a_down_link_reads_busy_if_anything_crossed_it_and_idle_otherwise():
    assert utilisation(np.array([5.0, 0.0, 3.0]), INTERVAL_S, np.array([0.0, 0.0, 4.0])).tolist() == [1.0, 0.0, 1.0]
    tree = FatTree(SMALL)
    link = next(i for i in range(tree.n_links) if tree.link_name(i).startswith("p0t0->"))
    assert _controller_util(tree, link, 1000.0, 0.0) == 1.0
    assert _controller_util(tree, link, 0.0, 0.0) == 0.0
    assert _simulator_util(tree, link, 0.0, 0.0) == 0.0


def test_utilisation_is_clipped_and_glitches_read_zero():
    out = utilisation(np.array([30.0, -4.0, np.nan]), 1.0, np.array([10.0, 10.0, 10.0]))
    assert out.tolist() == [1.0, 0.0, 0.0]
    assert float(utilisation(2.0, 0.5, 8.0)) == 0.5  # scalars too (the controller, link by link)
