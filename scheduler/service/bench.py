"""Latency and throughput of the oracle service over loopback HTTP (figures printed, not asserted).

:func:`run_service_bench` starts the service (uvicorn, one worker, 127.0.0.1, static pricing),
then for each client count drives ``POST /v1/cost`` with that many concurrent keep-alive clients
(asyncio + httpx in this process) for ``seconds`` and reports p50/p99 latency, queries/s and
errors. The load generator shares the machine's cores with the server, so the figures are a
lower bound on what a dedicated server sustains.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import httpx
import numpy as np

from controller.prometheus_server import free_port
from scheduler.service.app import TOKEN_ENV
from scheduler.service.pricing import load_pricer

START_TIMEOUT_S = 30.0
"""The service must answer /healthz this soon after its start."""


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


async def _drive(url: str, body: dict, clients: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=5.0) as http:

        async def one() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                try:
                    resp = await http.post("/v1/cost", json=body)
                    ok = resp.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t)
                errors += not ok

        await asyncio.gather(*(one() for _ in range(clients)))
    return latencies, errors


def run_service_bench(clients: tuple[int, ...] = (1, 16, 64), seconds: float = 30.0,
                      n_candidates: int = 32) -> list[dict]:
    """Per client count: p50/p99 latency (ms), queries/s and errors of /v1/cost with
    ``n_candidates`` candidates; printed and returned."""
    port = free_port()
    proc = _start(port)
    try:
        pricer = load_pricer()
        decode = [pricer.tree.gpu_name(g) for g in pricer.decode]
        cands = [decode[i % len(decode)] for i in range(n_candidates)]
        body = {"prefill": pricer.tree.gpu_name(pricer.prefill[0]), "candidates": cands,
                "bytes": [1 << 28] * n_candidates}
        rows = []
        for n in clients:
            lat, errors = asyncio.run(_drive(f"http://127.0.0.1:{port}", body, n, seconds))
            ms = np.array(lat) * 1e3
            row = {"clients": n, "queries": len(lat), "qps": len(lat) / seconds,
                   "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "errors": errors}
            rows.append(row)
            print(f"clients {n:>3}: {row['qps']:8.0f} queries/s  p50 {row['p50_ms']:6.2f} ms  "
                  f"p99 {row['p99_ms']:6.2f} ms  errors {errors}", flush=True)
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=10)
