"""The emulated run's telemetry path as planned (no fabric): the CLI's choices checked, the static
fallback scaled to the scrape interval, and the telemetry age a decision priced with."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.decision.telemetry import TelemetrySnapshot
from scheduler.emulate.telemetry_path import (
    AgeRecordingHistory,
    TelemetryPlan,
    age_summary,
    fallback_polls,
)


@pytest.mark.parametrize(("polls", "poll_s", "scrape_s", "want"), [
    (4, 0.5, None, 4),      # the controller's REST: four polls without news is an outage
    (4, 0.5, 0.5, 4),       # a scrape as often as a poll changes nothing
    (4, 0.5, 1.0, 8),
    (4, 0.5, 5.0, 40),      # four 5 s scrapes, not 2 s: else every decision would be priced statically
    (4, 0.5, 15.0, 120),
    (6, 1.0, 0.5, 6),       # never fewer polls than configured
])
def test_fallback_counts_scrapes_missed_not_polls(polls, poll_s, scrape_s, want):
    assert fallback_polls(polls, poll_s, scrape_s) == want


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"source": "snmp"}, "--telemetry must be one of ryu, prometheus"),
    ({"source": "prometheus", "scrape_interval_s": 0.0}, "--scrape-interval must be a finite number > 0"),
    ({"source": "prometheus", "scrape_interval_s": float("nan")}, "--scrape-interval must be a finite"),
    ({"source": "prometheus", "scrape_interval_s": 2.0, "rate_window_s": 3.0}, "at least two scrape intervals"),
    ({"service": "ftp://x"}, "--oracle-service takes no value or a URL"),
])
def test_a_plan_that_cannot_run_is_refused_naming_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TelemetryPlan(**kwargs)


def test_the_plan_describes_what_ran():
    assert TelemetryPlan().describe() == {"source": "ryu", "service": None}
    assert TelemetryPlan("prometheus", 2.0, None, "start").describe() == {
        "source": "prometheus", "scrape_interval_s": 2.0, "rate_window_s": 5.0, "service": "start"}


def test_the_history_records_the_age_each_decision_priced_with():
    hist = AgeRecordingHistory(max_age_s=30.0, staleness_s=1.0)
    for t in (0.0, 0.5, 1.0):
        hist.add(TelemetrySnapshot(t, np.zeros(3), np.ones(3)))
    assert hist.at(2.0).time_s == 1.0 and hist.at(0.7).time_s == 0.5  # read at now - staleness
    assert hist.ages == pytest.approx([2.0, 1.2])  # staleness + (read time - snapshot time)
    assert hist.at(-1.0) is None and len(hist.ages) == 2  # nothing read: nothing recorded
    assert age_summary(hist.ages) == {"reads": 2, "p50": 2.0, "p90": 2.0, "max": 2.0}
    assert age_summary([]) is None
