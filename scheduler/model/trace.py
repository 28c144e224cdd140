"""Requests and Mooncake JSONL traces.

A trace file holds one JSON object per line (Mooncake FAST'25 format)::

    {"timestamp": <ms>, "input_length": <tokens>, "output_length": <tokens>, "hash_ids": [<int>, ...]}

``hash_ids`` has one id per ``BLOCK_TOKENS``-token block of the prompt; an id names the block *and
everything before it*, so two requests share a cached prefix of exactly as many leading blocks as
their lists agree on. :func:`load_trace` checks the whole file before returning, so a run stops
before anything starts; every problem is a :class:`TraceError` naming ``path:line``.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

BLOCK_TOKENS = 512
"""Tokens per hash block: the Mooncake traces hash prompts in 512-token blocks
(len(hash_ids) == ceil(input_length / 512) on every record of both published traces)."""

_FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")


@dataclass(frozen=True, slots=True)
class Request:
    """One inference request: arrival time in seconds from trace start, prompt and output lengths
    in tokens, and the prompt's block hash ids (see module docstring)."""

    req_id: int
    arrival_s: float
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...]


class TraceError(ValueError):
    """A trace file is missing or malformed; the message is ``"<path>:<line>: <reason>"``
    (line 0 = the file as a whole)."""

    def __init__(self, path: str | Path, line: int, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        super().__init__(f"{self.path}:{line}: {reason}")


def n_blocks(input_tokens: int) -> int:
    """Number of hash blocks of a prompt of ``input_tokens`` tokens."""
    return -(-input_tokens // BLOCK_TOKENS)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse_record(obj: object) -> tuple[float, int, int, tuple[int, ...]]:
    """Validate one decoded line; returns (timestamp_ms, input, output, hash_ids) or raises
    ``ValueError`` with the reason (the caller adds path and line)."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    for name in _FIELDS:
        if name not in obj:
            raise ValueError(f"missing field {name!r} (a record needs {', '.join(_FIELDS)})")
    ts = obj["timestamp"]
    if not (_is_int(ts) or isinstance(ts, float)) or not math.isfinite(ts):
        raise ValueError(f"'timestamp' must be a finite number of milliseconds, got {ts!r}")
    if ts < 0:
        raise ValueError(f"'timestamp' must be >= 0, got {ts!r}")
    inp, out = obj["input_length"], obj["output_length"]
    if not _is_int(inp):
        raise ValueError(f"'input_length' must be an integer, got {inp!r}")
    if inp < 0:
        raise ValueError(f"'input_length' must be >= 0, got {inp}")
    if not _is_int(out):
        raise ValueError(f"'output_length' must be an integer, got {out!r}")
    if out < 1:
        raise ValueError(f"'output_length' must be >= 1 (a request produces at least one token), got {out}")
    ids = obj["hash_ids"]
    if not isinstance(ids, list):
        raise ValueError(f"'hash_ids' must be a list of non-negative integers, got {type(ids).__name__}")
    for i, h in enumerate(ids):
        if not _is_int(h) or h < 0:
            raise ValueError(f"'hash_ids'[{i}] must be a non-negative integer, got {h!r}")
    want = n_blocks(inp)
    if len(ids) != want:
        raise ValueError(
            f"'hash_ids' has {len(ids)} ids but input_length {inp} needs ceil({inp}/{BLOCK_TOKENS}) = {want}"
        )
    return float(ts), inp, out, tuple(ids)


def load_trace(path: str | Path, max_requests: int | None = None) -> list[Request]:
    """Read and validate a Mooncake JSONL trace; keep the first ``max_requests`` requests if given.

    The whole file is validated even when ``max_requests`` keeps fewer. Blank lines are skipped
    (line numbers in messages still count them). ``req_id`` is the 0-based index of the request
    among the file's records; ``arrival_s`` is ``timestamp / 1000``.
    """
    if max_requests is not None and (not _is_int(max_requests) or max_requests < 1):
        raise ValueError(f"max_requests must be an integer >= 1 or None, got {max_requests!r}")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise TraceError(path, 0, "no such trace file") from None
    except IsADirectoryError:
        raise TraceError(path, 0, "is a directory, expected a JSONL trace file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TraceError(path, 0, f"cannot read trace file: {e}") from None
    requests: list[Request] = []
    prev_ts, prev_line = -1.0, 0
    for lineno, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise TraceError(path, lineno, f"malformed JSON: {e.msg} (column {e.colno})") from None
        try:
            ts, inp, out, ids = _parse_record(obj)
        except ValueError as e:
            raise TraceError(path, lineno, str(e)) from None
        if ts < prev_ts:
            raise TraceError(
                path, lineno,
                f"timestamps not sorted ascending: {ts:g} ms here is before {prev_ts:g} ms on line {prev_line}",
            )
        prev_ts, prev_line = ts, lineno
        requests.append(Request(len(requests), ts / 1000.0, inp, out, ids))
    if not requests:
        raise TraceError(path, 0, "empty trace (no records)")
    return requests if max_requests is None else requests[:max_requests]


def reusable_block_fraction(requests: list[Request]) -> float:
    """Fraction of all prompt blocks whose hash id appeared in an earlier request (or earlier in
    the same prompt): the block hit rate of an unlimited, shared prefix cache."""
    seen: set[int] = set()
    total = hits = 0
    for r in requests:
        for h in r.hash_ids:
            total += 1
            if h in seen:
                hits += 1
            else:
                seen.add(h)
    return hits / total if total else 0.0


def trace_stats(requests: list[Request]) -> dict[str, float]:
    """Summary statistics of a trace (for the CLI, reports and generator tests).

    ``rate_per_s`` is ``count / duration_s`` (0.0 when all requests arrive at the same instant).
    """
    if not requests:
        raise ValueError("trace_stats needs at least one request")
    inputs = [r.input_tokens for r in requests]
    outputs = [r.output_tokens for r in requests]
    duration = requests[-1].arrival_s - requests[0].arrival_s
    return {
        "count": len(requests),
        "duration_s": duration,
        "rate_per_s": len(requests) / duration if duration > 0 else 0.0,
        "input_mean": statistics.fmean(inputs),
        "input_median": float(statistics.median(inputs)),
        "input_max": max(inputs),
        "output_mean": statistics.fmean(outputs),
        "reusable_block_fraction": reusable_block_fraction(requests),
    }
