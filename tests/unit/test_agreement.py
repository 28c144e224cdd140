"""The paired transfer agreement: the simulator replaying a run's own decisions."""
from __future__ import annotations

import dataclasses

import pytest

from scheduler.emulate.agreement import FixedDecisions, paired_agreement
from scheduler.model.config import build_config
from scheduler.study.experiment import prepare, run_simulation


@pytest.fixture(scope="module")
def flap():
    exp, _ = prepare(build_config(), None, "decode-flap", "cache-load,netkv", 150, 0, {"period": 6.0}, tune=False)
    _, records = run_simulation(exp, progress=False, log=lambda m: None)
    return exp, records


def test_replaying_a_simulated_run_s_decisions_gives_its_transfer_times_back(flap):
    exp, records = flap
    out = paired_agreement(exp, records)
    assert set(out["by_policy"]) == {"cache-load", "netkv"}
    tiers = out["by_tier"]
    assert tiers and sum(t["transfers"] for t in tiers.values()) > 100
    for t in tiers.values():  # the same decisions on the same backend: every transfer its twin
        assert t["ratio"] == pytest.approx(1.0) and t["median_ratio"] == pytest.approx(1.0)


def test_a_slower_emulated_transfer_shows_in_its_tier_only(flap):
    exp, records = flap
    recs = records["netkv"]
    tier = max({r.tier for r in recs if r.kv_bytes > 0}, key=lambda t: sum(r.tier == t for r in recs))
    slowed = [dataclasses.replace(r, transfer_s=2 * r.transfer_s) if r.tier == tier else r for r in recs]
    out = paired_agreement(exp, {"netkv": slowed})["by_tier"]
    assert out[str(tier)]["median_ratio"] == pytest.approx(2.0)
    assert all(v["median_ratio"] == pytest.approx(1.0) for t, v in out.items() if t != str(tier))


def test_a_decision_naming_no_instance_of_the_placement_is_refused(flap):
    exp, records = flap
    first = records["netkv"][0]
    bad = {first.req_id: (first.prefill, "p9t9s9g9")}
    with pytest.raises(ValueError, match="p9t9s9g9"):
        paired_agreement(exp, {"x": [dataclasses.replace(first, decode="p9t9s9g9")]})
    assert FixedDecisions(bad).decisions == bad
