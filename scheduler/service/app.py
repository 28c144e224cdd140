"""The network cost oracle as an HTTP service (FastAPI): what a router-side scorer asks before it
picks a decode instance.

Endpoints (OpenAPI at ``/docs`` and ``/openapi.json``):

- ``POST /v1/cost``: seconds, tier and bottleneck link per candidate of one prefill instance;
- ``POST /v1/select``: NetKV's greedy (argmin of cost + load weight x load), optionally reserving
  the chosen transfer;
- ``POST /v1/reservations`` / ``DELETE /v1/reservations/{id}``: hold a transfer so later prices
  see it sharing its links (the ``inflight`` oracle's commitments), until deleted or expired;
- ``GET /v1/topology``, ``GET /healthz`` (ok, or degraded and why), ``GET /metrics`` (Prometheus).

The two hot endpoints, ``/v1/cost`` and ``/v1/select``, are answered by the ASGI layer in front
of FastAPI (:class:`_Guard`): the body is validated by the same pydantic models straight from its
JSON bytes and the answer, already plain JSON types, is written without FastAPI's dependency
solving and response re-validation, which cost more than the pricing itself. Their FastAPI routes
run the same functions and define their OpenAPI contract.

Bad input never gets a 5xx: 422 with the field's location for invalid bodies and unknown
instances, 413 for bodies over ``max_body_bytes``, 415 for non-JSON bodies, 404 for unknown
reservations, 401 without the bearer token when one is configured.
"""
from __future__ import annotations

import math
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ValidationError

from scheduler.service.pricing import InstanceError, Priced, Pricer
from scheduler.service.schemas import (
    CostRequest,
    CostResponse,
    Health,
    Reservation,
    ReservationRequest,
    ReservationResponse,
    SelectRequest,
    SelectResponse,
)
from scheduler.service.sources import TelemetryMonitor, TelemetryState

MAX_BODY_BYTES = 1 << 20
"""Largest request body accepted (1 MiB: a 4096-candidate query is about 150 kB)."""
TOKEN_ENV = "NETKV_ORACLE_TOKEN"
"""Environment variable holding the bearer token every request must carry (unset: no token)."""
RESERVATION_GRACE_S = 1.0
"""A reservation lapses this long after its expected end unless deleted earlier (a late transfer
still counts for a moment)."""
LATENCY_BUCKETS_S = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
FastHandler = Callable[[bytes], tuple[int, Any]]
"""A POST endpoint served by :class:`_Guard` itself: body bytes -> (status, JSON-able answer)."""


