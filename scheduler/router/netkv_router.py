"""``netkv router``: a P/D router with smg's client API and worker protocol, choosing the
(prefill, decode) pair itself.

Clients send ``POST /generate``, ``/v1/completions`` or ``/v1/chat/completions`` (streaming or
not), as to smg. Per request the router picks a healthy prefill and a healthy decode worker
(:class:`Selector`), adds ``bootstrap_host`` (the prefill worker's host), ``bootstrap_port`` (its
bootstrap port) and a random ``bootstrap_room`` to the JSON body, sends that body to both workers at
once and returns the decode worker's answer (relaying its server-sent events as they come); a
failed prefill answer is logged and counted, the client sees the decode side's outcome.

What the selection sees (its own bookkeeping, no worker polling on the request path): each
worker's requests in flight through this router, and an LRU mirror of each prefill worker's block
keys (:func:`scheduler.model.prompts.block_keys`). The rules restate the registry's
(``scheduler.policies``) on that view: ``round-robin``, ``least-loaded``, ``cache-load`` (prefill
with the least prefill work ahead, in tokens; decode with the fewest in flight), and two that price
the network through the oracle service and so need every worker's host name: ``topology-affinity``
(llm-d's tier score against requests in flight) and ``netkv`` (the service's ``/v1/select``:
transfer price plus ``load_weight_s`` per request in flight). :class:`Selector` states each.

Health: every ``health_interval`` s each worker's ``GET /health`` is polled; a worker that fails
``failure_threshold`` checks in a row (or refuses a connection) leaves the rotation, and one that
answers again comes back; a request whose decode worker refused the connection is sent to another
(up to :data:`DECODE_RETRIES`). ``GET /workers`` lists them with their state.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import sys
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hosts.worker_api import ENDPOINTS, RequestError, parse_request
from scheduler.model.prompts import block_keys, count_tokens
from scheduler.model.trace import BLOCK_TOKENS
from scheduler.router.smg import RouterProcess

POLICIES = ("round-robin", "least-loaded", "cache-load", "topology-affinity", "netkv")
"""The selection rules this router applies (named as the registry's policies)."""
PRICED = ("topology-affinity", "netkv")
"""The rules that call the oracle service (they need ``oracle_url`` and every worker's host name)."""
TIER_SCORES = (1.0, 0.2, 0.05, 0.02)
"""llm-d's topology-affinity curve (host, rack, zone, region) by tier 0..3, as the registry's policy."""
AFFINITY_WEIGHT = 1.0
"""``topology-affinity``: requests in flight one unit of tier score is worth (same host beats one
more request in flight on the decode side, a rack does not)."""
LOAD_WEIGHT_S = 0.05
"""``netkv``: seconds of score per request in flight on a decode worker. A request joins a decode
batch at a cost of a few decode steps (tens of ms), so a request in flight is worth about a
congested transfer's extra time; ``--load-weight`` overrides."""
ORACLE_TIMEOUT_S = 2.0
"""Seconds an oracle call may take before the request fails over to cache-load's decode choice."""
HEALTH_INTERVAL_S = 1.0
"""Seconds between health checks of every worker."""
HEALTH_TIMEOUT_S = 5.0
"""Seconds a health check waits for its answer (smg's default: a worker busy with a large batch
on a loaded host answers late, not never)."""
FAILURE_THRESHOLD = 2
"""Failed health checks in a row that take a worker out of the rotation."""
MIRROR_BLOCKS = 65536
"""Block keys remembered per prefill worker (the LRU mirror of its cache)."""
DECODE_RETRIES = 2
"""Other decode workers a request is sent to when a decode worker refuses its connection (nothing
reached it, so the same body and room are safe to send elsewhere; smg retries likewise)."""
REQUEST_TIMEOUT_S = 600.0
"""Seconds a worker gets to answer a request (a long decode streams for minutes)."""

log = logging.getLogger("netkv.router")


def sse_error(message: str, kind: str = "bad_gateway") -> bytes:
    """An error event in an OpenAI-style stream (the openai client raises it as an APIError)."""
    return f"data: {json.dumps({'error': {'message': message, 'type': kind}})}\n\n".encode()


class SelectionError(RuntimeError):
    """No healthy worker of a role (answered with HTTP 503)."""


@dataclass
class Worker:
    """One worker as the router knows it."""

    url: str
    role: str
    bootstrap_port: int | None = None
    name: str | None = None  # its emulated host (the oracle's name for it), for the priced rules
    queued_tokens: int = 0  # prefill: uncached prompt tokens sent and not answered yet
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
    """Picks (prefill, decode) among the healthy workers by one of :data:`POLICIES`; the priced
    rules ask ``oracle`` (an :class:`scheduler.service.client.OracleClient`).

    * ``round-robin``: prefill and decode in turn; ``least-loaded``: fewest in flight on each side;
    * ``cache-load``: prefill with the least work ahead of this prompt's end in tokens (the
      uncached tokens it was sent and has not answered, plus this prompt's past its mirrored cached
      prefix: min(queue + cached prefill) in token units), ties in turn; decode fewest in flight;
    * ``topology-affinity``: cache-load's prefill; decode by requests in flight minus
      ``affinity_weight`` x llm-d's score of the tier the service reports (host 1, rack 0.2,
      zone 0.05, region 0.02);
    * ``netkv``: cache-load's prefill; decode by the service's price for the prompt's KV tokens
      plus ``load_weight_s`` per request in flight."""

    def __init__(self, prefill: Sequence[Worker], decode: Sequence[Worker], policy: str, oracle: Any = None,
                 *, load_weight_s: float = LOAD_WEIGHT_S, affinity_weight: float = AFFINITY_WEIGHT,
                 model: str | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"netkv router policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if policy in PRICED:
            if oracle is None:
                raise ValueError(f"policy {policy!r} prices the network: give the oracle service's URL")
            unnamed = [w.url for w in (*prefill, *decode) if not w.name]
            if unnamed:
                raise ValueError(f"policy {policy!r} needs every worker's host name (NAME=URL): "
                                 f"{', '.join(unnamed[:3])} has none")
        self.prefill, self.decode, self.policy = list(prefill), list(decode), policy
        self.oracle, self.model = oracle, model
        self.load_weight_s, self.affinity_weight = load_weight_s, affinity_weight
        self.oracle_failures = 0
        self._turn = itertools.count()

    @staticmethod
    def _healthy(workers: list[Worker], role: str) -> list[Worker]:
        up = [w for w in workers if w.healthy]
        if not up:
            raise SelectionError(f"no healthy {role} worker")
        return up

    def choose(self, text: str) -> tuple[Worker, Worker]:
        """The pair for a prompt (see :meth:`choose_work`)."""
        p, d, _ = self.choose_work(text)
        return p, d

    def choose_work(self, text: str) -> tuple[Worker, Worker, int]:
        """The pair for a prompt and the prefill work it adds (uncached tokens, already counted in
        the prefill worker's ``queued_tokens``: the caller takes it off when the prefill answers).
        Blocking: the priced rules make one oracle call."""
        p_up, d_up = self._healthy(self.prefill, "prefill"), self._healthy(self.decode, "decode")
        turn = next(self._turn)
        tokens = count_tokens(text)
        keys = block_keys(text) if self.policy not in ("round-robin", "least-loaded") else []
        if self.policy == "round-robin":
            p, d = p_up[turn % len(p_up)], d_up[turn % len(d_up)]
        elif self.policy == "least-loaded":
            p = min(p_up, key=lambda w: (w.inflight, w.sent))
            d = min(d_up, key=lambda w: (w.inflight, w.sent))
        else:
            ahead = [w.queued_tokens + max(tokens - w.cached_blocks(keys) * BLOCK_TOKENS, 0) for w in p_up]
            ties = [i for i, a in enumerate(ahead) if a == min(ahead)]
            p = p_up[ties[turn % len(ties)]]
            priced = self._priced_decode(p, d_up, tokens) if self.policy in PRICED else None
            d = priced or min(d_up, key=lambda w: (w.inflight, w.sent))
        work = max(tokens - p.cached_blocks(keys) * BLOCK_TOKENS, 0) if keys else tokens
        p.queued_tokens += work
        if keys:
            p.remember(keys)
        return p, d, work

    def _priced_decode(self, p: Worker, d_up: list[Worker], tokens: int) -> Worker | None:
        """The priced rules' decode choice; None (cache-load's choice, counted) when the oracle failed."""
        from scheduler.service.client import OracleRequestError

        names = [str(w.name) for w in d_up]
        try:
            if self.policy == "netkv":
                sel = self.oracle.select(str(p.name), names, [float(w.inflight) for w in d_up],
                                         tokens=[tokens] * len(d_up), model=self.model,
                                         load_weight_s=self.load_weight_s)
                return d_up[sel.index]
            costs = self.oracle.cost(str(p.name), names, tokens=[tokens] * len(d_up), model=self.model)
        except (OracleRequestError, httpx.HTTPError) as exc:
            self.oracle_failures += 1
            log.warning("oracle service failed (%s): cache-load's decode choice instead", exc)
            return None
        scores = [w.inflight - self.affinity_weight * TIER_SCORES[min(t, len(TIER_SCORES) - 1)]
                  for w, t in zip(d_up, costs.tier)]
        return d_up[min(range(len(d_up)), key=lambda i: (scores[i], d_up[i].sent))]


class NetKVRouter:
    """The router's state: its workers, selector, HTTP client and health checker."""

    def __init__(self, prefill: Sequence[tuple[str, int | None]], decode: Sequence[str], policy: str = "cache-load",
                 *, health_interval: float = HEALTH_INTERVAL_S, failure_threshold: int = FAILURE_THRESHOLD,
                 names: dict[str, str] | None = None, oracle_url: str | None = None,
                 load_weight_s: float = LOAD_WEIGHT_S, affinity_weight: float = AFFINITY_WEIGHT,
                 model: str | None = None) -> None:
        if not prefill or not decode:
            raise ValueError("a P/D router needs at least one prefill and one decode worker")
        names = {u.rstrip("/"): n for u, n in (names or {}).items()}
        self.prefill = [Worker(url.rstrip("/"), "prefill", port, name=names.get(url.rstrip("/")))
                        for url, port in prefill]
        self.decode = [Worker(url.rstrip("/"), "decode", name=names.get(url.rstrip("/"))) for url in decode]
        self.oracle = None
        if oracle_url is not None:
            from scheduler.service.client import OracleClient

            self.oracle = OracleClient(oracle_url, timeout_s=ORACLE_TIMEOUT_S)
        self.selector = Selector(self.prefill, self.decode, policy, self.oracle, load_weight_s=load_weight_s,
                                 affinity_weight=affinity_weight, model=model)
        self.health_interval, self.failure_threshold = health_interval, failure_threshold
        self.prefill_failures = 0
        self.decode_retries = 0
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
        if self.oracle is not None:
            self.oracle.close()

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
        if self.selector.policy in PRICED:  # an HTTP call to the oracle service: off the event loop
            p, d, work = await asyncio.to_thread(self.selector.choose_work, req.text)
        else:
            p, d, work = self.selector.choose_work(req.text)
        body = body | {"bootstrap_host": p.host, "bootstrap_port": p.bootstrap_port,
                       "bootstrap_room": secrets.randbits(63)}
        for w in (p, d):
            w.inflight += 1
            w.sent += 1
        prefill_task = asyncio.create_task(self._prefill(p, path, body, work))
        self._tasks.add(prefill_task)  # held until done (the loop keeps only weak references)
        prefill_task.add_done_callback(self._tasks.discard)
        tried = {d.url}
        while True:
            try:
                decode_req = self.client.build_request("POST", f"{d.url}{path}", json=body)
                resp = await self.client.send(decode_req, stream=True)
                break
            except httpx.HTTPError as exc:
                d.inflight -= 1
                d.failures += 1
                refused = isinstance(exc, httpx.ConnectError)
                if refused or d.failures >= self.failure_threshold:
                    d.healthy = False  # a refused connection: out at once, back at its next good check
                others = [w for w in self.decode if w.healthy and w.url not in tried]
                if not (refused and others and len(tried) <= DECODE_RETRIES):
                    return JSONResponse({"error": {"message": f"decode worker {d.url}: {type(exc).__name__}: "
                                                              f"{exc}", "type": "bad_gateway"}}, status_code=502)
                # nothing reached the worker: the same body (room) goes to another decode worker,
                # which registers the room with the prefill worker in its place
                d = min(others, key=lambda w: (w.inflight, w.sent))
                tried.add(d.url)
                d.inflight += 1
                d.sent += 1
                self.decode_retries += 1
        if resp.status_code != 200 or not req.stream:
            try:
                content = await resp.aread()
            finally:
                await resp.aclose()
                d.inflight -= 1
            return Response(content, status_code=resp.status_code,
                            media_type=resp.headers.get("content-type", "application/json"))
        return StreamingResponse(self._relay(resp, d, prefill_task), media_type="text/event-stream")

    async def _relay(self, resp: httpx.Response, d: Worker, prefill: asyncio.Task[str | None]) -> AsyncIterator[bytes]:
        """The decode worker's stream; if the prefill side fails before the first chunk, the decode
        request is dropped (its KV would never come) and the client gets an SSE error event."""
        chunks = resp.aiter_raw().__aiter__()
        started = False
        try:
            while True:
                nxt = asyncio.ensure_future(chunks.__anext__())
                if not started and not prefill.done():
                    await asyncio.wait({nxt, prefill}, return_when=asyncio.FIRST_COMPLETED)
                if not started and not nxt.done() and prefill.done() and prefill.result() is not None:
                    nxt.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, httpx.HTTPError):
                        await nxt
                    yield sse_error(f"prefill side failed: {prefill.result()}")
                    return
                try:
                    chunk = await nxt
                except StopAsyncIteration:
                    return
                started = True
                yield chunk
        finally:
            await resp.aclose()
            d.inflight -= 1

    async def _prefill(self, p: Worker, path: str, body: dict, work: int = 0) -> str | None:
        """Send the prefill side; None when it answered 200, else why it failed (logged, counted)."""
        assert self.client is not None
        why: str | None = None
        try:
            r = await self.client.post(f"{p.url}{path}", json=body)
            if r.status_code != 200:
                why = f"prefill {p.url} answered {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as exc:
            why = f"prefill {p.url} failed: {type(exc).__name__}: {exc}"
        finally:
            p.inflight -= 1
            p.queued_tokens -= work
        if why is not None:
            self.prefill_failures += 1
            log.warning("%s", why)
        return why

    def listing(self) -> dict:
        return {"policy": self.selector.policy, "prefill_failures": self.prefill_failures,
                "decode_retries": self.decode_retries,
                "oracle_failures": self.selector.oracle_failures,
                "workers": [{"url": w.url, "name": w.name, "worker_type": w.role, "bootstrap_port": w.bootstrap_port,
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


class NetKVRouterProcess(RouterProcess):
    """``netkv router`` in a process of its own (as smg runs), so a bench's client and router do
    not share an interpreter: workers named by their host (``names``: URL -> host name)."""

    name = "netkv router"

    def __init__(self, prefill: Sequence[tuple[str, int | None]], decode: Sequence[str], policy: str, *,
                 names: dict[str, str], oracle_url: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 log_path: str | Path = "netkv-router.log", health_interval: float = HEALTH_INTERVAL_S,
                 failure_threshold: int = FAILURE_THRESHOLD) -> None:
        super().__init__(len(prefill) + len(decode), host, port, log_path)
        Selector([Worker(u, "prefill", b, name=names.get(u)) for u, b in prefill],
                 [Worker(u, "decode", name=names.get(u)) for u in decode], policy,
                 oracle=oracle_url)  # refuses what the process would refuse, here
        self.prefill, self.decode, self.policy, self.names = list(prefill), list(decode), policy, dict(names)
        self.oracle_url, self.health_interval, self.failure_threshold = oracle_url, health_interval, failure_threshold

    def _named(self, url: str) -> str:
        return f"{self.names[url]}={url}" if url in self.names else url

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "scripts.netkv", "router", "--policy", self.policy, "--host", self.host,
               "--port", str(self.port), "--health-interval", str(self.health_interval),
               "--failure-threshold", str(self.failure_threshold)]
        for url, bootstrap in self.prefill:
            cmd += ["--prefill", self._named(url) + (f"@{bootstrap}" if bootstrap is not None else "")]
        for url in self.decode:
            cmd += ["--decode", self._named(url)]
        if self.oracle_url:
            cmd += ["--oracle", self.oracle_url]
        return cmd
