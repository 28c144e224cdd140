"""Tests for scheduler/router/client_bench.py's core: open-loop send times, TTFT at the first
content chunk, TBT from the chunk gaps, and the summary (failures counted, not dropped)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from scheduler.model.trace import Request
from scheduler.router.client_bench import Timing, consume, due_times, summarize, write_csv


def clock_of(times: list[float]):
    it = iter(times)
    return lambda: next(it)


def test_due_times_follow_the_trace_scaled() -> None:
    reqs = [Request(i, a, 10, 2, (i,)) for i, a in enumerate([5.0, 5.5, 7.0])]
    assert due_times(reqs, 100.0, 2.0) == [100.0, 101.0, 104.0]
    with pytest.raises(ValueError, match="time_scale"):
        due_times(reqs, 0.0, 0.0)


def test_ttft_is_the_first_content_chunk_and_tbt_the_gaps() -> None:
    t = Timing(0, "d", 10, 3, t_due=0.0, t_send=1.0)
    # an empty role-only chunk carries no token and does not count as the first
    consume(t, ["", "alpha", " bravo", " charlie"], clock_of([1.25, 1.5, 1.75]))
    assert t.ttft == pytest.approx(0.25)
    assert t.tbt == pytest.approx([0.25, 0.25])
    assert t.tokens == 3


def test_summary_counts_errors_and_short_streams(tmp_path: Path) -> None:
    a = consume(Timing(0, "a", 10, 2, 0.0, t_send=0.0), ["x", " y"], clock_of([0.1, 0.2]))
    b = consume(Timing(1, "b", 10, 3, 0.0, t_send=0.0), ["x"], clock_of([0.3]))
    c = Timing(2, "c", 10, 2, 0.0, t_send=0.0, error="APIConnectionError: refused")
    s = summarize([a, b, c])
    assert (s["requests"], s["ok"], s["errors"], s["tokens_short"]) == (3, 2, 1, 1)
    assert s["ttft_p50_s"] == pytest.approx(0.2) and s["tbt_mean_s"] == pytest.approx(0.1)
    write_csv([a, b, c], tmp_path / "requests.csv")
    rows = list(csv.DictReader((tmp_path / "requests.csv").read_text().splitlines()))
    assert [r["error"] for r in rows] == ["", "", "APIConnectionError: refused"]
    assert float(rows[0]["ttft_s"]) == pytest.approx(0.1)
