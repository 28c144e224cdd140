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
(:class:`scheduler.network.FlowNetwork`).
"""
from __future__ import annotations

import heapq
import zlib
import time
from dataclasses import dataclass

import numpy as np

from scheduler.cluster import Cluster, DecodeBatch
from scheduler.config import ConfigError, ExperimentConfig
from scheduler.network import FlowNetwork
from scheduler.oracle import NetworkOracle, make_oracle
from scheduler.policies.base import Policy
from scheduler.progress import Progress
from scheduler.records import RequestRecord
from scheduler.scenario import Action
from scheduler.telemetry import TelemetryHistory, TelemetrySnapshot
from scheduler.trace import Request
from topology.model import GBIT, FatTree

# Event kinds; the order only matters for ties at the same instant (after time, before sequence).
_SCENARIO, _REROUTE, _POLL, _NET, _KV_START, _PREFILL_DONE, _KV_ARRIVED, _DECODE_DONE, _ARRIVAL = range(9)


class UnfinishedRequestsError(RuntimeError):
    """The run cannot finish: requests wait on something that never comes (a link that stays
    down, with no other path). The message names them and what they wait for."""


@dataclass
class _ReqState:
    req: Request
    p: int = -1
    d: int = -1
    prefill_cached: int = 0
    decode_cached: int = 0
    nbytes: float = 0.0
    decision_us: float = 0.0
    prefill_start: float = 0.0
    prefill_end: float = 0.0
    kv_arrived: float = 0.0
    joined: float = 0.0
    first_token: float = 0.0
    finish: float = 0.0
    fids: tuple[int, ...] = ()  # network flows of the KV transfer (one per rank) while it runs
    shards: int = 0  # of those, still moving
    landed: float = 0.0  # latest landing time of a finished shard (striped transfers)
    stalled: float = 0.0  # seconds the transfer stood still on a down link
    stall_since: float | None = None


class SimTelemetry:
    """Telemetry sampler of the simulated fabric: one snapshot per poll interval, from counters."""

    def __init__(self, tree: FatTree, net: FlowNetwork, interval_s: float, keep_s: float) -> None:
        self.tree = tree
        self.net = net
        self.interval = interval_s
        self.history = TelemetryHistory(max_age_s=keep_s)
        self.next_poll = interval_s
        self._prev_bytes = net.link_bytes.copy()
        self.samples: list[tuple[float, np.ndarray]] = []
        self.record_samples = False
        self._cap_version = -1  # capacities the divisors below are for
        self._divisor = self._dead = None

    def catch_up(self, t: float) -> None:
        """Take every poll due at or before ``t``; rates are constant since the last network change,
        so counters at a past poll instant are exact."""
        net = self.net
        while self.next_poll <= t:
            tp = self.next_poll
            counters = net.link_bytes + net.link_rate * (tp - net.now)
            delta = counters - self._prev_bytes
            self._prev_bytes = counters
            if self._cap_version != net.capacity_version:
                cap = net.capacity
                self._divisor = np.where(cap > 0, self.interval * cap, 1.0)
                self._dead = np.flatnonzero(~(cap > 0))
                self._cap_version = net.capacity_version
            # bytes / (interval x capacity); a link at capacity 0 is 1 if anything crossed it, else 0
            util = delta / self._divisor
            if self._dead.size:
                util[self._dead] = np.where(delta[self._dead] > 0, 1.0, 0.0)
            util[-1] = 0.0
            if not np.isfinite(util).all():
                util = np.nan_to_num(util)
            util = np.clip(util, 0.0, 1.0)
            self.history.add(TelemetrySnapshot(tp, util, net.capacity_factor()))
            if self.record_samples:
                self.samples.append((tp, util[:-1].astype(np.float32)))
            self.next_poll += self.interval

    def at(self, time_s: float) -> TelemetrySnapshot | None:
        return self.history.at(time_s)


class Simulator:
    """Replays ``requests`` under one policy and one list of scenario actions."""

    has_ground_truth = True
    """The fluid network is the truth the ``perfect`` oracle reads (a live backend has none)."""

    def __init__(self, cfg: ExperimentConfig, requests: list[Request], policy: Policy,
                 actions: list[Action] | None = None, oracle_kind: str | None = None,
                 progress: bool = False, record_telemetry: bool = False, shadow_fresh: bool = False,
                 telemetry_source=None) -> None:
        self.cfg = cfg
        self.tree = FatTree(cfg.topology)
        self.cluster = Cluster(cfg, self.tree)
        self.requests = requests
        self.policy = policy
        self.actions = actions or []
        self.net = FlowNetwork(self.tree.capacity, self.tree.pad)
        self.telemetry: SimTelemetry | None = None
        self.oracle: NetworkOracle | None = None
        kind = oracle_kind or getattr(policy, "oracle_kind", None) or cfg.oracle.kind
        self.oracle_kind = kind if policy.needs_oracle else None
        needs_telemetry = telemetry_source is None and (
            (policy.needs_oracle and kind in ("telemetry", "inflight")) or record_telemetry or shadow_fresh)
        if needs_telemetry:
            keep = cfg.oracle.staleness_s + 4 * cfg.oracle.poll_interval_s + 1.0
            self.telemetry = SimTelemetry(self.tree, self.net, cfg.oracle.poll_interval_s, keep)
            self.telemetry.record_samples = record_telemetry
        source = self.telemetry
        if telemetry_source is not None:  # a live backend supplies its own telemetry
            self.telemetry = None
            source = telemetry_source
        if policy.needs_oracle:
            self.oracle = make_oracle(kind, self.tree, source, cfg.oracle.staleness_s,
                                      cfg.oracle.min_available_fraction, cfg.timing.transfer_setup_s,
                                      truth=self if self.has_ground_truth else None)
        # Staleness studies: also ask a fresh-telemetry oracle and record whether its choice's tier
        # (and exact instance) agree with the stale one's.
        self.shadow = None
        self.agreement = {"decisions": 0, "same_tier": 0, "same_instance": 0}
        if shadow_fresh and policy.needs_oracle and self.telemetry is not None:
            self.shadow = make_oracle("telemetry", self.tree, self.telemetry, 0.0,
                                      cfg.oracle.min_available_fraction, cfg.timing.transfer_setup_s)
        self._check_fits(requests)
        self.batches = [DecodeBatch(self.cluster.timing, self.cluster.decode_capacity_tokens)
                        for _ in range(self.cluster.decode_ids.size)]
        self.show_progress = progress
        self.layer_wise = cfg.timing.kv_streaming == "layer-wise"
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self._net_version = 0
        self._flow_owner: dict[int, int] = {}  # network flow id -> request index
        self._flow_ends: dict[int, tuple[int, int, int]] = {}  # network flow id -> (src, dst, flow key)
        self._bg_flows: dict[str, int] = {}  # scenario flow id -> network flow id
        self._down: set[int] = set()  # links at capacity 0 now
        self._routing_down: frozenset[int] = frozenset()  # links the routing avoids now
        self.reroutes = 0
        self.events = 0
        self._routes: dict[tuple[int, int, frozenset[int]], np.ndarray] = {}  # see _route
        self._dst_routing = cfg.topology.routing == "dst"
        # scenario changes at one instant share one rate recomputation (see _superseded_net); a
        # backend that replaces how actions apply or the network is scheduled keeps the plain path
        cls = type(self)
        self._batch_scenario = cls._apply is Simulator._apply and cls._schedule_net is Simulator._schedule_net
        self._last_arrival = max((r.arrival_s for r in requests), default=0.0)

    def _check_fits(self, requests: list[Request]) -> None:
        """Refuse a request no decode instance can ever hold (its prompt + output tokens exceed
        the instance's KV capacity): it would be admitted alone, over the memory it has.
        ``experiment.prepare`` skips such requests and counts them."""
        limit = self.cluster.timing.kv_capacity_tokens
        for r in requests:
            if r.input_tokens + r.output_tokens > limit:
                raise ConfigError(f"request {r.req_id} needs {r.input_tokens + r.output_tokens} KV tokens, more than a "
                                  f"decode instance holds ({limit}: model '{self.cfg.model.name}' on cluster.tp="
                                  f"{self.cfg.cluster.tp} x '{self.cfg.gpu.name}'); experiment.prepare skips such "
                                  f"requests (split_too_long)")

    # ------------------------------------------------------------------ ground truth (perfect oracle)
    def routing_down(self) -> frozenset[int]:
        return self._routing_down

    def entrant_share(self) -> np.ndarray:
        return self.net.entrant_share()

    def _route(self, src: int, dst: int, flow_key: int | None, down: frozenset[int]) -> np.ndarray:
        """Path of a flow from GPU ``src`` to ``dst`` avoiding ``down``; with destination-based
        routing it does not depend on the flow, so it is computed once per (src, dst, down) and
        shared (read-only)."""
        if not self._dst_routing:
            return self.tree.paths(src, np.array([dst]), flow_key, down)[0]
        key = (src, dst, down)
        hit = self._routes.get(key)
        if hit is None:
            if len(self._routes) > 65536:  # many failure sets over a long run: keep memory bounded
                self._routes.clear()
            hit = self.tree.paths(src, np.array([dst]), flow_key, down)[0]
            hit.flags.writeable = False
            self._routes[key] = hit
        return hit

    # ------------------------------------------------------------------ event plumbing
    def _push(self, t: float, kind: int, payload: object) -> None:
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
        change at the same instant, supersedes. The ``_NET`` event it would push is stale before
        it can fire (the next change schedules anew first), so it changes nothing but the count
        of handled events, by one if it would fire before the run ends. Its time needs the rates
        of this intermediate state; a bound on it (:meth:`FlowNetwork.completion_bound`) that lies
        before the last arrival settles it without them (the run ends after the last arrival).
        Otherwise the rates are computed and the event pushed as usual."""
        bound = self.net.completion_bound()
        if bound is None:  # no sized flow: _schedule_net would push nothing
            self._net_version += 1
        elif bound <= self._last_arrival:
            self._net_version += 1
            self._seq += 1  # the sequence number it would have taken
            self.events += 1  # handled (and ignored as stale) before the run ends
        else:
            self.net.release()
            self._schedule_net()

    def _schedule_decode(self, d: int) -> None:
        nxt = self.batches[d].next_finish()
        if nxt is not None:
            self._push(nxt[0], _DECODE_DONE, (d, self.batches[d].version))

    # ------------------------------------------------------------------ run
    def run(self) -> list[RequestRecord]:
        self._seed_events()
        return self._run_seeded()

    def _run_seeded(self) -> list[RequestRecord]:
        with Progress(total=len(self.states), label=f"{self.label} {self.policy.name}",
                      enabled=self.show_progress) as bar:
            while self.remaining:
                ev = self._next_event()
                if ev is None:
                    break
                done_before = self.remaining
                self._handle(*ev)
                if self.remaining != done_before:
                    bar.update(done_before - self.remaining)
        if self.remaining:
            raise UnfinishedRequestsError(self._unfinished_message())
        return [self._record(s) for s in self.states]

    def _unfinished_message(self) -> str:
        """Which requests cannot finish and what each waits for."""
        stuck = [(i, s) for i, s in enumerate(self.states) if s.finish == 0.0 and s.p >= 0]
        lines = []
        for i, s in stuck[:5]:
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

    label = "simulate"

    def _seed_events(self) -> None:
        self.states = [_ReqState(r) for r in self.requests]
        self.remaining = len(self.states)
        for i, r in enumerate(self.requests):
            self._push(r.arrival_s, _ARRIVAL, i)
        for a in self.actions:
            self._push(a.time_s, _SCENARIO, a)

    def _next_event(self) -> tuple[float, int, object] | None:
        """The next event in time order (a real-time backend overrides this to wait for it)."""
        if not self._heap:
            return None
        t, kind, _, payload = heapq.heappop(self._heap)
        return t, kind, payload

    def _handle(self, t: float, kind: int, payload: object) -> None:
        states = self.states
        self.events += 1
        if kind == _ARRIVAL:
            self._sync(t)
            self._arrive(states[payload], payload, t)
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
            self._finish(states[i], t)
            for j, first in admitted:
                self._joined(states[j], t, first)
            self._schedule_decode(d)
        elif kind == _SCENARIO:
            self._sync(t)
            heap = self._heap
            if self._batch_scenario and heap and heap[0][0] == t and heap[0][1] == _SCENARIO:
                self.net.hold()  # more changes at this instant follow: rates once, after the last
                self._apply(payload)
                self._superseded_net()
            else:
                self._apply(payload)
                self.net.release()
                self._schedule_net()
        elif kind == _REROUTE:
            self._sync(t)
            self._reroute(t)
            self._schedule_net()

    def _kv_arrived(self, s: _ReqState, i: int, t: float) -> None:
        s.kv_arrived = t
        if self.oracle is not None and self.oracle.tracks_commitments:
            self.oracle.done(i, t)
        first = self.batches[s.d].offer(t, i, s.req.input_tokens, s.req.output_tokens)
        if first is not None:
            self._joined(s, t, first)
            self._schedule_decode(s.d)

    def _joined(self, s: _ReqState, t: float, first_token: float) -> None:
        s.joined = t
        s.first_token = first_token

    def _finish(self, s: _ReqState, t: float) -> None:
        """Request done at ``t``: its decode slot is released and its prompt becomes a cached
        prefix of its decode instance."""
        s.finish = t
        self.cluster.decode_assigned_tokens[s.d] -= s.req.input_tokens + s.req.output_tokens
        self.cluster.decode_cache.insert(s.d, s.req.hash_ids)
        self.remaining -= 1

    # ------------------------------------------------------------------ steps
    def _arrive(self, s: _ReqState, i: int, t: float) -> None:
        self._decide(s, i, t)
        self._start_prefill(s, i)

    def _decide(self, s: _ReqState, i: int, t: float) -> None:
        """The policy's choice for request ``i`` arriving at ``t``, and the cluster mirror's
        bookkeeping of it: cached prefixes, bytes to move, the prefill FIFO's predicted window
        (``prefill_busy_until``) and the decode instance's assigned tokens."""
        cl = self.cluster
        t0 = time.perf_counter_ns()
        ctx = cl.context(s.req, t, self.oracle)
        dec = self.policy.choose(ctx)
        s.decision_us = (time.perf_counter_ns() - t0) / 1e3
        s.p, s.d = dec.prefill, dec.decode
        if self.shadow is not None:
            self.policy.turn -= 1  # replay the same decision (same tie-breaking turn) with fresh telemetry
            fresh = self.policy.choose(cl.context(s.req, t, self.shadow)).decode
            src = int(cl.prefill_ids[s.p])
            a = self.agreement
            a["decisions"] += 1
            a["same_instance"] += fresh == s.d
            a["same_tier"] += self.tree.tier(src, int(cl.decode_ids[fresh])) == self.tree.tier(src, int(cl.decode_ids[s.d]))
        s.prefill_cached = ctx.prefill_cached_at(s.p)
        s.decode_cached = ctx.decode_cached_at(s.d)
        s.nbytes = float(cl.timing.kv_bytes(s.req.input_tokens - s.decode_cached))
        s.prefill_start, s.prefill_end = cl.timing.prefill_fifo(
            t, float(cl.prefill_busy_until[s.p]), s.req.input_tokens, s.prefill_cached)
        cl.prefill_busy_until[s.p] = s.prefill_end
        cl.decode_assigned_tokens[s.d] += s.req.input_tokens + s.req.output_tokens
        if self.oracle is not None and self.oracle.tracks_commitments and s.nbytes > 0:
            start = self._transfer_start(s)
            took = float(ctx.raw_transfer_cost_s(s.p)[s.d])
            self.oracle.commit(int(cl.prefill_ids[s.p]), int(cl.decode_ids[s.d]), start,
                               max(start + took, s.prefill_end), s.req.req_id, s.nbytes, i, tp=cl.tp)

    def _transfer_start(self, s: _ReqState) -> float:
        """When the request's KV starts moving: at the prefill's end, or once its first layer is
        computed when streaming layer by layer."""
        if self.layer_wise:
            return s.prefill_start + (s.prefill_end - s.prefill_start) / self.cfg.model.layers
        return s.prefill_end

    def _start_prefill(self, s: _ReqState, i: int) -> None:
        """Run the decided request's compute and transfer (a live backend overrides this and
        hands the request to the host agents)."""
        self._push(s.prefill_end, _PREFILL_DONE, i)
        if self.layer_wise and s.nbytes > 0:
            self._push(self._transfer_start(s), _KV_START, i)

    def _prefill_done(self, s: _ReqState, i: int, t: float) -> None:
        self.cluster.prefill_cache.insert(s.p, s.req.hash_ids)
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

    def _start_transfer(self, s: _ReqState, i: int, src: int, dst: int, cap: float = np.inf) -> None:
        """Move the request's KV bytes from instance ``src`` to ``dst`` (leader GPUs) as simulated
        flows (at most ``cap`` bytes/s in all): one flow at tp = 1, else striped, rank r of the
        prefill instance sending ``nbytes / tp`` from GPU ``src + r`` to ``dst + r``, in parallel."""
        tp = self.cluster.tp
        if tp == 1:
            path = self._route(src, dst, s.req.req_id, self._routing_down)
            fid = self.net.add(path, s.nbytes, cap=cap)
            s.fids, s.shards = (fid,), 1
            self._flow_owner[fid] = i
            self._flow_ends[fid] = (src, dst, s.req.req_id)
        else:
            self.net.hold()  # the shards start together: one rate computation
            fids = []
            for r in range(tp):
                path = self._route(src + r, dst + r, s.req.req_id, self._routing_down)
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
        dead_by_req: dict[int, bool] = {}
        for fid, i in self._flow_owner.items():
            dead = bool(down) and any(int(x) in down for x in self.net.flows[fid].path)
            dead_by_req[i] = dead_by_req.get(i, False) or dead
        for i, dead in dead_by_req.items():
            s = self.states[i]
            if dead and s.stall_since is None:
                s.stall_since = t
            elif not dead and s.stall_since is not None:
                s.stalled += t - s.stall_since
                s.stall_since = None

    def _reroute(self, t: float) -> None:
        """The routing learns the current down links: every flow whose path changes moves."""
        new = frozenset(self._down)
        if new == self._routing_down:
            return
        self._routing_down = new
        self.reroutes += 1
        moves = {}
        for fid, (src, dst, key) in self._flow_ends.items():
            path = self._route(src, dst, key, new)
            if not np.array_equal(path, self.net.flows[fid].path):
                moves[fid] = path
        if moves:
            self.net.set_paths(moves)
        self._mark_stalls(t)

    def _apply(self, a: Action) -> None:
        if a.kind == "flow_start":
            if a.src == a.dst:
                return
            key = zlib.crc32(a.flow_id.encode())
            path = self._route(a.src, a.dst, key, self._routing_down)
            cap = np.inf if a.rate_gbit_s is None else a.rate_gbit_s * GBIT
            fid = self._bg_flows[a.flow_id] = self.net.add(path, np.inf, cap=cap, tag=a.flow_id)
            self._flow_ends[fid] = (a.src, a.dst, key)
        elif a.kind == "flow_stop":
            fid = self._bg_flows.pop(a.flow_id, None)
            if fid is not None:
                self.net.remove(fid)
                self._flow_ends.pop(fid, None)
        elif a.kind == "link_capacity":
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

    def _record(self, s: _ReqState) -> RequestRecord:
        tree = self.tree
        p_gpu = int(self.cluster.prefill_ids[s.p])
        d_gpu = int(self.cluster.decode_ids[s.d])
        out = s.req.output_tokens
        step = s.first_token - s.joined
        tbt = (s.finish - s.first_token) / (out - 1) if out > 1 else step
        return RequestRecord(
            policy=self.policy.name, req_id=s.req.req_id, arrival_s=s.req.arrival_s,
            input_tokens=s.req.input_tokens, output_tokens=out,
            prefill=tree.gpu_name(p_gpu), decode=tree.gpu_name(d_gpu), tier=int(self.cluster.decode_tiers(s.p)[s.d]),
            prefill_cached_tokens=s.prefill_cached, decode_cached_tokens=s.decode_cached,
            kv_bytes=int(s.nbytes), queue_s=s.prefill_start - s.req.arrival_s,
            prefill_s=s.prefill_end - s.prefill_start, transfer_s=s.kv_arrived - s.prefill_end,
            decode_wait_s=s.joined - s.kv_arrived, first_token_s=s.first_token,
            ttft_s=s.first_token - s.req.arrival_s, tbt_mean_ms=tbt * 1e3, decision_us=s.decision_us,
            stalled_s=s.stalled,
        )
