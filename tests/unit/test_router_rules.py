"""The NetKV router's selection rules, table-driven: cache-load by queued prefill tokens, and the
two priced rules asking a real oracle service (served on loopback, fed a telemetry snapshot)."""
from __future__ import annotations

import dataclasses
import time

import pytest

from hosts.asgi_thread import ServerThread
from scheduler.decision.telemetry import TelemetrySnapshot
from scheduler.model.prompts import block_keys, prompt_text
from scheduler.model.trace import BLOCK_TOKENS
from scheduler.router.netkv_router import Selector, Worker
from scheduler.service.app import OracleService, create_app
from scheduler.service.client import OracleClient
from scheduler.service.pricing import load_pricer
from scheduler.service.sources import TelemetryMonitor


class StaticSource:
    kind = "ryu"

    def __init__(self, snap: TelemetrySnapshot) -> None:
        self.snap = snap

    def poll(self) -> TelemetrySnapshot:
        """A new snapshot of the current state each poll, as a real source's."""
        return dataclasses.replace(self.snap, time_s=time.time(), utilisation=self.snap.utilisation.copy())


def workers(n_prefill: int, n_decode: int, names: list[str] | None = None) -> tuple[list[Worker], list[Worker]]:
    names = names or [f"h{i}" for i in range(n_prefill + n_decode)]
    prefill = [Worker(f"http://127.0.0.1:{100 + i}", "prefill", 1, name=names[i]) for i in range(n_prefill)]
    decode = [Worker(f"http://127.0.0.1:{200 + i}", "decode", name=names[n_prefill + i]) for i in range(n_decode)]
    return prefill, decode


@pytest.mark.parametrize(("queued", "cached_on", "want"), [
    ([0, 0, 0], None, 0),            # idle: the first in turn
    ([4000, 0, 0], None, 1),         # the least prefill work ahead
    ([0, 0, 0], 2, 2),               # a cached prefix makes the prompt's own work smaller
    ([0, 0, 3 * BLOCK_TOKENS], 2, 0),  # ... unless the queue there outweighs it
])
def test_cache_load_prefill_by_queued_tokens(queued: list[int], cached_on: int | None, want: int) -> None:
    prefill, decode = workers(3, 2)
    text = prompt_text((1, 2), 2 * BLOCK_TOKENS)
    if cached_on is not None:
        prefill[cached_on].remember(block_keys(text))
    sel = Selector(prefill, decode, "cache-load")
    for w, q in zip(prefill, queued):
        w.queued_tokens = q
    p, _, work = sel.choose_work(text)
    assert prefill.index(p) == want
    assert p.queued_tokens == queued[want] + work
    assert work == (0 if cached_on == want else 2 * BLOCK_TOKENS)


def test_priced_rules_need_the_service_and_host_names() -> None:
    prefill, decode = workers(1, 2)
    with pytest.raises(ValueError, match="oracle service"):
        Selector(prefill, decode, "netkv")
    decode[1].name = None
    with pytest.raises(ValueError, match="host name"):
        Selector(prefill, decode, "topology-affinity", oracle=object())


@pytest.fixture(scope="module")
def oracle():
    """A real oracle service on loopback; every link above the NICs idle except the ones the test loads."""
    pricer = load_pricer()
    service = OracleService(pricer)
    snap = TelemetrySnapshot.idle(pricer.tree, time.time())
    service.monitor = TelemetryMonitor(StaticSource(snap), interval_s=0.2)
    service.monitor.poll_once()
    with ServerThread(create_app(service)) as srv, OracleClient(srv.url) as client:
        yield pricer, snap, service, client


def test_topology_affinity_prefers_the_nearest_tier_until_load_outweighs_it(oracle) -> None:
    pricer, _, _, client = oracle
    tree = pricer.tree
    p = int(pricer.prefill[0])
    near = min((int(d) for d in pricer.decode), key=lambda d: (tree.tier(p, d), d))
    far = max((int(d) for d in pricer.decode), key=lambda d: (tree.tier(p, d), d))
    assert tree.tier(p, near) < tree.tier(p, far)
    prefill, decode = workers(1, 2, [tree.gpu_name(g) for g in (p, far, near)])
    sel = Selector(prefill, decode, "topology-affinity", oracle=client)
    assert sel.choose("alpha bravo")[1] is decode[1]
    decode[1].inflight = 3  # three requests in flight outweigh any tier's score (weight 1)
    assert sel.choose("alpha bravo")[1] is decode[0]


def test_netkv_avoids_a_congested_path_the_labels_cannot_see(oracle) -> None:
    pricer, snap, service, client = oracle
    tree = pricer.tree
    p = int(pricer.prefill[0])
    same_tier = [int(d) for d in pricer.decode if tree.tier(p, int(d)) == 3][:2]
    prefill, decode = workers(1, 2, [tree.gpu_name(g) for g in (p, *same_tier)])
    sel = Selector(prefill, decode, "netkv", oracle=client)
    text = prompt_text((7, 8, 9, 10), 4 * BLOCK_TOKENS)
    snap.utilisation[:] = 0.0
    snap.utilisation[tree.path(p, same_tier[0])[-1]] = 0.99  # the first candidate's NIC downlink busy
    service.monitor.poll_once()
    assert sel.choose(text)[1] is decode[1]
    snap.utilisation[:] = 0.0
    snap.utilisation[tree.path(p, same_tier[1])[-1]] = 0.99
    service.monitor.poll_once()
    assert sel.choose(text)[1] is decode[0]
    assert sel.oracle_failures == 0


def test_an_oracle_that_fails_falls_back_to_the_least_loaded_decode_and_is_counted() -> None:
    prefill, decode = workers(1, 2)
    decode[0].inflight = 2
    with OracleClient("http://127.0.0.1:9", timeout_s=0.2) as dead:
        sel = Selector(prefill, decode, "netkv", oracle=dead)
        assert sel.choose("alpha")[1] is decode[1]
    assert sel.oracle_failures == 1
