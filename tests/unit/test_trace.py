"""Tests for scheduler/model/trace.py: Mooncake JSONL loading, validation messages, statistics."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import CONVERSATION_TRACE, needs_mooncake

from scheduler.model.trace import BLOCK_TOKENS, Request, TraceError, load_trace, trace_stats


def rec(ts: float = 0, inp: int = 1000, out: int = 10, ids: list | None = None) -> dict:
    return {"timestamp": ts, "input_length": inp, "output_length": out,
            "hash_ids": ids if ids is not None else list(range(-(-inp // BLOCK_TOKENS)))}


def write(tmp_path: Path, lines: list) -> Path:
    p = tmp_path / "t.jsonl"
    p.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return p


def test_load_valid_trace_fields(tmp_path: Path) -> None:
    p = write(tmp_path, [rec(0, 512, 5, [0]), rec(1500, 513, 7, [0, 9])])
    reqs = load_trace(p)
    assert reqs == [Request(0, 0.0, 512, 5, (0,)), Request(1, 1.5, 513, 7, (0, 9))]


def test_blank_lines_skipped_and_counted(tmp_path: Path) -> None:
    p = write(tmp_path, [rec(0), "", "   ", rec(5, inp=-1)])
    with pytest.raises(TraceError) as e:
        load_trace(p)
    assert e.value.line == 4 and e.value.path == str(p)
    assert str(e.value).startswith(f"{p}:4: ")
    assert [r.req_id for r in load_trace(write(tmp_path, [rec(0), "", rec(1)]))] == [0, 1]


@pytest.mark.parametrize(
    "line, reason",
    [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"timestamp": 0, "input_length": 1, "output_length": 1}), "missing field 'hash_ids'"),
        (json.dumps(rec(ts=True)), "'timestamp' must be a finite number"),
        (json.dumps(rec(ts="0")), "'timestamp' must be a finite number"),
        (json.dumps(rec(ts=-1)), "'timestamp' must be >= 0"),
        (json.dumps(rec(inp=-5, ids=[])), "'input_length' must be >= 0"),
        (json.dumps(rec(inp=10.5, ids=[1])), "'input_length' must be an integer"),
        (json.dumps(rec(out=True)), "'output_length' must be an integer"),
        (json.dumps(rec(out=0)), "'output_length' must be >= 1"),
        (json.dumps({**rec(), "hash_ids": "0,1"}), "'hash_ids' must be a list"),
        (json.dumps(rec(inp=600, ids=[0, -1])), "'hash_ids'[1] must be a non-negative integer"),
        (json.dumps(rec(inp=600, ids=[0, False])), "'hash_ids'[1] must be a non-negative integer"),
        (json.dumps(rec(inp=1025, ids=[0, 1])), "needs ceil(1025/512) = 3"),
    ],
)
def test_rejections_name_line_and_reason(tmp_path: Path, line: str, reason: str) -> None:
    p = write(tmp_path, [rec(0), line])
    with pytest.raises(TraceError) as e:
        load_trace(p)
    assert e.value.line == 2
    assert reason in e.value.reason, e.value.reason


def test_unsorted_timestamps_name_both_lines(tmp_path: Path) -> None:
    p = write(tmp_path, [rec(0), rec(200), "", rec(100)])
    with pytest.raises(TraceError) as e:
        load_trace(p)
    assert e.value.line == 4 and "line 2" in e.value.reason and "not sorted" in e.value.reason


def test_whole_file_validated_even_with_max_requests(tmp_path: Path) -> None:
    p = write(tmp_path, [rec(0), rec(1), rec(2, out=0)])
    with pytest.raises(TraceError) as e:
        load_trace(p, max_requests=1)
    assert e.value.line == 3


def test_max_requests_keeps_first(tmp_path: Path) -> None:
    p = write(tmp_path, [rec(i) for i in range(5)])
    assert [r.req_id for r in load_trace(p, max_requests=2)] == [0, 1]
    assert len(load_trace(p, max_requests=99)) == 5
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="max_requests"):
            load_trace(p, max_requests=bad)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(TraceError) as e:
        load_trace(tmp_path / "nope.jsonl")
    assert e.value.line == 0 and "no such trace file" in str(e.value)
    with pytest.raises(TraceError, match="empty trace"):
        load_trace(write(tmp_path, ["", ""]))


def test_trace_stats_small(tmp_path: Path) -> None:
    reqs = [Request(0, 0.0, 1024, 10, (0, 1)), Request(1, 2.0, 1536, 30, (0, 1, 2)),
            Request(2, 4.0, 512, 20, (7,))]
    s = trace_stats(reqs)
    assert s["count"] == 3 and s["duration_s"] == 4.0 and s["rate_per_s"] == 0.75
    assert s["input_mean"] == 1024 and s["input_median"] == 1024 and s["input_max"] == 1536
    assert s["output_mean"] == 20
    assert s["reusable_block_fraction"] == pytest.approx(2 / 6)
    with pytest.raises(ValueError):
        trace_stats([])


@needs_mooncake()
def test_real_conversation_trace_loads_fast_and_matches_readme() -> None:
    t0 = time.perf_counter()
    reqs = load_trace(CONVERSATION_TRACE)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"loading took {elapsed:.2f} s"
    s = trace_stats(reqs)
    assert s["count"] == 12031
    assert s["duration_s"] == pytest.approx(3536.999)
    assert s["input_median"] == 6909 and s["input_max"] == 126195
    assert s["input_mean"] == pytest.approx(12035, abs=1)
    assert s["output_mean"] == pytest.approx(343, abs=1)
    assert s["reusable_block_fraction"] == pytest.approx(0.37, abs=0.01)
