"""The emulated staleness study's plan, rows and trend (pure: no fabric)."""
from __future__ import annotations

import pytest

pytest.importorskip("mininet", reason="scheduler.emulate.orchestrator imports the Mininet topology")

from helpers import experiment

from scheduler.emulate import staleness as st


def _pol(ttft: float, agree: dict | None = None, requests: int = 10, weight: float | None = 0.3) -> dict:
    out = {"ttft_mean_s": ttft, "requests": requests, "params": {"load_weight_s": weight}}
    if agree is not None:
        out["agreement"] = agree
    return out


def _agree(tier: float, inst: float, tau: float | None, within: float | None) -> dict:
    return {"decisions": 10, "same_tier_fraction": tier, "same_instance_fraction": inst, "kendall_tau": tau,
            "kendall_tau_within_tier": within}


def test_plan_replays_the_reference_once_and_the_target_at_every_value() -> None:
    exp = experiment("decode-flap", policies="netkv,cache-load")
    plan = st.emulate_plan(exp, "netkv", [0.0, 1.0, 5.0])
    assert [r.label for r in plan] == ["cache-load", "netkv@0s", "netkv@1s", "netkv@5s"]
    assert [r.shadow for r in plan] == [False, False, True, True]
    assert plan[0].cfg is None and [r.cfg.oracle.staleness_s for r in plan[1:]] == [0.0, 1.0, 5.0]
    assert exp.cfg.oracle.staleness_s == 0.0  # the experiment itself is not changed


def test_rows_regret_against_the_same_backends_fresh_run_and_trend() -> None:
    emu = {"cache-load": _pol(1.0), "netkv@0s": _pol(0.8), "netkv@5s": _pol(0.85, _agree(0.9, 0.6, 0.5, 0.4))}
    sim = {0.0: {"netkv": _pol(0.5), "netkv:perfect": _pol(0.48), "cache-load": _pol(0.55)},
           5.0: {"netkv": _pol(0.52, _agree(0.95, 0.7, 0.6, None)), "netkv:perfect": _pol(0.48),
                 "cache-load": _pol(0.55)}}
    rows = st.rows(emu, sim, "netkv", [0.0, 5.0])
    by = {(r["backend"], r["value"]): r for r in rows}
    assert by[("emulate", 0.0)]["regret_vs_fresh_ms"] == 0.0 and by[("emulate", 0.0)]["same_tier_fraction"] == 1.0
    assert by[("emulate", 5.0)]["regret_vs_fresh_ms"] == pytest.approx(50.0)
    assert by[("emulate", 5.0)]["vs_cache_load_pct"] == pytest.approx(-15.0)
    assert by[("emulate", 5.0)]["regret_vs_perfect_ms"] is None  # no perfect oracle on a real fabric
    assert by[("simulate", 5.0)]["regret_vs_perfect_ms"] == pytest.approx(40.0)
    assert by[("simulate", 5.0)]["kendall_tau_within_tier"] is None
    tr = st.trend(rows)
    assert tr == {"emulate": 1, "simulate": 1, "same_sign": True, "noise_ms": None, "verdict": "same sign",
                  "consistent": None}
    emu["netkv@5s"] = _pol(0.7995, _agree(1, 1, 1, 1))  # within 1 ms of fresh: flat, not the simulator's sign
    assert st.trend(st.rows(emu, sim, "netkv", [0.0, 5.0]))["same_sign"] is False
    text = st.table_text("decode-flap", "netkv", rows, tr)
    assert "same sign" in text and text.count("\n") == 6
    assert st.emulated_weights({"netkv@0s": _pol(0.8, weight=0.1), "cache-load": {"params": {"load_weight": 3.0}}},
                               "netkv", [0.0, 5.0]) == {"netkv": 0.1, "cache-load": 3.0}


