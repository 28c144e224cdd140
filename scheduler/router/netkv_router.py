"""``netkv router``: a P/D router with smg's client API and worker protocol, choosing the
(prefill, decode) pair itself.

Clients send ``POST /generate``, ``/v1/completions`` or ``/v1/chat/completions`` (streaming or
not), as to smg. Per request the router picks a healthy prefill and a healthy decode worker
(:class:`Selector`), adds ``bootstrap_host`` (the prefill worker's host), ``bootstrap_port`` (its
bootstrap port) and a random ``bootstrap_room`` to the JSON body, sends that body to both workers at
once and returns the decode worker's answer (relaying its server-sent events as they come); a
failed prefill answer is logged and counted, the client sees the decode side's outcome.

What the selection sees (its own bookkeeping, no worker polling on the request path): each
worker's requests in flight through this router, and for each prefill worker the prompts' block
keys (:func:`scheduler.model.prompts.block_keys`) it was sent lately, an LRU mirror of its block
cache. Policies, named as the registry's (``scheduler.policies``) whose rule they apply here:

* ``round-robin``: prefill and decode in turn;
* ``least-loaded``: fewest requests in flight on each side;
* ``cache-load``: prefill with the longest mirrored cached prefix, ties (and no hit) to the
  fewest in flight; decode with the fewest in flight.

The network-aware ``netkv`` policy needs the cost oracle and the workers' places in the topology;
on the emulated fabric that is the decision context of ``scheduler.decision`` (see
docs/serve-bench.md), not this loopback bookkeeping, and is refused here.

Health: every ``health_interval`` s each worker's ``GET /health`` is polled; a worker that fails
``failure_threshold`` checks in a row (or refuses a request) leaves the rotation, and one that
answers again comes back. ``GET /workers`` lists them with their state.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hosts.worker_api import ENDPOINTS, RequestError, parse_request
from scheduler.model.prompts import block_keys

POLICIES = ("round-robin", "least-loaded", "cache-load")
"""The selection rules this router applies (named as the registry's policies)."""
HEALTH_INTERVAL_S = 1.0
"""Seconds between health checks of every worker."""
HEALTH_TIMEOUT_S = 1.0
"""Seconds a health check waits for its answer."""
FAILURE_THRESHOLD = 2
"""Failed health checks in a row that take a worker out of the rotation."""
MIRROR_BLOCKS = 65536
"""Block keys remembered per prefill worker (the LRU mirror of its cache)."""
REQUEST_TIMEOUT_S = 600.0
"""Seconds a worker gets to answer a request (a long decode streams for minutes)."""

log = logging.getLogger("netkv.router")


class SelectionError(RuntimeError):
    """No healthy worker of a role (answered with HTTP 503)."""


@dataclass
class Worker:
    """One worker as the router knows it."""

    url: str
    role: str
    bootstrap_port: int | None = None
    healthy: bool = True
    failures: int = 0
    inflight: int = 0
    sent: int = 0
    blocks: OrderedDict[int, None] = field(default_factory=OrderedDict)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    def cached_blocks(self, keys: list[int]) -> int:
        n = 0
        for k in keys:
            if k not in self.blocks:
                break
            n += 1
        return n

    def remember(self, keys: list[int]) -> None:
        for k in keys:
            self.blocks[k] = None
            self.blocks.move_to_end(k)
        while len(self.blocks) > MIRROR_BLOCKS:
            self.blocks.popitem(last=False)


class Selector:
    """Picks (prefill, decode) among the healthy workers by one of :data:`POLICIES`."""

    def __init__(self, prefill: Sequence[Worker], decode: Sequence[Worker], policy: str) -> None:
        if policy not in POLICIES:
            raise ValueError(f"netkv router policy must be one of {', '.join(POLICIES)}, got {policy!r}"
                             + (" (netkv needs the fabric's decision context)" if policy.startswith("netkv") else ""))
        self.prefill, self.decode, self.policy = list(prefill), list(decode), policy
        self._turn = itertools.count()

    @staticmethod
    def _healthy(workers: list[Worker], role: str) -> list[Worker]:
        up = [w for w in workers if w.healthy]
        if not up:
            raise SelectionError(f"no healthy {role} worker")
        return up

    def choose(self, text: str) -> tuple[Worker, Worker]:
        p_up, d_up = self._healthy(self.prefill, "prefill"), self._healthy(self.decode, "decode")
        turn = next(self._turn)
        keys = block_keys(text) if self.policy == "cache-load" else []
        if self.policy == "round-robin":
            p, d = p_up[turn % len(p_up)], d_up[turn % len(d_up)]
        elif self.policy == "least-loaded":
            p = min(p_up, key=lambda w: (w.inflight, w.sent))
            d = min(d_up, key=lambda w: (w.inflight, w.sent))
        else:
            p = min(p_up, key=lambda w: (-w.cached_blocks(keys), w.inflight, w.sent))
            d = min(d_up, key=lambda w: (w.inflight, w.sent))
        if keys:
            p.remember(keys)
        return p, d


class NetKVRouter:
    """The router's state: its workers, selector, HTTP client and health checker."""

    def __init__(self, prefill: Sequence[tuple[str, int | None]], decode: Sequence[str], policy: str = "cache-load",
                 *, health_interval: float = HEALTH_INTERVAL_S, failure_threshold: int = FAILURE_THRESHOLD) -> None:
        if not prefill or not decode:
            raise ValueError("a P/D router needs at least one prefill and one decode worker")
        self.prefill = [Worker(url.rstrip("/"), "prefill", port) for url, port in prefill]
        self.decode = [Worker(url.rstrip("/"), "decode") for url in decode]
        self.selector = Selector(self.prefill, self.decode, policy)
        self.health_interval, self.failure_threshold = health_interval, failure_threshold
        self.prefill_failures = 0
        self.client: httpx.AsyncClient | None = None
        self._health_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def workers(self) -> list[Worker]:
        return self.prefill + self.decode

    async def start(self) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=5.0), limits=limits)
        await self.check_health()
        self._health_task = asyncio.create_task(self._health_loop())

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self.client is not None:
            await self.client.aclose()

    # ------------------------------------------------------------------ health
    async def _check(self, w: Worker) -> None:
        assert self.client is not None
        try:
            r = await self.client.get(f"{w.url}/health", timeout=HEALTH_TIMEOUT_S)
            ok = r.status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            if not w.healthy:
                log.info("worker %s answers again: back in the rotation", w.url)
            w.healthy, w.failures = True, 0
        else:
            w.failures += 1
            if w.healthy and w.failures >= self.failure_threshold:
                log.warning("worker %s failed %d health checks: out of the rotation", w.url, w.failures)
                w.healthy = False

    async def check_health(self) -> None:
        """One health check of every worker."""
        await asyncio.gather(*(self._check(w) for w in self.workers))

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            await self.check_health()

    # ------------------------------------------------------------------ requests
    async def route(self, path: str, body: dict) -> Response:
        """Serve one client request (see the module doc)."""
        assert self.client is not None
        req = parse_request(ENDPOINTS[path], body)
        p, d = self.selector.choose(req.text)
        body = body | {"bootstrap_host": p.host, "bootstrap_port": p.bootstrap_port,
                       "bootstrap_room": secrets.randbits(63)}
        for w in (p, d):
            w.inflight += 1
            w.sent += 1
        prefill_task = asyncio.create_task(self._prefill(p, path, body))
        self._tasks.add(prefill_task)  # held until done (the loop keeps only weak references)
        prefill_task.add_done_callback(self._tasks.discard)
        try:
            decode_req = self.client.build_request("POST", f"{d.url}{path}", json=body)
            resp = await self.client.send(decode_req, stream=True)
        except httpx.HTTPError as exc:
            d.inflight -= 1
            d.failures += 1
            if d.failures >= self.failure_threshold:
                d.healthy = False
            return JSONResponse({"error": {"message": f"decode worker {d.url}: {exc}", "type": "bad_gateway"}},
                                status_code=502)
        if resp.status_code != 200 or not req.stream:
            try:
                content = await resp.aread()
            finally:
                await resp.aclose()
                d.inflight -= 1
            return Response(content, status_code=resp.status_code,
                            media_type=resp.headers.get("content-type", "application/json"))
        return StreamingResponse(self._relay(resp, d), media_type="text/event-stream")

    async def _relay(self, resp: httpx.Response, d: Worker) -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        finally:
            await resp.aclose()
            d.inflight -= 1

    async def _prefill(self, p: Worker, path: str, body: dict) -> None:
        assert self.client is not None
        try:
            r = await self.client.post(f"{p.url}{path}", json=body)
            if r.status_code != 200:
                self.prefill_failures += 1
                log.warning("prefill %s answered %d: %s", p.url, r.status_code, r.text[:200])
        except httpx.HTTPError as exc:
            self.prefill_failures += 1
            log.warning("prefill %s failed: %s", p.url, exc)
        finally:
            p.inflight -= 1

    def listing(self) -> dict:
        return {"policy": self.selector.policy, "prefill_failures": self.prefill_failures,
                "workers": [{"url": w.url, "worker_type": w.role, "bootstrap_port": w.bootstrap_port,
                             "is_healthy": w.healthy, "inflight": w.inflight, "sent": w.sent}
                            for w in self.workers]}


