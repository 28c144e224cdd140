"""An emulated GPU instance behind the HTTP face of an SGLang P/D worker, for smg or ``netkv router``.

Run one per emulated GPU host: ``python -m hosts.http_worker --role prefill|decode --host ADDR ...``.

Compute is the host agent's: a :class:`hosts.compute.ComputeEngine` (the simulator's
``InstanceModel`` on the wall clock, ``--time-scale`` wall seconds per model second). Per request
(the router sent the same body, with ``bootstrap_host``/``bootstrap_port``/``bootstrap_room``, to
both workers):

* **prefill**: the prompt (its tokens counted by :mod:`scheduler.model.prompts`' rule, its cached
  prefix from the worker's block cache of the text's block keys) joins the prefill FIFO; when its
  compute ends (layer by layer with ``timing.kv_streaming = "layer-wise"``), the request's KV bytes
  (the whole prompt's, times ``--byte-scale``) go over real TCP (``hosts.kvstream``) to the decode
  worker that registered the room on this worker's bootstrap port (``hosts.bootstrap``). The HTTP
  answer (JSON, whatever the endpoint) comes when the decode worker acknowledged the last byte, as
  an SGLang prefill server answers when its KV transfer is done.
* **decode**: the worker announces the request to its engine, registers the room with the prefill
  worker's bootstrap server, and holds the first token until the KV bytes arrived on its KV port
  and the engine's batch produced it; then it streams one token per decode step of the batch the
  request is in (the engine's current step time), the last one when the engine says it finished.

On the emulated fabric (``--fabric-map``, :class:`FabricAddresses`) routers reach the worker over
a management interface, while the rendezvous and the KV bytes take the fabric's addresses.

Endpoints: what smg polls and sends in P/D mode (health, server and model info, models, version,
loads, Prometheus metrics with SGLang's and vLLM NIXL's names, ``/generate`` and the OpenAI
completions and chat endpoints with streaming; docs/serve-bench.md lists them), and
``GET /netkv/records``: the per-request records (also appended to ``--records`` as JSON lines).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from hosts.agent import take_idle
from hosts.bootstrap import BootstrapError, BootstrapServer, KvPeer, RoomRegistry, register_room
from hosts.compute import ComputeEngine
from hosts.framing import FramingError
from hosts.kvstream import PATTERN, TransferError, check_schedule, connect, receive_transfer, send_on
from hosts.messages import (
    Error,
    Expect,
    Finished,
    FirstToken,
    Prefill,
    Prefilled,
    ProtocolError,
    Received,
    Report,
    Send,
    Sent,
)
from hosts.tcpflow import accept_loop
from hosts.worker_api import (
    ENDPOINTS,
    SSE_DONE,
    RequestError,
    WorkRequest,
    full_body,
    output_piece,
    parse_request,
    sse,
    stream_chunk,
    usage_chunk,
)
from scheduler.model.cache import PrefixCacheGroup
from scheduler.model.config import ExperimentConfig, build_config, config_from_dict
from scheduler.model.prompts import block_keys
from scheduler.model.timing import TimingModel
from scheduler.model.trace import BLOCK_TOKENS

ROLES = ("prefill", "decode")
WORKER_VERSION = "netkv-http-worker-1"
"""What ``/version`` and ``/server_info`` report."""
DEFAULT_MODEL_NAME = "netkv-emulated"
"""The served model name unless ``--served-model-name`` gives one."""
RENDEZVOUS_TIMEOUT_S = 30.0
"""Seconds a finished prefill waits for its decode worker's bootstrap registration."""
FIRST_TOKEN_TIMEOUT_S = 300.0
"""Seconds a decode request waits for its KV and first token before failing."""
IO_TIMEOUT_S = 120.0
"""Seconds without progress before a KV transfer fails."""
PLACEHOLDER_DST = ("0.0.0.0", 1, 0)
"""The destination a ``Prefill`` command carries: the engine needs one, the send resolves the
room's real decode worker (its registration) when the KV leaves."""
XFER_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Histogram buckets of ``vllm:nixl_xfer_time_seconds``."""
XFER_BYTES_BUCKETS = tuple(float(1 << k) for k in range(16, 36, 2))
"""Histogram buckets of ``vllm:nixl_bytes_transferred`` (64 KiB .. 32 GiB, x4)."""


class WorkerEngine(ComputeEngine):
    """The agents' compute engine, plus read-only views of its instance's load and decode step
    that an HTTP worker needs (the load gauges, the pace of a stream's tokens)."""

    def load(self) -> tuple[int, int]:
        """(running, queued) requests: prefill = prompts computing / waiting in the FIFO; decode =
        the batch / requests waiting for a batch slot or for their KV."""
        with self._cond:
            model = self._model
            if model is None:
                return 0, 0
            if self.role == "decode":
                return model.running, model.waiting + len(self._expected)
            now = self._virtual(time.time())
            running = sum(1 for _, _, start, _ in self._prefills if start <= now)
            return running, len(self._prefills) - running

    def step_wall_s(self) -> float:
        """Wall seconds of the decode batch's current step (0 when this is no decode instance)."""
        with self._cond:
            model = self._model
            if model is None or model.batch is None:
                return 0.0
            return model.batch.step_s * self.time_scale


def prompt_digest(text: str) -> str:
    """A short digest of a prompt, so a client can find its request in the workers' records."""
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class FabricAddresses:
    """Management address -> GPU of every worker of a bench on the emulated fabric, and the fabric
    addresses between two GPUs (``topology.wiring.peer_ip``: NVLink inside a server, the NIC
    otherwise). Read from the JSON file the bench writes: ``{"hosts": {"<mgmt ip>": <gpu>}}``."""

    def __init__(self, cfg: ExperimentConfig, hosts: dict[str, int]) -> None:
        from topology.model import FatTree

        self.tree = FatTree(cfg.topology)
        for ip, gpu in hosts.items():
            if not (isinstance(gpu, int) and 0 <= gpu < self.tree.n_gpus):
                raise ValueError(f"fabric map: host {ip!r} has GPU {gpu!r}, not in 0..{self.tree.n_gpus - 1}")
        self.hosts = dict(hosts)

    @classmethod
    def load(cls, cfg: ExperimentConfig, path: str | Path) -> FabricAddresses:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            hosts = data["hosts"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"fabric map {path}: {exc}") from None
        if not isinstance(hosts, dict):
            raise ValueError(f"fabric map {path}: 'hosts' must be an object of address -> GPU")
        return cls(cfg, hosts)

    def route(self, me: int, bootstrap_host: str) -> tuple[str, str] | None:
        """For a decode worker on GPU ``me`` and a prefill worker known by ``bootstrap_host``: (the
        prefill's fabric address seen from ``me``, ``me``'s fabric address seen from the prefill);
        None when ``bootstrap_host`` is not a worker of the map (then it is used as given)."""
        from topology.wiring import peer_ip

        peer = self.hosts.get(bootstrap_host)
        if peer is None:
            return None
        return peer_ip(self.tree, me, peer), peer_ip(self.tree, peer, me)


class PdWorker:
    """One P/D worker: its engine, bootstrap or KV listener, block cache, records and metrics."""

    def __init__(self, role: str, cfg: ExperimentConfig, *, name: str = "", gpu: int = 0,
                 host: str = "127.0.0.1", bootstrap_port: int = 0, kv_port: int = 0,
                 time_scale: float = 1.0, byte_scale: float = 1.0, model_name: str = DEFAULT_MODEL_NAME,
                 records_path: str | Path | None = None,
                 rendezvous_timeout: float = RENDEZVOUS_TIMEOUT_S, fabric: FabricAddresses | None = None) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if not (time_scale > 0 and byte_scale > 0):
            raise ValueError("time_scale and byte_scale must be > 0")
        self.role, self.cfg, self.name, self.gpu, self.host = role, cfg, name or f"{role}@{host}", gpu, host
        self.time_scale, self.byte_scale, self.model_name = time_scale, byte_scale, model_name
        self.rendezvous_timeout = rendezvous_timeout
        self.fabric = fabric
        self.records_path = Path(records_path) if records_path else None
        self.timing = TimingModel(cfg)
        kv_tokens = self.timing.kv_capacity_tokens
        fraction = cfg.cluster.prefill_cache_fraction if role == "prefill" else cfg.cluster.decode_cache_fraction
        self.cache = PrefixCacheGroup(1, int(kv_tokens * fraction) // BLOCK_TOKENS)
        self.records: list[dict] = []
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._rooms: dict[int, asyncio.Queue[Report]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._pool: dict[tuple[str, int], list[socket.socket]] = {}
        self.engine = WorkerEngine(self._emit, self._send_async)
        self._metrics_init()
        self.registry = RoomRegistry()
        self.bootstrap: BootstrapServer | None = None
        self._kv_sock: socket.socket | None = None
        self.bootstrap_port = self.kv_port = 0
        if role == "prefill":
            self.bootstrap = BootstrapServer(host, bootstrap_port, self.registry)
            self.bootstrap_port = self.bootstrap.port
        else:
            self._kv_sock = socket.create_server((host, kv_port), backlog=512)
            self._kv_sock.settimeout(0.2)
            self.kv_port = int(self._kv_sock.getsockname()[1])
            self._kv_thread = threading.Thread(target=self._accept_kv, name="kv-accept", daemon=True)
            self._kv_thread.start()

    # ------------------------------------------------------------------ metrics
    def _metrics_init(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.metrics = CollectorRegistry()
        running = Gauge("sglang:num_running_reqs", "The number of running requests.", registry=self.metrics)
        queued = Gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.", registry=self.metrics)
        running.set_function(lambda: self.engine.load()[0])
        queued.set_function(lambda: self.engine.load()[1])
        self.m_xfer_time = Histogram("vllm:nixl_xfer_time_seconds", "KV transfer time of one request, seconds "
                                     "(sender: first byte out to the receiver's DONE; receiver: first to last "
                                     "byte in).", registry=self.metrics, buckets=XFER_TIME_BUCKETS)
        self.m_xfer_bytes = Histogram("vllm:nixl_bytes_transferred", "KV bytes of one request's transfer.",
                                      registry=self.metrics, buckets=XFER_BYTES_BUCKETS)
        self.m_failed = Counter("vllm:nixl_num_failed_transfers", "KV transfers that failed.", registry=self.metrics)

    def metrics_text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.metrics)

    # ------------------------------------------------------------------ life cycle
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the serving event loop and start a fresh instance (the model's clock starts)."""
        self._loop = loop
        self.engine.reset(self.cfg.to_dict(), self.role, self.time_scale)

    def close(self) -> None:
        self._stop.set()
        self.engine.close()
        if self.bootstrap is not None:
            self.bootstrap.close()
        self.registry.close()
        if self._kv_sock is not None:  # closed only once its acceptor stopped polling it
            self._kv_thread.join(timeout=2)
            self._kv_sock.close()
        for sock in list(self._open):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    # ------------------------------------------------------------------ events
    def _emit(self, msg: Report) -> None:
        """Any thread: a report of the engine or of a KV stream, delivered to its room's queue."""
        if isinstance(msg, Sent | Received):
            self.m_xfer_time.observe(max(msg.t_end - msg.t_start, 0.0))
            self.m_xfer_bytes.observe(msg.bytes)
        elif isinstance(msg, Error) and msg.role in ("send", "recv"):
            self.m_failed.inc()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(self._deliver, msg)

    def _deliver(self, msg: Report) -> None:
        room = getattr(msg, "transfer_id", None)
        queue = self._rooms.get(room) if isinstance(room, int) else None
        if queue is not None:
            queue.put_nowait(msg)

    def _open_room(self, room: int) -> asyncio.Queue[Report]:
        if room in self._rooms:
            raise RequestError(f"bootstrap_room {room} is already in use on this worker")
        queue: asyncio.Queue[Report] = asyncio.Queue()
        self._rooms[room] = queue
        return queue

    def _record(self, rec: dict) -> None:
        with self._lock:
            self.records.append(rec)
            if self.records_path is not None:
                with open(self.records_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")

    # ------------------------------------------------------------------ KV streams
    def _send_async(self, cmd: Send) -> None:
        threading.Thread(target=self._send, args=(cmd,), daemon=True).start()

    def _send(self, cmd: Send) -> None:
        """Engine's KV stream of room ``cmd.transfer_id``: wait for the room's decode worker, push."""
        room = cmd.transfer_id
        peer = self.registry.wait(room, self.rendezvous_timeout)
        if peer is None:
            self._emit(Error(room, f"no decode worker registered room {room} within {self.rendezvous_timeout} s",
                             role="send", request_id=cmd.request_id, bytes=0))
            return
        key = (peer.host, peer.port)
        try:
            steps = check_schedule(cmd.layer_schedule, cmd.bytes) if cmd.layer_schedule is not None else None
            for attempt in (1, 2):
                sock, t_connect = self._take(key)
                try:
                    res = send_on(sock, peer.host, peer.port, room, cmd.request_id, cmd.bytes, self.gpu, peer.gpu,
                                  io_timeout=IO_TIMEOUT_S, payload=memoryview(PATTERN), t_connect=t_connect,
                                  schedule=steps, stop=self._stop)
                except TransferError as exc:
                    self._drop(sock)
                    if attempt == 1 and t_connect is None and exc.nbytes == 0:
                        continue  # a pooled connection the peer closed meanwhile
                    raise
                with self._lock:
                    self._pool.setdefault(key, []).append(sock)
                self._emit(res)
                return
        except (TransferError, FramingError, OSError) as exc:
            self._emit(Error(room, str(exc), role="send", request_id=cmd.request_id,
                             bytes=getattr(exc, "nbytes", 0), peer=f"{peer.host}:{peer.port}"))

    def _take(self, key: tuple[str, int]) -> tuple[socket.socket, float | None]:
        with self._lock:
            pooled = take_idle(self._pool, key, self._drop)
        if pooled is not None:
            return pooled, None
        t_connect = time.time()
        sock = connect(key[0], key[1])
        self._open.add(sock)
        return sock, t_connect

    def _drop(self, sock: socket.socket) -> None:
        self._open.discard(sock)
        sock.close()

    def _accept_kv(self) -> None:
        assert self._kv_sock is not None
        accept_loop(self._kv_sock, self._stop, self._accepted)

    def _accepted(self, conn: socket.socket) -> None:
        self._open.add(conn)
        threading.Thread(target=self._receive, args=(conn,), daemon=True).start()

    def _receive(self, conn: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                res = receive_transfer(conn, my_gpu=self.gpu, io_timeout=IO_TIMEOUT_S, eof_ok=True)
                if res is None:
                    return
                self._emit(res)  # before the engine hears of it: received < first token
                self.engine.kv_received(res.transfer_id, res.t_end)
        except TransferError as exc:
            if exc.transfer_id is not None:
                self._emit(Error(exc.transfer_id, str(exc), role="recv", request_id=exc.request_id, bytes=exc.nbytes))
        finally:
            self._open.discard(conn)
            conn.close()

    # ------------------------------------------------------------------ requests
    def _cached_tokens(self, req: WorkRequest) -> int:
        """Tokens of the prompt's leading blocks this worker's cache holds; the prompt's blocks are
        then inserted (LRU)."""
        keys = block_keys(req.text)
        with self._lock:
            hit = self.cache.prefix_blocks_of(0, keys)
            self.cache.insert(0, keys)
        return min(hit * BLOCK_TOKENS, req.input_tokens)

    def _base_record(self, req: WorkRequest, rid: int, t_arrival: float) -> dict:
        return {"worker": self.name, "role": self.role, "room": req.room, "request": rid, "endpoint": req.kind,
                "prompt": prompt_digest(req.text), "input_tokens": req.input_tokens,
                "output_tokens": req.output_tokens, "bootstrap": f"{req.bootstrap_host}:{req.bootstrap_port}",
                "t_arrival": t_arrival}

    async def prefill(self, req: WorkRequest) -> tuple[int, dict]:
        """Serve the prefill side; returns (HTTP status, answer) once the KV reached the decode worker."""
        t_arrival = time.time()
        if req.room is None:
            raise RequestError("a prefill worker needs 'bootstrap_room' (send requests through a P/D router)")
        room, rid = req.room, next(self._seq)
        queue = self._open_room(room)
        try:
            cached = self._cached_tokens(req)
            nbytes = max(round(self.timing.kv_bytes(req.input_tokens) * self.byte_scale), 1)
            rec = self._base_record(req, rid, t_arrival) | {"cached_tokens": cached, "bytes": nbytes}
            ip, port, gpu = PLACEHOLDER_DST
            try:
                self.engine.prefill(Prefill(room, rid, req.input_tokens, cached, nbytes, ip, port, gpu))
            except ProtocolError as exc:
                raise RequestError(str(exc)) from None
            status = 200
            while True:
                msg = await queue.get()
                if isinstance(msg, Prefilled):
                    rec |= {"t_prefill_start": msg.t_start, "t_prefill_end": msg.t_end}
                elif isinstance(msg, Sent):
                    rec |= {"t_send_start": msg.t_start, "t_send_end": msg.t_end, "decode_peer": msg.peer}
                    break
                elif isinstance(msg, Error):
                    rec |= {"error": msg.reason}
                    status = 502
                    break
        finally:
            del self._rooms[room]
        self._record(rec)
        return status, {"meta_info": rec}

    async def decode(self, req: WorkRequest) -> tuple[asyncio.Queue[Report], dict]:
        """Start the decode side: announce the request, register the room with its prefill worker.
        Returns the room's event queue and the request's record (completed by :meth:`tokens`)."""
        t_arrival = time.time()
        if req.room is None or req.bootstrap_host is None or req.bootstrap_port is None:
            raise RequestError("a decode worker needs 'bootstrap_room', 'bootstrap_host' and 'bootstrap_port' "
                               "(send requests through a P/D router)")
        room, rid = req.room, next(self._seq)
        queue = self._open_room(room)
        rec = self._base_record(req, rid, t_arrival) | {"cached_tokens": self._cached_tokens(req)}
        try:
            self.engine.expect(Expect(room, rid, req.input_tokens, req.output_tokens))
        except ProtocolError as exc:
            del self._rooms[room]
            raise RequestError(str(exc)) from None
        bootstrap_host, kv_host = req.bootstrap_host, self.host
        route = self.fabric.route(self.gpu, bootstrap_host) if self.fabric is not None else None
        if route is not None:
            bootstrap_host, kv_host = route
        rec["bootstrap_fabric"] = f"{bootstrap_host}:{req.bootstrap_port}"
        try:
            await asyncio.to_thread(register_room, bootstrap_host, req.bootstrap_port, room,
                                    KvPeer(kv_host, self.kv_port, self.gpu))
        except BootstrapError:
            del self._rooms[room]
            raise
        return queue, rec

    async def tokens(self, req: WorkRequest, queue: asyncio.Queue[Report], rec: dict) -> AsyncIterator[int]:
        """Yield token indices 0..n-1 at their times: the first when the engine's first token is
        due, the next ones one decode step apart (the batch's step time when each is due), the last
        when the engine finishes the request; ``TimeoutError`` when the first token never comes."""
        assert req.room is not None
        n = req.output_tokens
        try:
            async with asyncio.timeout(FIRST_TOKEN_TIMEOUT_S):
                while True:
                    msg = await queue.get()
                    if isinstance(msg, Received):
                        rec |= {"t_recv_start": msg.t_start, "t_recv_end": msg.t_end, "prefill_peer": msg.peer,
                                "bytes": msg.bytes}
                    elif isinstance(msg, FirstToken):
                        rec |= {"t_join": msg.t_join, "t_first": msg.t_first}
                        break
                    elif isinstance(msg, Error):
                        raise TransferError(msg.reason)
            rec["t_first_sent"] = time.time()  # handed to the HTTP stream: t_first plus this worker's lateness
            yield 0
            t_due, k = float(rec["t_first"]), 1  # model times: lateness does not accumulate
            finished: Finished | None = None
            while finished is None:
                ev: Report | None = None
                if k < n - 1:  # the next token is due one step of the current batch later
                    t_due += self.engine.step_wall_s()
                    with contextlib.suppress(TimeoutError):
                        ev = await asyncio.wait_for(queue.get(), max(t_due - time.time(), 0.0))
                else:  # the last one comes with the engine's finish
                    ev = await queue.get()
                if isinstance(ev, Finished):
                    finished = ev
                elif ev is None:
                    yield k
                    k += 1
            rec["t_finish"] = finished.t_finish
            for j in range(k, n):  # the rest (the last token) at the finish
                yield j
        finally:
            self._rooms.pop(req.room, None)
            rec["t_done"] = time.time()
            self._record(rec)

    async def stream(self, req: WorkRequest, queue: asyncio.Queue[Report], rec: dict) -> AsyncIterator[str]:
        """The SSE events of a streaming request (an error event when its KV never came)."""
        assert req.room is not None
        rid, text = f"netkv-{req.room}", ""
        try:
            async for k in self.tokens(req, queue, rec):
                text += output_piece(req.room, k)
                yield stream_chunk(req, rid, k, text, k == req.output_tokens - 1, rec.get("cached_tokens", 0))
        except (TimeoutError, TransferError) as exc:
            rec["error"] = str(exc) or "timed out waiting for the first token"
            yield sse({"error": {"message": rec["error"], "type": "kv_transfer_failed"}})
        usage = usage_chunk(req, rid, rec.get("cached_tokens", 0))
        if usage is not None and "error" not in rec:
            yield usage
        yield SSE_DONE

    # ------------------------------------------------------------------ info
    def load_entry(self) -> dict:
        running, queued = self.engine.load()
        return {"dp_rank": 0, "num_running_reqs": running, "num_waiting_reqs": queued,
                "num_total_reqs": running + queued, "num_used_tokens": 0,
                "max_total_num_tokens": self.timing.kv_capacity_tokens, "token_usage": 0.0}

    def server_info(self) -> dict:
        return {"model_path": self.model_name, "served_model_name": self.model_name, "tp_size": 1, "dp_size": 1,
                "pp_size": 1, "disaggregation_mode": self.role, "version": WORKER_VERSION, "is_embedding": False,
                "context_length": self.cfg.model.max_context_tokens,
                "max_total_tokens": self.timing.kv_capacity_tokens,
                "netkv": {"name": self.name, "gpu": self.gpu, "bootstrap_port": self.bootstrap_port,
                          "kv_port": self.kv_port, "time_scale": self.time_scale, "byte_scale": self.byte_scale,
                          "model": self.cfg.model.name, "gpu_preset": self.cfg.gpu.name}}


def make_app(worker: PdWorker) -> FastAPI:
    """The FastAPI app of ``worker`` (started and closed with the app's lifespan)."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            worker.close()

    app = FastAPI(title=f"netkv worker {worker.name}", lifespan=lifespan)

    @app.get("/health")
    @app.get("/health_generate")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/server_info")
    @app.get("/get_server_info")
    async def server_info() -> dict:
        return worker.server_info()

    @app.get("/model_info")
    @app.get("/get_model_info")
    async def model_info() -> dict:
        return {"model_path": worker.model_name, "tokenizer_path": None, "is_generation": True,
                "model_type": worker.cfg.model.name, "architectures": ["NetKVEmulated"]}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": worker.model_name, "object": "model", "created": 0,
                                            "owned_by": "sglang", "root": worker.model_name,
                                            "max_model_len": worker.cfg.model.max_context_tokens}]}

    @app.get("/version")
    async def version() -> dict:
        return {"version": WORKER_VERSION}

    @app.get("/loads")
    @app.get("/v1/loads")
    @app.get("/get_load")
    async def loads() -> dict:
        return {"timestamp": time.time(), "version": WORKER_VERSION, "dp_rank_count": 1,
                "loads": [worker.load_entry()]}

    @app.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(worker.metrics_text(), media_type="text/plain; version=0.0.4")

    @app.get("/netkv/records")
    async def records() -> list:
        return list(worker.records)

    async def serve(kind: str, request: Request) -> Response:
        try:
            req = parse_request(kind, await request.json())
            if worker.role == "prefill":
                status, body = await worker.prefill(req)
                return JSONResponse(body, status_code=status)
            queue, rec = await worker.decode(req)
        except RequestError as exc:
            return JSONResponse({"error": {"message": str(exc), "type": "invalid_request"}}, status_code=400)
        except json.JSONDecodeError as exc:
            return JSONResponse({"error": {"message": f"bad JSON: {exc}", "type": "invalid_request"}},
                                status_code=400)
        except BootstrapError as exc:
            return JSONResponse({"error": {"message": str(exc), "type": "bootstrap_failed"}}, status_code=502)
        if req.stream:
            return StreamingResponse(worker.stream(req, queue, rec), media_type="text/event-stream")
        assert req.room is not None
        text = ""
        try:
            async for k in worker.tokens(req, queue, rec):
                text += output_piece(req.room, k)
        except (TimeoutError, TransferError) as exc:
            return JSONResponse({"error": {"message": str(exc) or "timed out", "type": "kv_transfer_failed"}},
                                status_code=502)
        return JSONResponse(full_body(req, f"netkv-{req.room}", text, rec.get("cached_tokens", 0)))

    for path, kind in ENDPOINTS.items():
        async def endpoint(request: Request, kind: str = kind) -> Response:
            return await serve(kind, request)
        app.add_api_route(path, endpoint, methods=["POST"])
    return app


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m hosts.http_worker", description=__doc__.split("\n")[0])
    ap.add_argument("--role", choices=ROLES, required=True)
    ap.add_argument("--host", default="127.0.0.1", help="address the HTTP, bootstrap and KV ports bind to")
    ap.add_argument("--port", type=int, default=30000, help="HTTP port")
    ap.add_argument("--bootstrap-port", type=int, default=8998, help="prefill: the bootstrap rendezvous port")
    ap.add_argument("--kv-port", type=int, default=9470, help="decode: the KV data port")
    ap.add_argument("--name", default="", help="host name in records (e.g. p0t0s0g0)")
    ap.add_argument("--gpu", type=int, default=0, help="GPU index in KV stream headers")
    ap.add_argument("--model", default="llama-3-8b", help="model preset")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="config override")
    ap.add_argument("--time-scale", type=float, default=1.0, help="wall seconds per model second")
    ap.add_argument("--byte-scale", type=float, default=1.0, help="KV bytes sent per modelled KV byte")
    ap.add_argument("--served-model-name", default=DEFAULT_MODEL_NAME)
    ap.add_argument("--records", help="append per-request records here (JSON lines)")
    ap.add_argument("--config", help="the experiment's config as JSON (ExperimentConfig.to_dict()); replaces "
                                     "--model and --set")
    ap.add_argument("--fabric-map", help="on the emulated fabric: JSON {\"hosts\": {management address: GPU}}; "
                                         "rendezvous and KV bytes then take the fabric's addresses")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    args = parse_args(argv)
    try:
        if args.config:
            cfg = config_from_dict(json.loads(Path(args.config).read_text(encoding="utf-8")))
        else:
            cfg = build_config(args.model, overrides=args.set)
        fabric = FabricAddresses.load(cfg, args.fabric_map) if args.fabric_map else None
    except (OSError, ValueError) as exc:  # ConfigError is a ValueError
        print(f"http_worker: {args.config or '--set'}: {exc}", file=sys.stderr)
        return 2
    worker = PdWorker(args.role, cfg, name=args.name, gpu=args.gpu, host=args.host,
                      bootstrap_port=args.bootstrap_port, kv_port=args.kv_port, time_scale=args.time_scale,
                      byte_scale=args.byte_scale, model_name=args.served_model_name, records_path=args.records,
                      fabric=fabric)
    uvicorn.run(make_app(worker), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
