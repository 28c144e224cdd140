"""The dispatcher both backends share: decisions, the cluster mirror and the records.

``simulate`` (:class:`scheduler.sim.simulator.Simulator`, a fluid network on a virtual clock) and
``emulate`` (:class:`scheduler.emulate.replay.RealtimeReplay`, host agents on a real fabric, a
wall clock) differ only in how a decided request is computed and moved and in where time comes
from. Both hold one :class:`Dispatcher` and implement :class:`Execution`::

    dispatcher.arrive(i, t, execution)        # policy choice + bookkeeping, then execution.start
    ...                                       # the backend computes and moves the request
    dispatcher.kv_arrived(state, i, t)        # the KV bytes are at the decode instance
    dispatcher.joined(state, t, first_token)  # it joined the decode batch
    dispatcher.finished(state, t)             # decode slot released, prompt cached on it
    dispatcher.records()                      # one RequestRecord per request
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

from scheduler.decision.context import DecisionContext
from scheduler.decision.oracle import GroundTruth, NetworkOracle, SnapshotSource, make_oracle
from scheduler.decision.oracle_error import PriceCheck
from scheduler.decision.ranking import kendall_tau_b, within_groups
from scheduler.model.cluster import Cluster
from scheduler.model.config import ConfigError, ExperimentConfig
from scheduler.model.records import RequestRecord
from scheduler.model.trace import Request
from scheduler.policies.base import Policy
from topology.model import FatTree


@dataclass
class RequestState:
    """One request through a run: the decision, the mirror's predictions, the measured times."""

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
    predicted_s: float = math.nan  # the oracle's price of this transfer at decision time
    failed: str | None = None  # why the request never finished (an instance lost mid-run), else None


class Execution(Protocol):
    """What a backend does with a decided request."""

    def start(self, state: RequestState, index: int) -> None:
        """Compute the decided request ``index`` and move its KV bytes; report the times back
        through the dispatcher (``kv_arrived``, ``joined``, ``finished``)."""


def oracle_kind(cfg: ExperimentConfig, policy: Policy) -> str | None:
    """The oracle kind a run gives ``policy``: None when it needs none, else its own
    (``netkv:static``), else the experiment's ``oracle.kind``."""
    if not policy.needs_oracle:
        return None
    return policy.oracle_kind or cfg.oracle.kind


def build_oracles(cfg: ExperimentConfig, tree: FatTree, kind: str | None, source: SnapshotSource | None,
                  truth: GroundTruth | None,
                  fresh_source: SnapshotSource | None = None) -> tuple[NetworkOracle | None, NetworkOracle | None]:
    """(the oracle of ``kind``, a fresh-telemetry shadow oracle), both None when ``kind`` is None
    (:func:`oracle_kind`). The shadow (staleness studies) reads ``fresh_source`` with no added age.
    ``oracle.persistence_s`` of 0 is the oracle's None (off); only the predictive kind reads it."""
    if kind is None:
        return None, None
    c = cfg.oracle
    oracle = make_oracle(kind, tree, source, c.staleness_s, c.min_available_fraction,
                         cfg.timing.transfer_setup_s, truth=truth, fallback_age_s=c.fallback_polls * c.poll_interval_s,
                         saturated_link_flows=c.saturated_link_flows, persistence_s=c.persistence_s or None)
    shadow = None
    if fresh_source is not None:
        shadow = make_oracle("telemetry", tree, fresh_source, 0.0, c.min_available_fraction,
                             cfg.timing.transfer_setup_s, saturated_link_flows=c.saturated_link_flows)
    return oracle, shadow


