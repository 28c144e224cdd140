"""Latency and throughput of the oracle service over loopback HTTP (figures printed, not asserted).

:func:`run_service_bench` starts the service (``netkv oracle serve``: uvicorn, one worker,
127.0.0.1, static pricing) in its own process and drives ``POST /v1/cost`` from load-generator
processes of its own (asyncio on raw keep-alive sockets, one pre-encoded HTTP/1.1 request, the
response read as its head and its Content-Length body), so neither shares an interpreter with the
other. Two kinds of load, reported separately because they answer different questions:

- **closed loop**: each of ``clients`` connections sends its next query as soon as it has the
  answer to the last. This finds the service's capacity (queries/s) and the latency at that
  saturation. By Little's law the mean latency is then clients / throughput: 64 closed-loop
  clients at 2,000 queries/s wait 32 ms on average whatever the service does, so a latency target
  of a few ms at 64 clients cannot be met, or judged, in closed loop.
- **open loop**: the ``clients`` connections together offer a fixed total ``rate`` (each client
  rate / clients, evenly spaced with a random phase, or Poisson), as routers do: one query per
  arriving request, whatever the oracle's speed. Latency is measured from the time a query was
  due, not the time it was sent, so a slow answer that delays the client's next query counts
  against the service (no coordinated omission); the generator's own timer slack (a client idle
  when its query fell due but woken late) is not counted. Reports the achieved rate too: below
  the offered rate means the service did not keep up.

Each level also reports the service process's CPU time per query (user + system), a figure that
holds on a machine busy with other work, where the latencies include the time the service waited
for a core.
"""
from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
import numpy as np
import psutil  # type: ignore[import-untyped]

from controller.prometheus_server import free_port
from scheduler.service.app import TOKEN_ENV
from scheduler.service.pricing import load_pricer

START_TIMEOUT_S = 30.0
"""The service must answer /healthz this soon after its start."""
REQUEST_TIMEOUT_S = 5.0
"""A query unanswered this long counts as an error (its connection is then reopened)."""
WARMUP_S = 1.0
"""Closed-loop load before the measured levels (fills the service's caches), not reported."""
DEFAULT_RATE = 2000.0
"""Open-loop total offered rate, queries/s: a busy router's request rate."""


def _start(port: int) -> subprocess.Popen:
    """``netkv oracle serve`` on ``port`` (its own process: no GIL shared with the load generator)."""
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "scripts.netkv", "oracle", "serve", "--port", str(port)],
                            env=env, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).is_success:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"oracle service did not start on port {port} within {START_TIMEOUT_S} s")


@dataclass(frozen=True)
class Load:
    """What one load-generator process does: ``clients`` connections to ``port`` for ``seconds``,
    closed loop (``rate`` None) or open loop at ``rate`` queries/s in total over its clients."""

    port: int
    request: bytes
    clients: int
    seconds: float
    rate: float | None = None
    poisson: bool = False
    seed: int = 0


def request_bytes(port: int, path: str, body: dict) -> bytes:
    """One HTTP/1.1 keep-alive POST of ``body`` as JSON, encoded once and sent as is."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n")
    return head.encode() + payload


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bool:
    """Send ``request``, read its response (head, then Content-Length bytes); True on a 200."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return head[9:12] == b"200"


async def _client(load: Load, index: int, start: float, latencies: list[float]) -> int:
    """One connection's queries until ``start + load.seconds``; appends latencies, returns errors."""
    rng = np.random.default_rng((load.seed, index))
    clock = time.perf_counter
    deadline = start + load.seconds
    interval = load.clients / load.rate if load.rate else 0.0
    due = start + (rng.uniform(0.0, interval) if interval else 0.0)
    done = start  # when the last answer arrived
    errors = 0
    reader, writer = await asyncio.open_connection("127.0.0.1", load.port)
    while True:
        if interval:
            if due >= deadline:
                break
            wait = due - clock()
            if wait > 0:
                await asyncio.sleep(wait)
            # the query was due at `due`; it could not leave before the last answer came in, and
            # waking late from an idle wait is the generator's slack, not the service's
            sent = max(due, done)
            due += rng.exponential(interval) if load.poisson else interval
        else:
            sent = clock()
            if sent >= deadline:
                break
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                ok = await _exchange(reader, writer, load.request)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            ok = False
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", load.port)
        done = clock()
        latencies.append(done - sent)
        errors += not ok
    writer.close()
    return errors


