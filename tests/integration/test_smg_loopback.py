"""smg itself (the pinned SGLang model gateway) in P/D mode in front of our HTTP workers on
127.0.0.1, driven by the official openai client: the worker protocol holds against the real router.
Skipped, with the reason, when the smg binary cannot run here."""
from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import psutil
import pytest
from pd_loopback import Workers, stream_completion

from scheduler.model.prompts import count_tokens, prompt_text
from scheduler.router.smg import SmgRouter, smg_binary


def smg_unavailable() -> str | None:
    binary = smg_binary()
    if binary is None:
        return "smg is not installed (pip install -r requirements.txt)"
    try:
        done = subprocess.run([binary, "launch", "--help"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"smg cannot run here: {exc}"
    return None if done.returncode == 0 else f"smg cannot run here: {done.stderr.decode()[-300:]}"


pytestmark = pytest.mark.skipif(smg_unavailable() is not None, reason=smg_unavailable() or "")


def refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.fixture
def workers() -> Iterator[Workers]:
    w = Workers(2, 2)
    try:
        yield w
    finally:
        w.close()


def test_smg_routes_streams_through_our_workers(workers: Workers, tmp_path) -> None:
    router = SmgRouter(workers.prefill_urls, workers.decode_urls, prefill_policy="cache_aware",
                       decode_policy="power_of_two", log_path=tmp_path / "smg.log")
    prompts = [prompt_text((1, 2), 900), prompt_text((1, 3), 1000), prompt_text((7,), 300)]
    with router:
        pid = router.proc.pid if router.proc else -1
        got = [stream_completion(router.url, p, 6) for p in prompts]
        got.append(stream_completion(router.url, prompt_text((1, 2, 4), 1100), 3, chat=True))
    # smg and its process group are gone, its port closed
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert refused(router.url)
    assert "--pd-disaggregation" in (tmp_path / "smg.log").read_text()

    prefill = {r["prompt"]: r for r in workers.records("prefill")}
    decode = {r["prompt"]: r for r in workers.records("decode")}
    for s, n in zip(got, [6, 6, 6, 3]):
        assert count_tokens(s.text) == n, s.text  # every token arrived, one word each
        p, d = prefill[s.digest], decode[s.digest]
        assert p["room"] == d["room"]  # the two sides met on smg's bootstrap room
        assert "error" not in p and "error" not in d
        assert d["bootstrap"] == p["bootstrap"]
        assert d["t_recv_end"] <= d["t_first"]  # the first token waited for the KV bytes
        assert s.chunk_times[0] >= d["t_first"]
        assert s.ttft >= d["t_first"] - min(p["t_arrival"], d["t_arrival"])
    # smg's bootstrap port for a room is the chosen prefill worker's
    ports = {str(w.bootstrap_port) for w in workers.prefill}
    assert all(r["bootstrap"].rsplit(":", 1)[1] in ports for r in workers.records("decode"))


def test_workers_ports_closed_after_close() -> None:
    """Closing the workers closes their HTTP, bootstrap and KV ports."""
    w = Workers(1, 1)
    urls = [s.url for s in w.servers]
    urls += [f"http://127.0.0.1:{w.prefill[0].bootstrap_port}", f"http://127.0.0.1:{w.decode[0].kv_port}"]
    w.close()
    assert all(refused(u) for u in urls)