class OracleService:
    """The service's state: pricer, telemetry monitor, reservations and metrics."""

    def __init__(self, pricer: Pricer, monitor: TelemetryMonitor | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.pricer = pricer
        self.monitor = monitor or TelemetryMonitor(None)
        self.clock = clock
        self.reservations: dict[str, tuple[int, float]] = {}  # id -> (pricer key, expires at)
        self.registry = CollectorRegistry()
        self.queries = Counter("netkv_oracle_queries", "Requests answered, by endpoint and status",
                               ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("netkv_oracle_request_seconds", "Request handling time, s", ["endpoint"],
                                 buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.age = Gauge("netkv_oracle_telemetry_age_seconds", "Age of the snapshot priced with (-1: none)",
                         registry=self.registry)
        self.held = Gauge("netkv_oracle_reservations_held", "Reservations held", registry=self.registry)
        self.degraded = Counter("netkv_oracle_degraded_answers", "Answers priced statically because "
                                "the configured telemetry was unavailable or stale", registry=self.registry)
        self.degraded_now = Gauge("netkv_oracle_degraded", "1 while telemetry is unavailable or stale",
                                  registry=self.registry)

    def telemetry(self) -> tuple[TelemetryState, float, float | None]:
        """(state, now, age of the snapshot in use), the pricer switched to that snapshot."""
        state = self.monitor.state()
        self.pricer.set_snapshot(state.snapshot)
        now = self.clock()
        age = None if state.snapshot is None else max(0.0, now - state.snapshot.time_s)
        self.age.set(-1.0 if age is None else age)
        self.degraded_now.set(1.0 if state.degraded else 0.0)
        if state.degraded:
            self.degraded.inc()
        return state, now, age

    def expire(self, now: float) -> None:
        for rid in [r for r, (_, exp) in self.reservations.items() if exp <= now]:
            del self.reservations[rid]
        self.held.set(len(self.reservations))


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _error(status: int, detail: Any) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _invalid_detail(errors: list[Any], prefix: tuple[str, ...]) -> list[dict]:
    """pydantic errors as 422 details: loc and msg only (the default echoes the input, which may
    hold NaN, not valid JSON), each loc under ``prefix`` as FastAPI places a body's fields."""
    return [{"loc": [*prefix, *e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in errors]


def _instance_detail(exc: InstanceError) -> list[dict]:
    return [{"loc": ["body", *exc.field], "msg": str(exc), "type": "value_error"}]


def fast_handler(model: type[BaseModel], answer: Callable[[Any], dict]) -> FastHandler:
    """Serve ``answer`` to a body validated as ``model``; 422 with FastAPI's detail format for an
    invalid body or an unknown instance."""

    def handle(body: bytes) -> tuple[int, Any]:
        try:
            req = model.model_validate_json(body)
        except ValidationError as exc:
            return 422, {"detail": _invalid_detail(exc.errors(), ("body",))}
        try:
            return 200, answer(req)
        except InstanceError as exc:
            return 422, {"detail": _instance_detail(exc)}

    return handle


async def _send_json(send: Send, status: int, payload: Any) -> None:
    """``payload`` (plain JSON types, finite numbers) as a compact UTF-8 JSON response."""
    content = orjson.dumps(payload)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(content)).encode()), (b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": content})


class _Guard:
    """Pure ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware): bearer token, JSON
    content type and body size of every request, and per endpoint count and latency metrics.
    POSTs to a path of ``fast`` are answered here (see the module doc), the rest by FastAPI."""

    def __init__(self, app: ASGIApp, service: OracleService, token: str | None, max_body_bytes: int,
                 fast: dict[str, FastHandler] | None = None) -> None:
        self.app = app
        self.service = service
        self.token = f"Bearer {token}".encode() if token else None
        self.max_body = max_body_bytes
        self.fast = fast or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = scope["path"] if not scope["path"].startswith("/v1/reservations/") else "/v1/reservations/{id}"
        status_box = [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
            await send(message)

        try:
            early = self._check(scope)
            if early is not None:
                await early(scope, receive, send_status)
                return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                # read the body here, so the limit holds without a Content-Length (chunked) too;
                # FastAPI would turn an exception raised while it reads into a 400
                chunks: list[bytes] = []
                received, more = 0, True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunks.append(message.get("body", b""))
                    received += len(chunks[-1])
                    if received > self.max_body:
                        await _error(413, f"request body over {self.max_body} bytes")(scope, receive, send_status)
                        return
                    more = message.get("more_body", False)
                handler = self.fast.get(scope["path"]) if scope["method"] == "POST" else None
                if handler is not None:
                    status, payload = handler(b"".join(chunks))
                    await _send_json(send_status, status, payload)
                    return
                whole: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

                async def replay() -> Message:
                    nonlocal whole
                    if whole is None:  # after the body: what the client does next (disconnect)
                        return await receive()
                    message, whole = whole, None
                    return message

                await self.app(scope, replay, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            known = route if route in _ROUTES else "other"
            self.service.queries.labels(known, str(status_box[0])).inc()
            self.service.latency.labels(known).observe(time.perf_counter() - started)

    def _check(self, scope: Scope) -> JSONResponse | None:
        headers = dict(scope["headers"])
        if self.token is not None and not secrets.compare_digest(headers.get(b"authorization", b""), self.token):
            return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        if scope["method"] in ("POST", "PUT", "PATCH"):
            length = headers.get(b"content-length")
            if length is not None:
                try:
                    too_big = int(length) > self.max_body
                except ValueError:
                    return _error(400, "invalid Content-Length header")
                if too_big:
                    return _error(413, f"request body over {self.max_body} bytes")
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if ctype != b"application/json":
                got = ctype.decode(errors="replace") or "none"
                return _error(415, f"Content-Type must be application/json, got {got!r}")
        return None


_ROUTES = ("/v1/cost", "/v1/select", "/v1/reservations", "/v1/reservations/{id}", "/v1/topology",
           "/healthz", "/metrics")


def create_app(service: OracleService, token: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app of ``service``; ``token``: the bearer token required (None: none)."""
    app = FastAPI(title="NetKV network cost oracle", version="1",
                  description="Prices KV-cache transfers between prefill and decode instances from "
                              "live fabric telemetry (docs/oracle-service.md).")
    app.state.service = service
    pricer = service.pricer

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _invalid_detail(list(exc.errors()), ()))

    @app.exception_handler(InstanceError)
    async def _instance(_request: Request, exc: InstanceError) -> JSONResponse:
        return _error(422, _instance_detail(exc))

    def sizes(req: CostRequest | SelectRequest) -> list[int]:
        if req.bytes is not None:
            return req.bytes
        assert req.tokens is not None
        return pricer.kv_bytes(req.tokens, req.model, ("model",))

    def price(req: CostRequest | SelectRequest) -> tuple[Priced, TelemetryState, float, float | None]:
        src = pricer.resolve(req.prefill, "prefill", ("prefill",))
        dsts = pricer.resolve_all(req.candidates, "decode", "candidates")
        nbytes = sizes(req)
        state, now, age = service.telemetry()
        service.expire(now)
        return pricer.price(src, dsts, nbytes, now, now + req.start_s), state, now, age

    def reserve(src: int, dst: int, nbytes: int, now: float, start_s: float, duration_s: float | None,
                seconds: float) -> Reservation:
        length = duration_s if duration_s is not None else (seconds if math.isfinite(seconds) else 0.0)
        start = now + start_s
        key = pricer.reserve(src, dst, nbytes, start, start + max(length, 1e-6))
        rid = uuid.uuid4().hex
        expires = start + length + RESERVATION_GRACE_S
        service.reservations[rid] = (key, expires)
        service.held.set(len(service.reservations))
        return Reservation(id=rid, expires_at=expires)

    def cost_answer(req: CostRequest) -> dict:
        priced, state, _, age = price(req)
        return {"seconds": [s if math.isfinite(s) else None for s in priced.seconds], "tier": priced.tiers,
                "bottleneck": priced.bottleneck, "telemetry_age_s": age, "source": state.source,
                "degraded": state.degraded, "degraded_reason": state.reason}

    def select_answer(req: SelectRequest) -> dict:
        priced, state, now, age = price(req)
        scores = [s + req.load_weight_s * load for s, load in zip(priced.seconds, req.loads)]
        i = min(range(len(scores)), key=scores.__getitem__)
        reservation: dict | None = None
        if req.reserve:
            src = pricer.resolve(req.prefill, "prefill", ("prefill",))
            dst = pricer.resolve(req.candidates[i], "decode", ("candidates", i))
            held = reserve(src, dst, sizes(req)[i], now, req.start_s, req.duration_s, priced.seconds[i])
            reservation = {"id": held.id, "expires_at": held.expires_at}
        return {"choice": req.candidates[i], "index": i, "seconds": _finite(priced.seconds[i]),
                "score": _finite(scores[i]), "tier": priced.tiers[i],
                "bottleneck": priced.bottleneck[i], "reservation": reservation, "telemetry_age_s": age,
                "source": state.source, "degraded": state.degraded, "degraded_reason": state.reason}

    @app.post("/v1/cost", response_model=CostResponse)
    async def cost(req: CostRequest) -> dict:
        """Transfer time, tier and bottleneck link per candidate."""
        return cost_answer(req)

    @app.post("/v1/select", response_model=SelectResponse)
    async def select(req: SelectRequest) -> dict:
        """NetKV's decode choice: argmin over candidates of seconds + load_weight_s x load."""
        return select_answer(req)

    @app.post("/v1/reservations", response_model=ReservationResponse, status_code=201)
    async def create_reservation(req: ReservationRequest) -> dict:
        """Hold a transfer: later prices see it sharing its links until it ends or is deleted."""
        src = pricer.resolve(req.prefill, "prefill", ("prefill",))
        dst = pricer.resolve(req.decode, "decode", ("decode",))
        if req.bytes is not None:
            nbytes = req.bytes
        else:
            assert req.tokens is not None
            nbytes = pricer.kv_bytes([req.tokens], req.model, ("model",))[0]
        _, now, _ = service.telemetry()
        service.expire(now)
        seconds = pricer.price(src, [dst], [nbytes], now, now + req.start_s).seconds[0]
        res = reserve(src, dst, nbytes, now, req.start_s, req.duration_s, seconds)
        return {"id": res.id, "expires_at": res.expires_at, "seconds": _finite(seconds)}

    @app.delete("/v1/reservations/{rid}", status_code=204)
    async def delete_reservation(rid: str) -> Response:
        """End a reservation (its transfer finished or was abandoned)."""
        now = service.clock()
        service.expire(now)
        held = service.reservations.pop(rid, None)
        if held is None:
            raise HTTPException(404, f"no reservation {rid!r} (unknown, deleted or expired)")
        pricer.release(held[0], now)
        service.held.set(len(service.reservations))
        return Response(status_code=204)

    @app.get("/v1/topology")
    async def topology() -> dict:
        """Instances by host name and worker address, tiers, links and capacities."""
        return pricer.topology()

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict:
        """ok, or degraded (telemetry configured but unavailable or stale) and why."""
        state, now, age = service.telemetry()
        service.expire(now)
        return {"status": "degraded" if state.degraded else "ok", "source": state.source, "reason": state.reason,
                "telemetry_age_s": age, "reservations": len(service.reservations)}

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics of the service itself."""
        service.telemetry()
        service.expire(service.clock())
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    fast = {"/v1/cost": fast_handler(CostRequest, cost_answer),
            "/v1/select": fast_handler(SelectRequest, select_answer)}
    app.add_middleware(_Guard, service=service, token=token, max_body_bytes=max_body_bytes, fast=fast)
    return app
