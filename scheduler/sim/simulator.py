"""Flow-level discrete-event simulator: the ``simulate`` backend.

A ``heapq`` event loop with total ordering (time, sequence number). Requests arrive, a policy picks
(prefill, decode), the prefill instance's FIFO computes, the KV bytes the decode instance lacks
cross the fabric as a flow sharing links max-min fairly with other transfers and with the
scenario's background flows, and the decode instance's continuous batch emits tokens. Telemetry is
sampled every ``poll_interval_s`` from per-link byte counters exactly as the controller computes it,
and the oracle answers from the snapshot the staleness setting allows. No randomness: identical
inputs give identical results.

Failures: a link whose capacity drops to 0 is down. ``topology.reroute_delay_s`` later the routing
avoids it (:meth:`topology.model.FatTree.paths` with ``down``) and every flow in flight on it moves
to its new path; the same delay applies when it comes back. Until then flows on it stand still.
With ``timing.kv_streaming = "layer-wise"`` a transfer starts once the first layer is computed and
may not run ahead of the prefill (demand limit = KV bytes / prefill time) until the prefill ends.

Speed, with identical results: paths are computed once per (source, destination, down links)
under destination-based routing; scenario changes at one instant share one rate recomputation
(:meth:`Simulator._superseded_net`); the network memoises the rates of recurring flow sets
(:class:`scheduler.sim.network.FlowNetwork`).
"""
from __future__ import annotations

import heapq
import zlib
from typing import Any

import numpy as np

from scheduler.decision.dispatch import Dispatcher, RequestState, build_oracles, oracle_kind
from scheduler.model.cluster import DecodeBatch
from scheduler.model.config import ExperimentConfig
from scheduler.model.records import RequestRecord
from scheduler.model.scenario import Action
from scheduler.model.trace import Request
from scheduler.policies.base import Policy
from scheduler.progress import Progress
from scheduler.sim.network import FlowNetwork
from scheduler.sim.telemetry import SimTelemetry
from topology.model import GBIT, make_fabric

# Event kinds; the order only matters for ties at the same instant (after time, before sequence).
_SCENARIO, _REROUTE, _POLL, _NET, _KV_START, _PREFILL_DONE, _KV_ARRIVED, _DECODE_DONE, _ARRIVAL = range(9)


class UnfinishedRequestsError(RuntimeError):
    """The run cannot finish: requests wait on something that never comes (a link that stays
    down, with no other path). The message names them and what they wait for."""


