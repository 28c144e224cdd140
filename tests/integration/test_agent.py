"""Host agents end to end on loopback, KV transfers and the control channel (agents run as real
subprocesses; the fleet is tests/integration/fleet.py)."""
from __future__ import annotations

import time

from fleet import MB, Fleet
from fleet import check_pair as _check_pair
from fleet import wait_event as _wait_event
from helpers import free_port

from hosts.messages import (
    Error,
    Ping,
    Pong,
    Received,
    Send,
    Sent,
    Stop,
    Warm,
    Warmed,
)


def test_hello_reports_identity(pair: Fleet) -> None:
    hellos = pair.server.agents()
    assert set(hellos) == {"p0t0s0g0", "p0t0s0g1"}
    for name, proc in pair.procs.items():
        h = hellos[name]
        assert h.pid == proc.pid and h.name == h.agent == name
        assert h.listen_ip == "127.0.0.1" and 0 < h.listen_port < 65536
    assert hellos["p0t0s0g1"].gpu == 1
    assert hellos["p0t0s0g0"].listen_port != hellos["p0t0s0g1"].listen_port


def test_50mb_transfer_reports_both_sides(pair: Fleet) -> None:
    pair.send("p0t0s0g0", "p0t0s0g1", 7, 50 * MB)
    res = pair.server.wait_transfers([7], timeout=60)[7]
    assert "error" not in res, res
    sent, recv = res["sent"], res["received"]
    _check_pair(sent, recv, 7, 50 * MB)
    assert sent.agent == "p0t0s0g0" and recv.agent == "p0t0s0g1"
    assert (sent.src_gpu, sent.dst_gpu) == (0, 1) == (recv.src_gpu, recv.dst_gpu)
    port = pair.server.agents()["p0t0s0g1"].listen_port
    assert sent.peer == f"127.0.0.1:{port}"
    assert recv.peer.startswith("127.0.0.1:")


def test_concurrent_transfers_both_directions(pair: Fleet) -> None:
    plan = {1: ("p0t0s0g0", "p0t0s0g1"), 2: ("p0t0s0g0", "p0t0s0g1"),
            3: ("p0t0s0g1", "p0t0s0g0"), 4: ("p0t0s0g1", "p0t0s0g0")}
    for tid, (src, dst) in plan.items():
        pair.send(src, dst, tid, 20 * MB + tid)
    res = pair.server.wait_transfers(plan, timeout=60)
    for tid, (src, dst) in plan.items():
        assert "error" not in res[tid], res[tid]
        _check_pair(res[tid]["sent"], res[tid]["received"], tid, 20 * MB + tid)
        assert res[tid]["sent"].agent == src and res[tid]["received"].agent == dst
    # The transfers overlapped in time rather than running one after another.
    assert max(r["sent"].t_start for r in res.values()) < min(r["received"].t_end for r in res.values())


def test_warm_connections_are_reused_by_later_transfers(pair: Fleet) -> None:
    """After `warm`, transfers ride the pre-opened connection: no new handshake on their path
    (the receiver sees every transfer arrive from the same peer port)."""
    hello = pair.server.agents()["p0t0s0g1"]
    pair.server.send("p0t0s0g0", Warm(((hello.listen_ip, hello.listen_port),)))
    assert _wait_event(pair.server, lambda e: isinstance(e, Warmed)).peers == 1
    peers = set()
    for tid in (21, 22, 23):  # sequential: each finds the connection idle again
        pair.send("p0t0s0g0", "p0t0s0g1", tid, 2 * MB)
        res = pair.server.wait_transfers([tid], timeout=30)[tid]
        assert "error" not in res, res
        _check_pair(res["sent"], res["received"], tid, 2 * MB)
        peers.add(res["received"].peer)
        # a pooled connection has no connect phase: t_connect == t_start
        assert res["sent"].t_connect == res["sent"].t_start
    assert len(peers) == 1


def test_pooled_connection_closed_by_peer_is_replaced(fleet: Fleet) -> None:
    """A pooled connection whose receiver went away is retried once on a fresh connection."""
    port = free_port()
    fleet.start("p0t0s0g0", 0)
    fleet.start("p0t0s0g1", 1, extra=["--port", str(port)])
    fleet.send("p0t0s0g0", "p0t0s0g1", 31, 1 * MB)
    assert "error" not in fleet.server.wait_transfers([31], timeout=30)[31]
    fleet.server.send("p0t0s0g1", Stop())
    fleet.procs["p0t0s0g1"].wait(timeout=10)
    fleet.server.wait_disconnect("p0t0s0g1", timeout=10)
    fleet.start("p0t0s0g1", 1, extra=["--port", str(port)])  # same address: the pooled one is stale
    fleet.send("p0t0s0g0", "p0t0s0g1", 32, 1 * MB)
    res = fleet.server.wait_transfers([32], timeout=30)[32]
    assert "error" not in res, res


def test_zero_byte_transfer(pair: Fleet) -> None:
    pair.send("p0t0s0g0", "p0t0s0g1", 11, 0)
    res = pair.server.wait_transfers([11], timeout=10)[11]
    assert res["sent"].bytes == 0 == res["received"].bytes


def test_closed_port_yields_error_event(fleet: Fleet) -> None:
    fleet.start("p0t0s0g0", 0)
    port = free_port()
    t0 = time.monotonic()
    fleet.server.send("p0t0s0g0", Send(5, 6, "127.0.0.1", port, MB, 1))
    res = fleet.server.wait_transfers([5], timeout=10)[5]
    assert time.monotonic() - t0 < 5
    err = res["error"]
    assert isinstance(err, Error)
    assert err.transfer_id == 5 and err.request_id == 6 and err.role == "send"
    assert "refused" in err.reason.lower()
    # The agent survives and still works.
    fleet.server.send("p0t0s0g0", Ping(1))
    assert _wait_event(fleet.server, lambda e: isinstance(e, Pong)).seq == 1


def test_misdelivered_stream_is_refused(pair: Fleet) -> None:
    pair.send("p0t0s0g0", "p0t0s0g1", 9, MB, dst_gpu=42)
    errors: dict[str | None, Error] = {}
    deadline = time.monotonic() + 10
    while len(errors) < 2 and time.monotonic() < deadline:
        ev = _wait_event(pair.server, lambda e: isinstance(e, (Error, Sent, Received)))
        assert isinstance(ev, Error), ev
        errors[ev.role] = ev
    assert set(errors) == {"send", "recv"}
    assert errors["recv"].transfer_id == 9 == errors["send"].transfer_id
    assert "misdelivered" in errors["recv"].reason and "GPU 42" in errors["recv"].reason
    assert errors["send"].agent == "p0t0s0g0" and errors["recv"].agent == "p0t0s0g1"


def test_invalid_commands_yield_errors(pair: Fleet) -> None:
    pair.server.send("p0t0s0g0", {"op": "send", "transfer_id": 3, "bytes": "lots"})  # raw: malformed
    ev = _wait_event(pair.server, lambda e: isinstance(e, Error))
    assert ev.transfer_id == 3 and ev.reason == "send: field 'request_id' must be int, got None"
    pair.server.send("p0t0s0g0", {"op": "dance"})
    ev = _wait_event(pair.server, lambda e: isinstance(e, Error))
    assert "unknown op" in ev.reason
