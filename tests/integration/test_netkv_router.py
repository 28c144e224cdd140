"""The NetKV router on 127.0.0.1 in front of loopback P/D workers: routing with the openai client
(both sides meet on the router's bootstrap room) and its health checks (a worker that stops
answering leaves the rotation, and comes back when it answers again)."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from pd_loopback import Workers, stream_completion

from hosts.asgi_thread import ServerThread
from hosts.http_worker import PdWorker, make_app
from scheduler.model.config import build_config
from scheduler.model.prompts import count_tokens, prompt_text
from scheduler.router import netkv_router
from scheduler.router.netkv_router import NetKVRouter, Selector, Worker

WAIT_S = 20.0


def wait_until(cond: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


@pytest.fixture
def workers() -> Iterator[Workers]:
    w = Workers(2, 2)
    try:
        yield w
    finally:
        w.close()


def test_routes_through_the_pd_protocol_with_cache_affinity(workers: Workers) -> None:
    router = NetKVRouter(workers.prefill_urls, workers.decode_urls, "cache-load", health_interval=0.2)
    with ServerThread(netkv_router.make_app(router)) as srv:
        prompts = [prompt_text((1, 2), 1024), prompt_text((1, 2, 3), 1300), prompt_text((9,), 200)]
        got = [stream_completion(srv.url, p, 5) for p in prompts]
        got.append(stream_completion(srv.url, prompt_text((1, 2, 5), 1500), 2, chat=True))
    prefill = {r["prompt"]: r for r in workers.records("prefill")}
    decode = {r["prompt"]: r for r in workers.records("decode")}
    for s, n in zip(got, [5, 5, 5, 2]):
        assert count_tokens(s.text) == n
        p, d = prefill[s.digest], decode[s.digest]
        assert p["room"] == d["room"] and "error" not in p and "error" not in d
        assert s.chunk_times[0] >= d["t_first"]
    # the prompts sharing blocks (1, 2) went to the prefill worker that had them
    shared = {prefill[g.digest]["worker"] for g in (got[0], got[1], got[3])}
    assert len(shared) == 1
    assert prefill[got[1].digest]["cached_tokens"] == 1024


def test_a_worker_that_stops_answering_leaves_and_comes_back(workers: Workers) -> None:
    router = NetKVRouter(workers.prefill_urls, workers.decode_urls, "round-robin", health_interval=0.1)
    with ServerThread(netkv_router.make_app(router)) as srv:
        def state() -> dict[str, bool]:
            return {w["url"]: w["is_healthy"] for w in httpx.get(f"{srv.url}/workers").json()["workers"]}

        gone = workers.servers[-1]  # the second decode worker
        assert wait_until(lambda: all(state().values()))
        gone.stop()
        assert wait_until(lambda: state()[gone.url] is False)
        # every request now goes to the decode worker still answering
        for i in range(3):
            assert count_tokens(stream_completion(srv.url, prompt_text((20 + i,), 100), 2).text) == 2
        assert {r["worker"] for r in workers.records("decode")} == {"d0"}
        # the same address answers again: back in the rotation, and chosen again
        back = PdWorker("decode", build_config(), name="d1b", gpu=9, byte_scale=0.01)
        revived = ServerThread(make_app(back), port=gone.port).start()
        try:
            assert wait_until(lambda: state()[gone.url] is True)
            for i in range(4):
                stream_completion(srv.url, prompt_text((40 + i,), 100), 2)
            assert len(back.records) > 0
        finally:
            revived.stop()


@pytest.mark.parametrize(("policy", "loads", "want"), [
    ("least-loaded", [3, 1, 2], 1),
    ("round-robin", [0, 0, 0], 0),
])
def test_selector_rules(policy: str, loads: list[int], want: int) -> None:
    prefill = [Worker(f"http://127.0.0.1:{i}", "prefill", 1) for i in range(3)]
    decode = [Worker(f"http://127.0.0.1:{10 + i}", "decode") for i in range(3)]
    for w, n in zip(prefill + decode, loads + loads):
        w.inflight = n
    p, d = Selector(prefill, decode, policy).choose("alpha bravo")
    assert (prefill.index(p), decode.index(d)) == (want, want)


def test_selector_skips_unhealthy_workers() -> None:
    prefill = [Worker("http://a:1", "prefill", 1), Worker("http://b:1", "prefill", 1)]
    decode = [Worker("http://c:1", "decode"), Worker("http://d:1", "decode")]
    prefill[0].healthy = decode[0].healthy = False
    sel = Selector(prefill, decode, "round-robin")
    assert all(sel.choose("x") == (prefill[1], decode[1]) for _ in range(3))


def test_client_replays_a_trace_open_loop(workers: Workers) -> None:
    from scheduler.model.trace import Request
    from scheduler.router.client_bench import replay, summarize

    reqs = [Request(i, 0.05 * i, 600 + 100 * i, 3, (100 + i, 200 + i)) for i in range(4)]
    router = NetKVRouter(workers.prefill_urls, workers.decode_urls, "least-loaded", health_interval=0.2)
    with ServerThread(netkv_router.make_app(router)) as srv:
        timings = replay(srv.url, reqs, time_scale=1.0)
    s = summarize(timings)
    assert (s["ok"], s["errors"], s["tokens_short"]) == (4, 0, 0)
    decode = {r["prompt"]: r for r in workers.records("decode")}
    for t in timings:
        assert t.t_send >= t.t_due - 0.01  # never sent before its due time
        assert t.chunk_times[0] >= decode[t.prompt_digest]["t_first"]


def test_a_failed_prefill_side_ends_the_decode_stream_with_an_error(workers: Workers) -> None:
    """The prefill worker's HTTP side unreachable (its bootstrap still is): the decode worker would
    wait minutes for KV that never comes; the router ends the client's stream with an error event
    as soon as the prefill request failed."""
    import openai

    from scheduler.router.smg import free_port

    _, port = workers.prefill_urls[0]
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the prefill POST is refused
    router = NetKVRouter([(dead, port)], workers.decode_urls[:1], "round-robin", health_interval=30.0)
    with ServerThread(netkv_router.make_app(router)) as srv:
        t0 = time.monotonic()
        with pytest.raises(openai.APIError, match="prefill side failed"):
            stream_completion(srv.url, prompt_text((30,), 100), 2)
        assert time.monotonic() - t0 < 10.0
        assert router.prefill_failures == 1


def test_a_refused_decode_connection_is_retried_on_another_decode_worker(workers: Workers) -> None:
    """Round robin sends the first request to a decode address nothing listens on: the router
    takes it out of the rotation and sends the same body to the live decode worker."""
    from scheduler.router.smg import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    router = NetKVRouter(workers.prefill_urls[:1], [dead, workers.decode_urls[0]], "round-robin",
                         health_interval=30.0)
    with ServerThread(netkv_router.make_app(router)) as srv:
        got = stream_completion(srv.url, prompt_text((31,), 100), 3)
        assert count_tokens(got.text) == 3
        listing = httpx.get(f"{srv.url}/workers").json()
    assert listing["decode_retries"] == 1 and listing["prefill_failures"] == 0
    assert {w["url"]: w["is_healthy"] for w in listing["workers"]}[dead] is False