class Simulator:
    """Replays ``requests`` under one policy and one list of scenario actions: the event loop and
    the fluid network (this class is the :class:`~scheduler.decision.dispatch.Execution` of the shared
    :class:`~scheduler.decision.dispatch.Dispatcher`, which decides and records)."""

    label = "simulate"

    def __init__(self, cfg: ExperimentConfig, requests: list[Request], policy: Policy,
                 actions: list[Action] | None = None, progress: bool = False, record_telemetry: bool = False,
                 shadow_fresh: bool = False) -> None:
        self.cfg = cfg
        self.tree = make_fabric(cfg.topology)
        self.requests = requests
        self.policy = policy
        self.actions = actions or []
        self.net = FlowNetwork(self.tree.capacity, self.tree.pad)
        self.telemetry: SimTelemetry | None = None
        self.oracle_kind = oracle_kind(cfg, policy)
        if self.oracle_kind in ("telemetry", "inflight", "predictive") or record_telemetry or shadow_fresh:
            keep = cfg.oracle.staleness_s + 4 * cfg.oracle.poll_interval_s + 1.0
            self.telemetry = SimTelemetry(self.tree, self.net, cfg.oracle.poll_interval_s, keep)
            self.telemetry.record_samples = record_telemetry
        # Staleness studies: also ask a fresh-telemetry oracle and record whether its choice's tier
        # (and exact instance) agree with the stale one's.
        fresh = self.telemetry if shadow_fresh else None
        oracle, shadow = build_oracles(cfg, self.tree, self.oracle_kind, self.telemetry, truth=self,
                                       fresh_source=fresh)
        self.dispatch = Dispatcher(cfg, self.tree, requests, policy, oracle, shadow)
        self.cluster = self.dispatch.cluster
        self.batches = [DecodeBatch(self.cluster.timing, self.cluster.decode_capacity_tokens)
                        for _ in range(self.cluster.decode_ids.size)]
        self.show_progress = progress
        self.layer_wise = cfg.timing.kv_streaming == "layer-wise"
        self._heap: list[tuple[float, int, int, Any]] = []  # (time, kind, sequence, payload of the kind)
        self._seq = 0
        self._net_version = 0
        self._flow_owner: dict[int, int] = {}  # network flow id -> request index
        self._flow_ends: dict[int, tuple[int, int, int]] = {}  # network flow id -> (src, dst, flow key)
        self._bg_flows: dict[str, int] = {}  # scenario flow id -> network flow id
        self._down: set[int] = set()  # links at capacity 0 now
        self._routing_down: frozenset[int] = frozenset()  # links the routing avoids now
        self.reroutes = 0
        self._stalls_open = False  # a transfer's stall clock may run (see _mark_stalls)
        self._batch_scenario = True  # scenario changes at one instant share one rate recomputation
        # (see _superseded_net); tests switch it off to compare with applying them one by one

    @property
    def states(self) -> list[RequestState]:
        return self.dispatch.states

    @property
    def remaining(self) -> int:
        return self.dispatch.remaining

    @property
    def agreement(self) -> dict[str, float]:
        return self.dispatch.agreement

    # ------------------------------------------------------------------ ground truth (perfect oracle)
    def routing_down(self) -> frozenset[int]:
        return self._routing_down

    def entrant_share(self) -> np.ndarray:
        return self.net.entrant_share()

    # ------------------------------------------------------------------ event plumbing
    @property
    def events(self) -> int:
        """Events pushed onto the event queue so far (each takes the next sequence number)."""
        return self._seq

    def _push(self, t: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, kind, self._seq, payload))

    def _sync(self, t: float) -> None:
        if self.telemetry is not None:
            self.telemetry.catch_up(t)
        self.net.advance(t)

    def _schedule_net(self) -> None:
        self._net_version += 1
        nxt = self.net.next_completion()
        if nxt is not None:
            self._push(nxt[0], _NET, self._net_version)

    def _superseded_net(self) -> None:
        """:meth:`_schedule_net` after a network change that the next event, another scenario
        change at the same instant, supersedes: the ``_NET`` event it would push would be stale
        before it could fire (the next change schedules anew first), so only the version moves
        and the held rates are left for the last change to compute."""
        self._net_version += 1

    def _schedule_decode(self, d: int) -> None:
        nxt = self.batches[d].next_finish()
        if nxt is not None:
            self._push(nxt[0], _DECODE_DONE, (d, self.batches[d].version))

    # ------------------------------------------------------------------ run
    def run(self) -> list[RequestRecord]:
        for i, r in enumerate(self.requests):
            self._push(r.arrival_s, _ARRIVAL, i)
        for a in self.actions:
            self._push(a.time_s, _SCENARIO, a)
        heap = self._heap
        with Progress(total=len(self.states), label=f"{self.label} {self.policy.name}",
                      enabled=self.show_progress) as bar:
            d = self.dispatch
            while d.remaining and heap:
                t, kind, _, payload = heapq.heappop(heap)
                done_before = d.remaining
                self._handle(t, kind, payload)
                if d.remaining != done_before:
                    bar.update(done_before - d.remaining)
        if self.remaining:
            raise UnfinishedRequestsError(self._unfinished_message())
        return self.dispatch.records()

    def _unfinished_message(self) -> str:
        """Which requests cannot finish and what each waits for."""
        stuck = [(i, s) for i, s in enumerate(self.states) if s.finish == 0.0 and s.p >= 0]
        lines = []
        for _, s in stuck[:5]:
            src, dst = int(self.cluster.prefill_ids[s.p]), int(self.cluster.decode_ids[s.d])
            who = f"request {s.req.req_id} ({self.tree.gpu_name(src)} -> {self.tree.gpu_name(dst)})"
            flows = [self.net.flows[f] for f in s.fids if f in self.net.flows]
            if flows:
                dead = sorted({self.tree.link_name(int(x)) for flow in flows for x in flow.path
                               if int(x) in self._down})
                lines.append(f"{who}: its KV transfer stands still on {', '.join(dead) or 'a saturated path'}"
                             + (" (down, no other path)" if dead else ""))
            else:
                lines.append(f"{who}: waits in stage after {'prefill' if s.prefill_end else 'arrival'}")
        more = f" (and {len(stuck) - 5} more)" if len(stuck) > 5 else ""
        return (f"{self.remaining} of {len(self.states)} requests can never finish under {self.policy.name}: "
                + "; ".join(lines) + more + ". A scenario link that stays down with no other route (a GPU's "
                "own NIC or NVLink) cuts those GPUs off; give the outage a duration or use another link.")

    def _handle(self, t: float, kind: int, payload: Any) -> None:
        """One event; ``payload`` is what its kind carries (a request index, a ``(decode, batch
        version)`` pair, a network version, a scenario :class:`Action`, or None)."""
        states = self.dispatch.states
        if kind == _ARRIVAL:
            self._sync(t)
            self.dispatch.arrive(payload, t, self)
        elif kind == _PREFILL_DONE:
            self._sync(t)
            self._prefill_done(states[payload], payload, t)
        elif kind == _KV_START:
            self._sync(t)
            s = states[payload]
            self._start_transfer(s, payload, int(self.cluster.prefill_ids[s.p]), int(self.cluster.decode_ids[s.d]),
                                 cap=s.nbytes / max(s.prefill_end - s.prefill_start, 1e-12))
        elif kind == _NET:
            if payload != self._net_version:
                return
            self._sync(t)
            nxt = self.net.next_completion()
            if nxt is None:
                return
            fid = nxt[1]
            flow = self.net.remove(fid)
            i = self._flow_owner.pop(fid)
            self._flow_ends.pop(fid, None)
            st = states[i]
            latency = float(self.tree.latency_s[flow.path].sum()) + self.cfg.timing.transfer_setup_s
            if st.shards > 1:  # a striped transfer: it ends when its last shard lands
                st.landed = max(st.landed, t + latency)
                st.shards -= 1
                self._schedule_net()
                return
            st.fids = ()
            st.shards = 0
            if st.stall_since is not None:
                st.stalled += t - st.stall_since
                st.stall_since = None
            self._push(max(st.landed, t + latency), _KV_ARRIVED, i)
            self._schedule_net()
        elif kind == _KV_ARRIVED:
            self._kv_arrived(states[payload], payload, t)
        elif kind == _DECODE_DONE:
            d, version = payload
            batch = self.batches[d]
            if version != batch.version:
                return
            nxt = batch.next_finish()
            if nxt is None:
                return
            i = nxt[1]
            admitted = batch.depart(t, i)
            self.dispatch.finished(states[i], t)
            for j, first in admitted:
                self.dispatch.joined(states[j], t, first)
            self._schedule_decode(d)
        elif kind == _SCENARIO:
            self._sync(t)
            heap = self._heap
            if self._batch_scenario and heap and heap[0][0] == t and heap[0][1] == _SCENARIO:
                self.net.hold()  # more changes at this instant follow: rates once, after the last
                self.apply(payload)
                self._superseded_net()
            else:
                self.apply(payload)
                self.net.release()
                self._schedule_net()
        elif kind == _REROUTE:
            self._sync(t)
            self._reroute(t)
            self._schedule_net()

    def _kv_arrived(self, s: RequestState, i: int, t: float) -> None:
        self.dispatch.kv_arrived(s, i, t)
        first = self.batches[s.d].offer(t, i, s.req.input_tokens, s.req.output_tokens)
        if first is not None:
            self.dispatch.joined(s, t, first)
            self._schedule_decode(s.d)

    # ------------------------------------------------------------------ Execution: the fluid model
    def start(self, s: RequestState, i: int) -> None:
        """Compute the decided request on its prefill FIFO (the predicted window the dispatcher
        booked) and move its KV bytes after it, or from the first layer on when streaming."""
        self._push(s.prefill_end, _PREFILL_DONE, i)
        if self.layer_wise and s.nbytes > 0:
            self._push(self.dispatch.transfer_start(s), _KV_START, i)

    def _prefill_done(self, s: RequestState, i: int, t: float) -> None:
        self.dispatch.prefilled(s)
        if s.nbytes <= 0:
            self._push(t, _KV_ARRIVED, i)
            return
        if self.layer_wise:  # the stream runs since the first layer: the rest may go at full speed
            moving = [f for f in s.fids if f in self.net.flows]
            if moving:
                for f in moving:
                    self.net.set_cap(f, np.inf)
                self._schedule_net()
            return
        self._start_transfer(s, i, int(self.cluster.prefill_ids[s.p]), int(self.cluster.decode_ids[s.d]))

    def _start_transfer(self, s: RequestState, i: int, src: int, dst: int, cap: float = np.inf) -> None:
        """Move the request's KV bytes from instance ``src`` to ``dst`` (leader GPUs) as simulated
        flows (at most ``cap`` bytes/s in all): one flow at tp = 1, else striped, rank r of the
        prefill instance sending ``nbytes / tp`` from GPU ``src + r`` to ``dst + r``, in parallel."""
        tp = self.cluster.tp
        if tp == 1:
            path = self.tree.route(src, dst, s.req.req_id, self._routing_down)
            fid = self.net.add(path, s.nbytes, cap=cap)
            s.fids, s.shards = (fid,), 1
            self._flow_owner[fid] = i
            self._flow_ends[fid] = (src, dst, s.req.req_id)
        else:
            self.net.hold()  # the shards start together: one rate computation
            fids = []
            for r in range(tp):
                path = self.tree.route(src + r, dst + r, s.req.req_id, self._routing_down)
                fid = self.net.add(path, s.nbytes / tp, cap=cap / tp)
                fids.append(fid)
                self._flow_owner[fid] = i
                self._flow_ends[fid] = (src + r, dst + r, s.req.req_id)
            self.net.release()
            s.fids, s.shards, s.landed = tuple(fids), tp, 0.0
        self._mark_stalls(self.net.now)
        self._schedule_net()

    # ------------------------------------------------------------------ failures and rerouting
    def _mark_stalls(self, t: float) -> None:
        """Start or end the stall clock of every KV transfer by whether a path of its (shards')
        flows crosses a down link."""
        down = self._down
        if not down and not self._stalls_open:  # nothing is down and no stall clock runs: nothing to do
            return
        dead_by_req: dict[int, bool] = {}
        for fid, i in self._flow_owner.items():
            dead = bool(down) and any(int(x) in down for x in self.net.flows[fid].path)
            dead_by_req[i] = dead_by_req.get(i, False) or dead
        for i, dead in dead_by_req.items():
            s = self.states[i]
            if dead and s.stall_since is None:
                s.stall_since = t
                self._stalls_open = True
            elif not dead and s.stall_since is not None:
                s.stalled += t - s.stall_since
                s.stall_since = None
        if not down:  # every stall clock of a transfer in flight stopped just now
            self._stalls_open = False

    def _reroute(self, t: float) -> None:
        """The routing learns the current down links: every flow whose path changes moves."""
        new = frozenset(self._down)
        if new == self._routing_down:
            return
        self._routing_down = new
        self.reroutes += 1
        moves = {}
        for fid, (src, dst, key) in self._flow_ends.items():
            path = self.tree.route(src, dst, key, new)
            if not np.array_equal(path, self.net.flows[fid].path):
                moves[fid] = path
        if moves:
            self.net.set_paths(moves)
        self._mark_stalls(t)

    def apply(self, a: Action) -> None:
        """Carry out one scenario action on the fluid network."""
        if a.kind == "flow_start":
            flow_id, src, dst = a.flow_id, a.src, a.dst
            if flow_id is None or src is None or dst is None:
                raise ValueError(f"a flow_start action needs flow_id, src and dst, got {a}")
            if src == dst:
                return
            key = zlib.crc32(flow_id.encode())
            path = self.tree.route(src, dst, key, self._routing_down)
            cap = np.inf if a.rate_gbit_s is None else a.rate_gbit_s * GBIT
            fid = self._bg_flows[flow_id] = self.net.add(path, np.inf, cap=cap, tag=flow_id)
            self._flow_ends[fid] = (src, dst, key)
        elif a.kind == "flow_stop":
            stopped = self._bg_flows.pop(a.flow_id, None) if a.flow_id is not None else None
            if stopped is not None:
                self.net.remove(stopped)
                self._flow_ends.pop(stopped, None)
        elif a.kind == "link_capacity":
            if a.factor is None:
                raise ValueError(f"a link_capacity action needs a factor, got {a}")
            self.net.set_capacity(list(a.links), float(a.factor))
            before = set(self._down)
            if a.factor == 0:
                self._down.update(int(x) for x in a.links)
            else:
                self._down.difference_update(int(x) for x in a.links)
            if self._down != before:  # a failure or a repair: routes follow after the detection delay
                self._mark_stalls(self.net.now)
                self._push(self.net.now + self.cfg.topology.reroute_delay_s, _REROUTE, None)
        else:
            raise ValueError(f"unknown scenario action kind {a.kind!r}")
