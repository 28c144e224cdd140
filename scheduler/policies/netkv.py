"""NetKV: network-aware decode selection, an O(|D|) greedy over decode candidates.

Prefill exactly as cache-load. Decode: argmin over D of the oracle's cost (seconds) of moving the
bytes that candidate needs (its own cached prefix is not moved) from the chosen prefill instance,
plus ``load_weight_s`` x the candidate's load fraction (tuned on the same grid budget). The oracle
is a choice (``netkv:static``, ``netkv:inflight``, ``netkv:perfect``; default ``oracle.kind``), so
the same greedy isolates what each kind of network information buys.

``netkv-admit`` is the same greedy with a second decode term beside the load fraction: each
candidate's expected wait for decode admission, in seconds
(:attr:`~scheduler.decision.context.DecisionContext.decode_admission_wait_s`: the KV memory by
which its assigned requests and this one overflow it, drained at a full batch's turnover). It is
zero while the request fits, so a candidate's memory, not its load fraction, decides when a cheap
transfer stops paying; the load weight is tuned on NetKV's grid with the same rule. The wait is
priced only while some candidate admits the request at once: once every one would make it wait
(the pool past its memory), the wait is unavoidable, the linear drain estimate of a deep backlog
is no guide, and pricing it would override the network; the decision is then NetKV's."""
from __future__ import annotations

from scheduler.decision.context import Decision, DecisionContext
from scheduler.policies.base import Policy, register
from scheduler.policies.cache_load import best_prefill


@register
class NetKV(Policy):
    name = "netkv"
    description = "cache-load's prefill; decode = argmin(oracle transfer cost of missing KV + load term)"
    tuned_param = "load_weight_s"
    default_weight = 0.1
    grid = "netkv_weights_s"
    needs_oracle = True
    weight: float  # a tuned policy always has one (its default_weight)

    def choose(self, ctx: DecisionContext) -> Decision:
        p = best_prefill(ctx, ctx.turn)
        return Decision(p, int(self.decode_score(ctx, p).argmin()))

    def decode_score(self, ctx: DecisionContext, p: int):
        """Seconds per decode candidate from prefill instance ``p``: transfer price plus weighted load."""
        return ctx.transfer_cost_s(p) + ctx.weighted_load(self.weight)


@register
class NetKVAdmission(NetKV):
    name = "netkv-admit"
    description = "netkv + each decode candidate's expected admission wait (its KV memory overflow, s)"

    def decode_score(self, ctx: DecisionContext, p: int):
        score = super().decode_score(ctx, p)
        wait = ctx.decode_admission_wait_s
        if wait.min() == 0.0:  # some candidate admits it at once: the wait is avoidable, price it
            score = score + wait
        return score