async def _drive(load: Load) -> tuple[list[float], int]:
    latencies: list[float] = []
    start = time.perf_counter() + 0.05  # every connection open before the first query is due
    errors = await asyncio.gather(*(_client(load, i, start, latencies) for i in range(load.clients)))
    return latencies, sum(errors)


def run_load(load: Load) -> tuple[list[float], int]:
    """(latency of every query in s, errors) of ``load``, on uvloop (run in a worker process)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_drive(load))


def _summary(mode: str, clients: int, seconds: float, rate: float | None, latencies: list[float],
             errors: int, cpu_s: float) -> dict:
    ms = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    pct = np.percentile(ms, [50, 90, 99, 99.9])
    return {"mode": mode, "clients": clients, "offered_qps": rate, "queries": len(latencies),
            "qps": len(latencies) / seconds, "p50_ms": float(pct[0]), "p90_ms": float(pct[1]),
            "p99_ms": float(pct[2]), "p999_ms": float(pct[3]), "max_ms": float(np.max(ms)), "errors": errors,
            "server_cpu_us": cpu_s / max(len(latencies), 1) * 1e6}


def _row_text(row: dict) -> str:
    offered = f"{row['offered_qps']:7.0f}" if row["offered_qps"] else "      -"
    return (f"{row['mode']:<6} {row['clients']:>7} {offered} {row['qps']:9.0f} {row['p50_ms']:8.2f} "
            f"{row['p90_ms']:8.2f} {row['p99_ms']:8.2f} {row['p999_ms']:8.2f} {row['max_ms']:8.2f} "
            f"{row['errors']:>6} {row['server_cpu_us']:7.0f}")


def run_service_bench(clients: tuple[int, ...] = (1, 16, 64), seconds: float = 30.0, n_candidates: int = 32,
                      rate: float = DEFAULT_RATE, poisson: bool = False, processes: int = 1,
                      modes: tuple[str, ...] = ("closed", "open")) -> list[dict]:
    """Per mode (``closed``, ``open``) and client count: queries/s, p50/p90/p99/p99.9/max latency
    (ms), errors and the service's CPU time per query (us) of ``POST /v1/cost`` with
    ``n_candidates`` candidates over ``seconds``; the open loop offers ``rate`` queries/s in total
    (evenly spaced per client, or ``poisson``). The clients are spread over ``processes``
    load-generator processes. Printed and returned."""
    if unknown := set(modes) - {"closed", "open"}:
        raise ValueError(f"unknown bench modes {sorted(unknown)} (closed, open)")
    port = free_port()
    proc = _start(port)
    try:
        pricer = load_pricer()
        decode = [pricer.tree.gpu_name(g) for g in pricer.decode]
        cands = [decode[i % len(decode)] for i in range(n_candidates)]
        body = {"prefill": pricer.tree.gpu_name(pricer.prefill[0]), "candidates": cands,
                "bytes": [1 << 28] * n_candidates}
        request = request_bytes(port, "/v1/cost", body)
        server = psutil.Process(proc.pid)
        rows = []
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            pool.map(run_load, [Load(port, request, 4, WARMUP_S)] * processes)
            print(f"POST /v1/cost, {n_candidates} candidates, {seconds:g} s per level, {processes} load process(es)"
                  f"{', Poisson arrivals' if poisson else ''}\n"
                  "mode   clients offered   queries/s   p50 ms   p90 ms   p99 ms p99.9 ms   max ms errors  cpu us",
                  flush=True)
            for mode in modes:
                for n in clients:
                    parts = [n // processes + (i < n % processes) for i in range(min(processes, n))]
                    loads = [Load(port, request, k, seconds, rate * k / n if mode == "open" else None, poisson, seed=i)
                             for i, k in enumerate(parts)]
                    lat: list[float] = []
                    errors = 0
                    cpu = server.cpu_times()
                    for part_lat, part_errors in pool.map(run_load, loads):
                        lat += part_lat
                        errors += part_errors
                    after = server.cpu_times()
                    cpu_s = after.user + after.system - cpu.user - cpu.system
                    row = _summary(mode, n, seconds, rate if mode == "open" else None, lat, errors, cpu_s)
                    rows.append(row)
                    print(_row_text(row), flush=True)
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=10)