class Dispatcher:
    """Decides every request of a run and keeps the orchestrator's mirror of the cluster:
    predicted prefill queues, decode assignments, both prefix caches, and each request's state."""

    def __init__(self, cfg: ExperimentConfig, tree: FatTree, requests: list[Request], policy: Policy,
                 oracle: NetworkOracle | None = None, shadow: NetworkOracle | None = None) -> None:
        self.cfg = cfg
        self.tree = tree
        self.cluster = Cluster(cfg, tree)
        self.policy = policy
        self.oracle = oracle
        self.shadow = shadow
        self.check_fits(requests)
        self.states = [RequestState(r) for r in requests]
        self.remaining = len(self.states)
        self.decisions = 0
        self.output_tokens_decided = 0
        """Output tokens of every request decided so far (their running mean is the decision
        context's ``mean_output_tokens``)."""
        self.layer_wise = cfg.timing.kv_streaming == "layer-wise"
        self.agreement: dict[str, float] = {"decisions": 0, "same_tier": 0, "same_instance": 0,
                          "tau_sum": 0.0, "tau_n": 0, "tau_within_sum": 0.0, "tau_within_n": 0}
        """With a shadow oracle: decisions, how many picked the fresh oracle's tier / instance, and
        Kendall's tau-b of the two oracles' cost orderings of the candidates (across them all, and
        within each tier), summed over the decisions that have one (:mod:`scheduler.decision.ranking`)."""

    def check_fits(self, requests: list[Request]) -> None:
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

    # ------------------------------------------------------------------ decisions
    def arrive(self, i: int, t: float, execution: Execution) -> RequestState:
        """Request ``i`` arrives at ``t``: decide it, then hand it to ``execution``."""
        s = self.states[i]
        self.decide(s, i, t)
        execution.start(s, i)
        return s

    def decide(self, s: RequestState, i: int, t: float) -> None:
        """The policy's choice for request ``i`` arriving at ``t``, and the mirror's bookkeeping
        of it: cached prefixes, bytes to move, the prefill FIFO's predicted window
        (``prefill_busy_until``), the decode instance's assigned tokens and, for the inflight
        oracle, the transfer it commits to."""
        cl = self.cluster
        self.decisions += 1
        self.output_tokens_decided += s.req.output_tokens
        mean_output = self.output_tokens_decided / self.decisions
        t0 = time.perf_counter_ns()
        ctx = DecisionContext(cl, s.req, t, self.oracle, self.decisions, mean_output)
        dec = self.policy.choose(ctx)
        s.decision_us = (time.perf_counter_ns() - t0) / 1e3
        s.p, s.d = dec.prefill, dec.decode
        if self.shadow is not None:  # the same decision (same turn) on fresh telemetry
            fresh_ctx = DecisionContext(cl, s.req, t, self.shadow, self.decisions, mean_output)
            fresh = self.policy.choose(fresh_ctx).decode
            src = int(cl.prefill_ids[s.p])
            a = self.agreement
            a["decisions"] += 1
            a["same_instance"] += fresh == s.d
            tier = self.tree.tier
            a["same_tier"] += tier(src, int(cl.decode_ids[fresh])) == tier(src, int(cl.decode_ids[s.d]))
            stale_cost, fresh_cost = ctx.raw_transfer_cost_s(s.p), fresh_ctx.raw_transfer_cost_s(s.p)
            tau = kendall_tau_b(stale_cost, fresh_cost)
            if tau is not None:
                a["tau_sum"] += tau
                a["tau_n"] += 1
            for tau in within_groups(stale_cost, fresh_cost, self.tree.tiers(src, cl.decode_ids)):
                a["tau_within_sum"] += tau
                a["tau_within_n"] += 1
        s.prefill_cached = ctx.prefill_cached_at(s.p)
        s.decode_cached = ctx.decode_cached_at(s.d)
        s.nbytes = float(cl.timing.kv_bytes(s.req.input_tokens - s.decode_cached))
        s.prefill_start, s.prefill_end = cl.timing.prefill_fifo(
            t, float(cl.prefill_busy_until[s.p]), s.req.input_tokens, s.prefill_cached)
        cl.prefill_busy_until[s.p] = s.prefill_end
        cl.decode_assigned_tokens[s.d] += s.req.input_tokens + s.req.output_tokens
        if self.oracle is not None and s.nbytes > 0:
            s.predicted_s = float(ctx.raw_transfer_cost_s(s.p)[s.d])  # the policy priced it already
        if self.oracle is not None and self.oracle.tracks_commitments and s.nbytes > 0:
            start = self.transfer_start(s)
            took = s.predicted_s
            self.oracle.commit(int(cl.prefill_ids[s.p]), int(cl.decode_ids[s.d]), start,
                               max(start + took, s.prefill_end), s.req.req_id, s.nbytes, i, tp=cl.tp)

    def transfer_start(self, s: RequestState) -> float:
        """When the request's KV starts moving: at the prefill's end, or once its first layer is
        computed when streaming layer by layer."""
        if self.layer_wise:
            return s.prefill_start + (s.prefill_end - s.prefill_start) / self.cfg.model.layers
        return s.prefill_end

    # ------------------------------------------------------------------ what the backend reports
    def prefilled(self, s: RequestState) -> None:
        """The prefill instance now caches the request's prompt."""
        self.cluster.prefill_cache.insert(s.p, s.req.hash_ids)

    def kv_arrived(self, s: RequestState, i: int, t: float) -> None:
        s.kv_arrived = t
        if self.oracle is not None and self.oracle.tracks_commitments:
            self.oracle.done(i, t)  # the inflight oracle's ledger (committed in decide)

    @staticmethod
    def joined(s: RequestState, t: float, first_token: float) -> None:
        s.joined = t
        s.first_token = first_token

    def finished(self, s: RequestState, t: float) -> None:
        """Request done at ``t``: its decode slot is released and its prompt becomes a cached
        prefix of its decode instance."""
        s.finish = t
        self.cluster.decode_assigned_tokens[s.d] -= s.req.input_tokens + s.req.output_tokens
        self.cluster.decode_cache.insert(s.d, s.req.hash_ids)
        self.remaining -= 1

    def failed(self, s: RequestState, reason: str) -> None:
        """Request lost with an instance (the emulator's agent faults): it counts as done, its
        decode slot is released, and it has no record; :meth:`failures` lists it."""
        if s.failed is not None or s.finish > 0:
            return
        s.failed = reason
        if s.d >= 0:
            self.cluster.decode_assigned_tokens[s.d] -= s.req.input_tokens + s.req.output_tokens
        self.remaining -= 1

    def failures(self) -> list[dict]:
        """Every failed request: id, instances and reason, in arrival order."""
        name = self.tree.gpu_name
        return [{"req_id": s.req.req_id, "prefill": name(int(self.cluster.prefill_ids[s.p])) if s.p >= 0 else None,
                 "decode": name(int(self.cluster.decode_ids[s.d])) if s.d >= 0 else None, "reason": s.failed}
                for s in self.states if s.failed is not None]

    # ------------------------------------------------------------------ records
    def who(self, s: RequestState) -> str:
        """``request R (p-gpu -> d-gpu)`` for messages."""
        name = self.tree.gpu_name
        return (f"request {s.req.req_id} ({name(int(self.cluster.prefill_ids[s.p]))} -> "
                f"{name(int(self.cluster.decode_ids[s.d]))})")

    def oracle_errors(self) -> list[PriceCheck]:
        """The oracle's price of every finished transfer it priced, against the time the transfer
        took from when it could start (:mod:`scheduler.decision.oracle_error`)."""
        tiers = self.cluster.decode_tiers
        return [PriceCheck(self.policy.name, s.req.req_id, int(tiers(s.p)[s.d]), int(s.nbytes), s.predicted_s,
                            s.kv_arrived - self.transfer_start(s))
                for s in self.states if s.finish > 0 and not math.isnan(s.predicted_s)]

    def records(self) -> list[RequestRecord]:
        """One record per finished request (failed ones have none)."""
        return [self.record(s) for s in self.states if s.failed is None]

    def record(self, s: RequestState) -> RequestRecord:
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
