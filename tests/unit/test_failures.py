"""Link failures measured on the fabric: reroute timings and stalled transfers (pure)."""
from __future__ import annotations

import pytest

from scheduler.emulate.failures import reroute_report, stall_seconds
from scheduler.model.records import RequestRecord
from scripts.cmd_emulate import reroute_lines
from topology.model import FatTree

TREE = FatTree()
LINK = "p1a0<->p1t1"
BOTH = [TREE.link_index[("p1t1", "p1a0")], TREE.link_index[("p1a0", "p1t1")]]


def _virtual(wall: float) -> float:
    return wall - 1000.0  # the replay's clock started at wall 1000


def _events(down_wall: float = 1010.0, up_wall: float = 1020.0) -> list[dict]:
    return [{"link": LINK, "links": BOTH, "down": True, "wall": down_wall},
            {"link": LINK, "links": BOTH, "down": False, "wall": up_wall}]


def _reroutes(down_done: float | None = 1010.2, up_done: float = 1020.1) -> list[dict]:
    return [{"link": LINK, "down": True, "seen_at": 1010.03, "source": "port_status", "switches": ["p0t0"],
             "entries": 14, "confirmed_at": down_done},
            {"link": LINK, "down": False, "seen_at": 1020.02, "source": "port_status", "switches": ["p0t0"],
             "entries": 14, "confirmed_at": up_done}]


def _rec(decode: str, start: float, transfer: float, prefill: str = "p0t0s0g0") -> RequestRecord:
    return RequestRecord("netkv", 1, start, 100, 10, prefill, decode, 3, 0, 0, 1000, 0.0, 0.0, transfer, 0.0,
                         start + transfer, transfer, 5.0, 10.0)


def test_reroute_report_pairs_each_link_change_with_the_controllers_reroute() -> None:
    rep = reroute_report(_events(), _reroutes(), 0.5, _virtual)
    down, up = rep["events"]
    assert down["at_s"] == 10.0 and down["seen_after_s"] == 0.03 and down["rerouted_after_s"] == 0.2
    assert up["rerouted_after_s"] == 0.1 and rep["rerouted_max_s"] == 0.2
    assert rep["within_target"] and rep["target_s"] == 1.0 and rep["unseen"] == 0
    late = reroute_report(_events(), _reroutes(down_done=1011.5), 0.5, _virtual)
    assert not late["within_target"] and late["rerouted_max_s"] == 1.5
    unseen = reroute_report(_events(), _reroutes()[1:], 0.5, _virtual)
    assert unseen["unseen"] == 1 and not unseen["within_target"]
    assert any(line.startswith("WARNING") and "never reported 1" in line
               for line in reroute_lines("netkv", {"reroute": unseen, "failure": {"transfers": 0}}))
    assert not any(line.startswith("WARNING") for line in reroute_lines("netkv", {"reroute": rep, "failure": {}}))


def test_transfers_stand_still_until_the_reroute_or_the_repair() -> None:
    # into decode rack p1t1 from pod 0, GPU g0: ToR p0t0 -> p0a0 -> c0 -> p1a0 -> p1t1 (the failed link)
    via_a0 = _rec("p1t1s0g0", 9.9, 0.5)  # in flight at the failure (10.0), rerouted at 10.2
    other_rack = _rec("p1t0s0g0", 9.9, 0.5)  # never crosses the link
    nic = TREE.link_index[("p1t1", "p1t1s0g0")]
    recs = stall_seconds(TREE, [via_a0, other_rack], _events(), _reroutes(), _virtual)
    assert recs[0].stalled_s == pytest.approx(0.2)
    assert recs[1].stalled_s == 0.0
    # a GPU's own link: no alternative route, it stands still until the repair (20.0)
    nic_events = [{"link": "p1t1<->p1t1s0g0", "links": [nic, TREE.link_index[("p1t1s0g0", "p1t1")]], "down": d,
                   "wall": w} for d, w in ((True, 1010.0), (False, 1020.0))]
    nic_reroutes = [{"link": "p1t1<->p1t1s0g0", "down": d, "seen_at": w + 0.02, "source": "port_status",
                     "switches": [], "entries": 0, "confirmed_at": w + 0.02}
                    for d, w in ((True, 1010.0), (False, 1020.0))]
    stuck = stall_seconds(TREE, [_rec("p1t1s0g0", 12.0, 9.0)], nic_events, nic_reroutes, _virtual)
    assert stuck[0].stalled_s == pytest.approx(8.0)
    assert stall_seconds(TREE, [via_a0], [], [], _virtual) == [via_a0]  # no failure: unchanged