def make_app(router: NetKVRouter) -> FastAPI:
    """The router's FastAPI app (health checks run with the app's lifespan)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await router.start()
        try:
            yield
        finally:
            await router.close()

    app = FastAPI(title="netkv router", lifespan=lifespan)

    @app.get("/health")
    async def health() -> Response:
        ok = any(w.healthy for w in router.prefill) and any(w.healthy for w in router.decode)
        return Response(status_code=200 if ok else 503)

    @app.get("/workers")
    async def workers() -> dict:
        return router.listing()

    @app.get("/v1/models")
    async def models() -> Response:
        assert router.client is not None
        for w in router.workers:
            if w.healthy:
                with contextlib.suppress(httpx.HTTPError):
                    r = await router.client.get(f"{w.url}/v1/models", timeout=HEALTH_TIMEOUT_S)
                    return Response(r.content, status_code=r.status_code, media_type="application/json")
        return JSONResponse({"object": "list", "data": []})

    for path in ENDPOINTS:
        async def endpoint(request: Request, path: str = path) -> Response:
            try:
                body = await request.json()
                if not isinstance(body, dict):
                    raise RequestError("the request body must be a JSON object")
                return await router.route(path, body)
            except (RequestError, json.JSONDecodeError) as exc:
                return JSONResponse({"error": {"message": str(exc), "type": "invalid_request"}}, status_code=400)
            except SelectionError as exc:
                return JSONResponse({"error": {"message": str(exc), "type": "unavailable"}}, status_code=503)
        app.add_api_route(path, endpoint, methods=["POST"])
    return app
