"""The client side of a serving bench: the official ``openai`` client, streaming, replaying a
trace's arrival times open loop against a router (smg or ``netkv router``).

Each trace request becomes a completion of its prompt text (:mod:`scheduler.model.prompts`) asking
for its output length; it is sent at ``t0 + (arrival - first arrival) x time_scale`` whatever the
earlier ones are doing (open loop: one thread per request in flight). Measured at the client:
TTFT = first content chunk - send time, TBT = the gaps between content chunks, and the tokens
received (words, the prompts' rule). A request that fails is counted with its error, never dropped.

The core (:func:`consume`, :func:`due_times`, :func:`summarize`) takes a clock and an iterator of
chunks, so it is tested without a network.
"""
from __future__ import annotations

import csv
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from scheduler.model.prompts import count_tokens, request_text
from scheduler.model.trace import Request

if TYPE_CHECKING:
    import openai

MODEL_NAME = "netkv-emulated"
"""The model name requests carry (the workers' served name)."""
CLIENT_TIMEOUT_S = 600.0
"""Seconds the client waits on one request."""


@dataclass
class Timing:
    """One request as the client saw it (times are ``time.time()`` stamps)."""

    index: int
    prompt_digest: str
    input_tokens: int
    output_tokens: int
    t_due: float
    t_send: float = 0.0
    chunk_times: list[float] = field(default_factory=list)
    text: str = ""
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.t_send if self.chunk_times else None

    @property
    def tbt(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:])]

    @property
    def tokens(self) -> int:
        return count_tokens(self.text)


def due_times(requests: Sequence[Request], t0: float, time_scale: float) -> list[float]:
    """When each request is sent: its arrival after the first one's, times ``time_scale``, from ``t0``."""
    if not time_scale > 0:
        raise ValueError(f"time_scale must be > 0, got {time_scale}")
    first = requests[0].arrival_s if requests else 0.0
    return [t0 + (r.arrival_s - first) * time_scale for r in requests]


def consume(timing: Timing, chunks: Iterable[str], clock: Callable[[], float] = time.time) -> Timing:
    """Record the content chunks of a stream (text pieces; empty ones carry no token) as they come."""
    for piece in chunks:
        if piece:
            timing.chunk_times.append(clock())
            timing.text += piece
    return timing


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def summarize(timings: Sequence[Timing]) -> dict:
    """Counts, TTFT p50/p99 and mean TBT (seconds) of the requests that streamed, and the errors."""
    ok = [t for t in timings if t.error is None and t.chunk_times]
    ttfts = [t.ttft for t in ok if t.ttft is not None]
    gaps = [g for t in ok for g in t.tbt]
    return {"requests": len(timings), "ok": len(ok), "errors": len(timings) - len(ok),
            "ttft_p50_s": _pct(ttfts, 50), "ttft_p99_s": _pct(ttfts, 99),
            "tbt_mean_s": statistics.fmean(gaps) if gaps else None,
            "tokens_short": sum(1 for t in ok if t.tokens < t.output_tokens)}


def _stream(client: openai.OpenAI, prompt: str, max_tokens: int) -> Iterable[str]:
    stream = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=max_tokens, stream=True)
    for c in stream:
        yield c.choices[0].text if c.choices else ""


def replay(base_url: str, requests: Sequence[Request], *, time_scale: float = 1.0,
           clock: Callable[[], float] = time.time) -> list[Timing]:
    """Replay ``requests`` open loop against the router at ``base_url``; one :class:`Timing` each."""
    import openai

    from hosts.http_worker import prompt_digest

    client = openai.OpenAI(base_url=base_url.rstrip("/") + "/v1", api_key="unused", max_retries=0,
                           timeout=CLIENT_TIMEOUT_S)
    t0 = clock()
    texts = [request_text(r) for r in requests]
    timings = [Timing(i, prompt_digest(text), r.input_tokens, r.output_tokens, due)
               for i, (r, text, due) in enumerate(zip(requests, texts, due_times(requests, t0, time_scale)))]

    def run(t: Timing, text: str) -> None:
        t.t_send = clock()
        try:
            consume(t, _stream(client, text, t.output_tokens), clock)
        except openai.OpenAIError as exc:
            t.error = f"{type(exc).__name__}: {exc}"

    threads = []
    for t, text in zip(timings, texts):
        wait = t.t_due - clock()
        if wait > 0:
            time.sleep(wait)
        th = threading.Thread(target=run, args=(t, text), daemon=True)
        th.start()
        threads.append(th)
    for th in threads:
        th.join(CLIENT_TIMEOUT_S)
    return timings


def write_csv(timings: Sequence[Timing], path: str | Path) -> None:
    """One row per request: index, prompt digest, lengths, due/send times, TTFT, mean TBT, tokens, error."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["index", "prompt", "input_tokens", "output_tokens", "t_due", "t_send", "ttft_s",
                    "tbt_mean_s", "tokens", "error"])
        for t in timings:
            w.writerow([t.index, t.prompt_digest, t.input_tokens, t.output_tokens, f"{t.t_due:.6f}",
                        f"{t.t_send:.6f}", "" if t.ttft is None else f"{t.ttft:.6f}",
                        f"{statistics.fmean(t.tbt):.6f}" if t.tbt else "", t.tokens, t.error or ""])
