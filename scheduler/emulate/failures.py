"""Link failures on the fabric, as measured: reroute timings and the KV transfers that met them.

The scenario executor records when it took each physical link down or up (its wall clock), the
controller when it saw the port change and when the last switch confirmed the new routes
(``/netkv/status`` ``reroutes``). :func:`reroute_report` pairs the two, per link event: time to
detection and time until every switch forwards on the new routes, against the target of two
poll intervals. :func:`stall_seconds` gives every request the time its KV transfer stood still
on a down link, the simulator's ``stalled_s``: between two instants where the links' state or the
installed routes change, a transfer stands still while its route (the model's path under the
routes installed then) crosses a link that is down.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from controller.client import ControllerUnavailable
from scheduler.model.records import RequestRecord
from topology.model import FatTree

REROUTE_REPORT_TIMEOUT_S = 5.0
"""After a replay with link failures, wait this long at most for the controller to confirm the
reroute of the last repair (it takes milliseconds: docs/DESIGN.md#link-failures-on-the-fabric)."""
REROUTE_TARGET_POLLS = 2
"""The target: every switch on the new routes within this many telemetry poll intervals."""
MATCH_SLACK_S = 0.05
"""A controller event may carry a stamp this much before the executor's (both read time.time();
the executor stamps just before the interfaces change, so a negative gap is clock resolution)."""


def reroute_report(link_events: Sequence[dict], reroutes: Sequence[dict], poll_interval_s: float,
                   virtual: Callable[[float], float]) -> dict:
    """Per link event of the executor, the controller's reroute for it: ``seen_after_s`` and
    ``rerouted_after_s`` (wall seconds after the interfaces changed), the source that showed it
    (port status or the port-description poll), the switches and entries changed. Events the
    controller never reported count in ``unseen``."""
    used: set[int] = set()
    rows, unseen = [], 0
    for ev in link_events:
        match = next((k for k, r in enumerate(reroutes) if k not in used and r["link"] == ev["link"]
                      and r["down"] == ev["down"] and r["seen_at"] >= ev["wall"] - MATCH_SLACK_S), None)
        row = {"link": ev["link"], "down": ev["down"], "at_s": round(virtual(ev["wall"]), 3)}
        if match is None:
            unseen += 1
            row.update(seen_after_s=None, rerouted_after_s=None, source=None, switches=[], entries=0)
        else:
            used.add(match)
            r = reroutes[match]
            done = r.get("confirmed_at")
            row.update(seen_after_s=round(max(r["seen_at"] - ev["wall"], 0.0), 4),
                       rerouted_after_s=None if done is None else round(max(done - ev["wall"], 0.0), 4),
                       source=r["source"], switches=list(r["switches"]), entries=int(r["entries"]))
        rows.append(row)
    times = [r["rerouted_after_s"] for r in rows if r["rerouted_after_s"] is not None]
    target = REROUTE_TARGET_POLLS * poll_interval_s
    return {"events": rows, "unseen": unseen, "target_s": target,
            "rerouted_max_s": max(times) if times else None,
            "within_target": bool(rows) and unseen == 0 and len(times) == len(rows) and max(times) <= target}


def _state_changes(link_events: Sequence[dict], reroutes: Sequence[dict], tree: FatTree,
                   virtual: Callable[[float], float],
                   ) -> tuple[list[tuple[float, frozenset]], list[tuple[float, frozenset]]]:
    """(virtual time, down set) after each physical change, and after each confirmed reroute."""
    down: set[int] = set()
    phys: list[tuple[float, frozenset]] = [(-np.inf, frozenset())]
    for ev in sorted(link_events, key=lambda e: e["wall"]):
        (down.update if ev["down"] else down.difference_update)(int(i) for i in ev["links"])
        phys.append((virtual(ev["wall"]), frozenset(down)))
    routed: set[int] = set()
    routes: list[tuple[float, frozenset]] = [(-np.inf, frozenset())]
    for r in sorted((r for r in reroutes if r.get("confirmed_at") is not None), key=lambda r: r["confirmed_at"]):
        u, _, v = r["link"].partition("<->")
        both = {tree.link_index[(u, v)], tree.link_index[(v, u)]}
        (routed.update if r["down"] else routed.difference_update)(both)
        routes.append((virtual(r["confirmed_at"]), frozenset(routed)))
    return phys, routes


def _at(changes: list[tuple[float, frozenset]], t: float) -> frozenset:
    out = changes[0][1]
    for when, state in changes:
        if when <= t:
            out = state
    return out


def stall_seconds(tree: FatTree, records: Sequence[RequestRecord], link_events: Sequence[dict],
                  reroutes: Sequence[dict], virtual: Callable[[float], float]) -> list[RequestRecord]:
    """``records`` with ``stalled_s`` set (after-prefill transfers: from the prefill's end for
    ``transfer_s``); unchanged when no link went down."""
    if not link_events:
        return list(records)
    phys, routes = _state_changes(link_events, reroutes, tree, virtual)
    cuts = sorted({t for t, _ in phys[1:]} | {t for t, _ in routes[1:]})
    out = []
    for r in records:
        start = r.arrival_s + r.queue_s + r.prefill_s
        end = start + r.transfer_s
        src, dst = tree.gpu_index(r.prefill), tree.gpu_index(r.decode)
        edges = [start] + [t for t in cuts if start < t < end] + [end]
        stalled = 0.0
        for a, b in zip(edges, edges[1:]):
            dead = _at(phys, a)
            if dead and src != dst and dead.intersection(int(x) for x in tree.path(src, dst, down=_at(routes, a))):
                stalled += b - a
        out.append(dataclasses.replace(r, stalled_s=stalled) if stalled else r)
    return out


def controller_reroutes(fab: Any, events: int, timeout_s: float = REROUTE_REPORT_TIMEOUT_S) -> list[dict]:
    """The controller's reroutes (``/netkv/status``) once it has reported at least ``events`` link
    changes or ``timeout_s`` passed (the last repair's reroute may still be confirming)."""
    deadline = time.monotonic() + timeout_s
    reroutes: list[dict] = []
    while True:
        try:
            reroutes = fab.controller.status(timeout_s=1.0).get("reroutes", [])
        except ControllerUnavailable:
            pass
        done = sum(1 for r in reroutes if r.get("confirmed_at") is not None)
        if done >= events or time.monotonic() > deadline:
            return reroutes
        time.sleep(0.1)
