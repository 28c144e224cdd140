"""Flow-level network: max-min fair rates and FlowNetwork byte accounting (scheduler/sim/network.py)."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.sim.network import FlowNetwork, max_min_rates

INF = np.inf


def rates(link_paths: list[list[int]], capacity: list[float], caps: list[float] | None = None) -> np.ndarray:
    """max_min_rates over links 0..L-1 with the padding link L (capacity +inf)."""
    pad = len(capacity)
    width = max(len(p) for p in link_paths) + 1
    paths = np.full((len(link_paths), width), pad, dtype=np.int64)
    for i, p in enumerate(link_paths):
        paths[i, : len(p)] = p
    cap = np.array(list(capacity) + [INF], dtype=float)
    c = np.full(len(link_paths), INF) if caps is None else np.array(caps, dtype=float)
    return max_min_rates(paths, cap, c, pad)


def test_no_flows():
    out = max_min_rates(np.zeros((0, 6), dtype=np.int64), np.array([1.0, INF]), np.zeros(0), 1)
    assert out.shape == (0,)


def test_single_bottleneck_shared_equally():
    r = rates([[0], [0], [0]], [90.0])
    assert r == pytest.approx([30.0, 30.0, 30.0])


def test_bottleneck_is_the_narrowest_link_of_the_path():
    r = rates([[0, 1, 2]], [100.0, 10.0, 50.0])
    assert r == pytest.approx([10.0])


def test_classic_three_flow_two_link_example():
    # f0 crosses A (cap 1) and B (cap 2); f1 only A; f2 only B.
    # A saturates first: f0 = f1 = 0.5; f2 takes what B has left: 1.5.
    r = rates([[0, 1], [0], [1]], [1.0, 2.0])
    assert r == pytest.approx([0.5, 0.5, 1.5])
    # symmetric variant: both links cap 1 -> everyone 0.5
    r = rates([[0, 1], [0], [1]], [1.0, 1.0])
    assert r == pytest.approx([0.5, 0.5, 0.5])


def test_max_min_multi_level():
    # link 0 cap 10: f0, f1, f2; link 1 cap 3: f2, f3
    # link 1 saturates first at 1.5 (f2, f3); link 0 then gives f0, f1 (10 - 1.5) / 2 = 4.25
    r = rates([[0], [0], [0, 1], [1]], [10.0, 3.0])
    assert r == pytest.approx([4.25, 4.25, 1.5, 1.5])
    # every link is either saturated or carries only capped flows
    assert r[0] + r[1] + r[2] == pytest.approx(10.0)


def test_rate_caps():
    r = rates([[0], [0]], [10.0], caps=[2.0, INF])
    assert r == pytest.approx([2.0, 8.0])
    # caps below the fair share: both capped, link not saturated
    r = rates([[0], [0]], [10.0], caps=[1.0, 3.0])
    assert r == pytest.approx([1.0, 3.0])
    # a cap alone makes a flow with an empty (padding-only) path finite
    r = rates([[]], [10.0], caps=[7.0])
    assert r == pytest.approx([7.0])


def test_uncapped_flow_without_finite_link_rejected():
    with pytest.raises(ValueError):
        rates([[]], [10.0])


def test_zero_capacity_link_stalls_its_flows_only():
    r = rates([[0, 1], [1], [2]], [0.0, 10.0, 4.0])
    assert r[0] == pytest.approx(0.0)
    assert r[1] == pytest.approx(10.0)  # the stalled flow leaves its share of link 1
    assert r[2] == pytest.approx(4.0)


def test_disjoint_paths_are_independent():
    alone = rates([[0, 1]], [5.0, 7.0])
    with_others = rates([[0, 1], [2], [2], [3, 2]], [5.0, 7.0, 9.0, 1.0])
    assert alone[0] == pytest.approx(5.0)
    assert with_others[0] == pytest.approx(5.0)
    assert with_others[1:] == pytest.approx([4.0, 4.0, 1.0])


def test_rates_never_exceed_capacity_random():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n_links, n_flows = 6, int(rng.integers(1, 12))
        cap = rng.uniform(1, 100, n_links)
        paths = [list(rng.choice(n_links, size=int(rng.integers(1, 4)), replace=False)) for _ in range(n_flows)]
        caps = np.where(rng.random(n_flows) < 0.3, rng.uniform(1, 50, n_flows), INF)
        r = rates(paths, list(cap), list(caps))
        load = np.zeros(n_links)
        for p, x in zip(paths, r):
            load[p] += x
        assert np.all(load <= cap * (1 + 1e-9))
        assert np.all(r <= caps * (1 + 1e-9))
        # max-min: every flow is capped or crosses a saturated link where it has a maximal rate
        for i, p in enumerate(paths):
            if np.isfinite(caps[i]) and r[i] >= caps[i] * (1 - 1e-9):
                continue
            sat = [link for link in p if load[link] >= cap[link] * (1 - 1e-9)]
            assert sat, f"flow {i} neither capped nor bottlenecked"
            assert any(all(r[i] >= r[j] * (1 - 1e-9) for j, q in enumerate(paths) if link in q) for link in sat)


# ----------------------------------------------------------------------------- FlowNetwork
def make_net() -> FlowNetwork:
    # links 0 (10 B/s), 1 (20 B/s); padding link 2
    return FlowNetwork(np.array([10.0, 20.0, INF]), pad=2)


def path(*links: int) -> np.ndarray:
    p = np.full(4, 2, dtype=np.int64)
    p[: len(links)] = links
    return p


def test_flow_network_byte_accounting():
    net = make_net()
    f1 = net.add(path(0), 100.0)
    assert net.flows[f1].rate == pytest.approx(10.0)
    assert net.next_completion() == (pytest.approx(10.0), f1)
    net.advance(5.0)
    assert net.flows[f1].remaining == pytest.approx(50.0)
    assert net.link_bytes[0] == pytest.approx(50.0)
    f2 = net.add(path(0, 1), 25.0)
    assert net.flows[f1].rate == pytest.approx(5.0) and net.flows[f2].rate == pytest.approx(5.0)
    assert net.link_rate[0] == pytest.approx(10.0) and net.link_rate[1] == pytest.approx(5.0)
    t, fid = net.next_completion()
    assert fid == f2 and t == pytest.approx(10.0)
    net.advance(t)
    assert net.flows[f2].remaining == pytest.approx(0.0, abs=1e-9)
    done = net.remove(f2)
    assert done.flow_id == f2
    assert net.flows[f1].rate == pytest.approx(10.0)
    t, fid = net.next_completion()
    assert fid == f1 and t == pytest.approx(12.5)
    net.advance(t)
    net.remove(f1)
    # port counters integrate the rates: each link carried exactly the bytes that crossed it
    assert net.link_bytes[0] == pytest.approx(125.0)
    assert net.link_bytes[1] == pytest.approx(25.0)
    assert net.link_bytes[2] == 0.0
    assert net.next_completion() is None
    assert np.all(net.link_rate == 0.0)
    net.advance(100.0)  # idle time adds nothing
    assert net.link_bytes[0] == pytest.approx(125.0)


def test_background_flow_has_no_completion_and_steals_bandwidth():
    net = make_net()
    bg = net.add(path(1), INF, cap=15.0, tag="bg")
    assert net.next_completion() is None
    f = net.add(path(1), 50.0)
    # max-min: both raised to 10 (link 1 = 20), the cap of 15 is not reached
    assert net.flows[f].rate == pytest.approx(10.0)
    assert net.next_completion() == (pytest.approx(5.0), f)
    net.advance(5.0)
    net.remove(f)
    assert net.flows[bg].rate == pytest.approx(15.0)
    net.advance(7.0)
    assert net.link_bytes[1] == pytest.approx(5 * 20 + 2 * 15)


def test_capacity_change_and_stall():
    net = make_net()
    f = net.add(path(0), 100.0)
    net.set_capacity([0], 0.0)
    assert net.flows[f].rate == 0.0
    assert net.next_completion() is None
    assert net.capacity_factor()[0] == 0.0 and net.capacity_factor()[1] == 1.0
    assert net.capacity_factor()[2] == 1.0  # padding stays nominal
    net.advance(50.0)
    assert net.flows[f].remaining == pytest.approx(100.0)
    net.set_capacity([0], 0.5)
    assert net.flows[f].rate == pytest.approx(5.0)
    assert net.next_completion() == (pytest.approx(70.0), f)


def test_time_cannot_go_backwards():
    net = make_net()
    net.advance(3.0)
    with pytest.raises(ValueError):
        net.advance(2.0)