def test_repeated_replays_are_averaged_and_a_trend_inside_their_noise_is_not_a_sign() -> None:
    exp = experiment("decode-flap", policies="netkv,cache-load")
    plan = st.emulate_plan(exp, "netkv", [0.0, 5.0], repeats=2)
    assert [r.label for r in plan] == ["cache-load", "netkv@0s", "netkv@5s", "netkv@0s#2", "netkv@5s#2"]
    with pytest.raises(ValueError):
        st.emulate_plan(exp, "netkv", [0.0], repeats=0)
    sim = {0.0: {"netkv": _pol(0.5), "netkv:perfect": _pol(0.48), "cache-load": _pol(0.55)},
           5.0: {"netkv": _pol(0.52, _agree(0.95, 0.7, 0.6, None)), "netkv:perfect": _pol(0.48),
                 "cache-load": _pol(0.55)}}
    # regret +10 ms, but the replays of each value spread by 40 ms: within noise
    noisy = {"cache-load": _pol(1.0), "netkv@0s": _pol(0.78), "netkv@0s#2": _pol(0.82),
             "netkv@5s": _pol(0.79, _agree(0.8, 0.5, 0.4, 0.3)), "netkv@5s#2": _pol(0.83, _agree(1.0, 0.7, None, 0.5))}
    rows = st.rows(noisy, sim, "netkv", [0.0, 5.0])
    by = {(r["backend"], r["value"]): r for r in rows}
    stale = by[("emulate", 5.0)]
    assert stale["replays"] == 2 and stale["ttft_mean_s"] == pytest.approx(0.81)
    assert stale["regret_vs_fresh_ms"] == pytest.approx(10.0)
    assert stale["regret_se_ms"] == pytest.approx(1e3 * (0.02 ** 2 * 2 / 2 + 0.02 ** 2 * 2 / 2) ** 0.5)
    assert stale["same_tier_fraction"] == pytest.approx(0.9) and stale["kendall_tau"] == pytest.approx(0.4)
    tr = st.trend(rows)
    assert tr["emulate"] == 0 and tr["simulate"] == 1 and tr["verdict"] == "within noise"
    # the simulator's +20 ms lies within 2 SE (~57 ms) of the fabric's +10 ms: unresolved, not contradicted
    assert tr["consistent"] is True and "consistent" in st.table_text("decode-flap", "netkv", rows, tr)
    far = {**sim, 5.0: {**sim[5.0], "netkv": _pol(0.60, _agree(0.5, 0.3, 0.1, None))}}  # +100 ms simulated
    tr_far = st.trend(st.rows(noisy, far, "netkv", [0.0, 5.0]))
    assert tr_far["verdict"] == "within noise" and tr_far["consistent"] is False
    # the same regret with tight replays: resolved, the simulator's sign
    tight = dict(noisy, **{"netkv@0s": _pol(0.799), "netkv@0s#2": _pol(0.801), "netkv@5s": _pol(0.809),
                           "netkv@5s#2": _pol(0.811)})
    tr = st.trend(st.rows(tight, sim, "netkv", [0.0, 5.0]))
    assert tr["emulate"] == 1 and tr["verdict"] == "same sign" and tr["consistent"] is False  # +10 vs +20 ms, SE 1.4
    assert "fabric noise" in st.table_text("decode-flap", "netkv", st.rows(tight, sim, "netkv", [0.0, 5.0]), tr)


def _congested_decode_gpus(exp, at_s: float) -> frozenset[int]:
    """Destinations of the background flows running at ``at_s`` in ``exp``'s scenario."""
    from topology.model import FatTree

    tree = FatTree(exp.cfg.topology)
    last = exp.requests[-1].arrival_s
    running: dict[str, int] = {}
    for a in exp.scenario.actions(tree, last + 5.0, last):
        if a.time_s > at_s:
            break
        if a.kind == "flow_start":
            running[a.flow_id] = a.dst
        elif a.kind == "flow_stop":
            running.pop(a.flow_id, None)
    return frozenset(running.values())


@pytest.mark.parametrize("name", st.QUICK_SCENARIOS)
def test_quick_scenarios_congestion_moves_inside_the_window_where_it_should(name: str) -> None:
    """--quick studies staleness on scenarios whose congestion moves within its 60-request
    window (else age could cost nothing and the trend's sign says nothing), and on hotspot,
    whose congestion stands still; its largest value is old enough to see another state."""
    exp = experiment(name, policies="netkv,cache-load", params=st.QUICK_SCENARIO_PARAMS.get(name),
                     n=st.QUICK_REQUESTS)
    last = exp.requests[-1].arrival_s
    then, now = (_congested_decode_gpus(exp, t) for t in (last - max(st.QUICK_VALUES), last))
    assert now, f"{name}: nothing congested at the window's end"
    if name == "hotspot":
        assert then == now
    else:
        assert then != now, f"{name}: the stalest view at the window's end is still right"


def test_quick_rolling_without_its_parameters_would_not_move() -> None:
    """Why QUICK_SCENARIO_PARAMS exists: rolling's built-in dwell outlasts the quick window."""
    exp = experiment("rolling", policies="netkv,cache-load", n=st.QUICK_REQUESTS)
    last = exp.requests[-1].arrival_s
    assert _congested_decode_gpus(exp, last - max(st.QUICK_VALUES)) == _congested_decode_gpus(exp, last)
