"""NetKV-joint: the (prefill, decode) pair minimising expected TTFT, exactly.

NetKV picks the prefill first (cache-load's) and the decode second; the pair is the real decision.
Score of a pair, lower is better (seconds)::

    score(p, d) = (transfer(p, d) + w x load(d)) + estimate(p)

``estimate(p)``: prefill queue + compute given p's prefix cache hit (``prefill_estimate_s``);
``transfer(p, d)``: the oracle's price of the bytes d lacks, the part that lands in TTFT
(``transfer_cost_s``); ``w x load(d)``: NetKV's decode admission term (``load_weight_s``, tuned on
NetKV's grid with the same rule). The pair is the argmin over P x D; prefills within
:data:`~scheduler.policies.cache_load.TIE_TOLERANCE_S` of the best rotate with the decision's turn
(as cache-load's prefill ties do), and the decode is the argmin of the chosen prefill's row.

Exact at less than |P| x |D| prices (branch and bound over the prefills). A lower bound of every
prefill's best row comes from the tiers: every oracle prices a route no cheaper per byte than the
fastest nominal route of its tier (telemetry, commitments and ground truth only take bandwidth
away; a tier fixes the link kinds a fat-tree route crosses, rerouted or hashed), and a transfer
costs at least its bytes x that (/ ranks striped; / layers streamed). With ``v_t(d) = w x load(d)
+ bytes(d) x fastest_t`` per tier t, a prefill's bound is ``estimate(p) + min(min v_0 over its
server's decodes, min v_1 over its rack's, min v_2 over its pod's, min v_3 over all)``: exactly
the bound's minimum over D, since ``v_t`` grows with t and the groups nest. Prefills are then
priced in increasing bound order (one oracle cost vector each, O(|D|), the oracle's cached cost
table under deterministic routing), stopping at the first bound above the best score found
(+ the tie tolerance): no pruned prefill can win or tie. They are priced in chunks of doubling
size (:data:`FIRST_CHUNK_PRICES` first), each chunk's cost tables stacked and priced in one numpy
operation; a chunk may price a prefill a one-by-one search would have pruned after a better
score earlier in the same chunk, which cannot change the pair (its score is at least its bound,
above the best + the tolerance) and at most doubles the prefills priced. Cost: O(|D| + |P| log
|P|) for the bounds, plus O(|D|) per prefill priced; the worst case (every bound below the best)
is |P| x |D|, as brute force."""
from __future__ import annotations

import numpy as np

from scheduler.decision.context import Decision, DecisionContext
from scheduler.model.cluster import Cluster
from scheduler.policies.base import register
from scheduler.policies.cache_load import TIE_TOLERANCE_S
from scheduler.policies.netkv import NetKV

ROUNDING_SLACK_S = 1e-9
"""Subtracted from every bound, so floating-point rounding cannot make a bound exceed the score
it bounds (the scores are seconds; a nanosecond is far below any real difference)."""

FIRST_CHUNK_PRICES = 256
"""Prices (prefills x decode candidates) in the first step of the search, each later step twice
as many, every step at least one prefill. Pricing several prefills at once pays numpy's per-call
cost once for them, at the price of a few prefills the bound would have pruned had they been
priced one by one (never fewer; the pair is the same): at |D| = 16, 16 prefills, then 32 (a
by-rack cluster's idle prefills tie and are all priced); at |D| = 2,048, one prefill per step
until the eighth doubling, where a prefill's row costs more than a step's fixed calls."""


def tier_fastest(cluster: Cluster) -> np.ndarray:
    """Seconds per byte of the fastest nominal route of each tier (0..3) among the cluster's
    (prefill, decode) pairs, every rank's (+inf for a tier without pairs); static for the run,
    memoised on the cluster."""
    key = ("joint_tier_fastest",)
    hit = cluster.memo.get(key)
    if hit is None:
        tree = cluster.tree
        inv = 1.0 / tree.capacity
        fastest = np.full(4, np.inf)
        for p in range(cluster.prefill_ids.size):
            tiers = cluster.decode_tiers(p)
            for r in range(cluster.tp):
                src = int(cluster.prefill_ids[p]) + r
                per_byte = inv[tree.paths(src, cluster.decode_rank_ids[r])].max(axis=1)
                np.minimum.at(fastest, tiers, per_byte)
        hit = cluster.memo[key] = fastest
    return hit


def _groups(cluster: Cluster) -> tuple[list[np.ndarray], list[np.ndarray | None], list[np.ndarray]]:
    """Per level (server, rack, pod): the decode instances' group starts (decode ids ascend, so a
    group is contiguous), and each prefill instance's group index at that level (-1: no decode
    there, pointing at an appended +inf; None when no prefill has a decode at that level, which
    then bounds nothing); memoised on the cluster."""
    key = ("joint_groups",)
    hit = cluster.memo.get(key)
    if hit is None:
        tree = cluster.tree
        starts, of_prefill, labels = [], [], []
        for size in (tree.gps, tree.gpt, tree.gpp):
            group = cluster.decode_ids // size
            first = np.flatnonzero(np.diff(group, prepend=-1))
            ids = group[first]
            pos = np.searchsorted(ids, cluster.prefill_ids // size)
            pos = np.minimum(pos, ids.size - 1)
            found = ids[pos] == cluster.prefill_ids // size
            starts.append(first)
            of_prefill.append(np.where(found, pos, ids.size) if found.any() else None)
            labels.append(ids)
        hit = cluster.memo[key] = (starts, of_prefill, labels)  # type: ignore[assignment]
    return hit  # type: ignore[return-value]


def _bound_terms(cluster: Cluster) -> tuple[float | None, list[tuple[float, np.ndarray, np.ndarray]]]:
    """The bound's per-tier seconds per byte (tier 3's, None when no pair is that far; then, per
    level a prefill shares with some decode, its seconds per byte, decode group starts and
    prefill group indices), scaled for striping and layer-wise streaming; memoised on the cluster."""
    key = ("joint_bound_terms",)
    hit = cluster.memo.get(key)
    if hit is None:
        fastest = tier_fastest(cluster) / cluster.tp
        if cluster.layer_wise:  # at least the last layer's share of the transfer lands in TTFT
            fastest = fastest / cluster.cfg.model.layers
        starts, of_prefill, _ = _groups(cluster)
        levels = [(fastest.item(t), first, where) for t, (first, where) in enumerate(zip(starts, of_prefill))
                  if where is not None and np.isfinite(fastest[t])]
        hit = cluster.memo[key] = (fastest.item(3) if np.isfinite(fastest[3]) else None,  # type: ignore[assignment]
                                   levels)
    return hit  # type: ignore[return-value]


def prefill_bounds(ctx: DecisionContext, load: np.ndarray) -> np.ndarray:
    """A lower bound of every prefill's best score (module docstring), O(|D| + |P|)."""
    farthest, levels = _bound_terms(ctx.cluster)
    nbytes = ctx.decode_bytes
    best = np.full(ctx.n_prefill, (load + nbytes * farthest).min() if farthest is not None else np.inf)
    for per_byte, first, where in levels:
        mins = np.empty(first.size + 1)
        mins[-1] = np.inf  # the prefills without a decode at this level
        np.minimum.reduceat(load + nbytes * per_byte, first, out=mins[:-1])
        np.minimum(best, mins[where], out=best)
    return ctx.prefill_estimate_s + best - ROUNDING_SLACK_S


@register
class NetKVJoint(NetKV):
    """NetKV's weight, grid and oracle; the pair chosen jointly."""

    name = "netkv-joint"
    description = "argmin over (prefill, decode) of prefill estimate + oracle transfer cost + load term (exact)"

    def choose(self, ctx: DecisionContext) -> Decision:
        load = ctx.weighted_load(self.weight)
        bound = prefill_bounds(ctx, load)
        order = np.argsort(bound, kind="stable")
        bounds = bound[order]
        est = ctx.prefill_estimate_s
        best = np.inf
        priced: list[int] = []  # prefills priced, in bound order
        mins: list[float] = []  # each one's best score
        picks: list[int] = []  # and the decode giving it
        i, budget, n = 0, FIRST_CHUNK_PRICES, len(order)
        while i < n and bounds.item(i) <= best + TIE_TOLERANCE_S:
            # the next prefills in bound order whose bound is within reach of the best so far,
            # priced together (those a better score within the chunk would have pruned cannot tie)
            reach = int(bounds.searchsorted(best + TIE_TOLERANCE_S, side="right"))
            j = min(reach, i + max(1, budget // ctx.n_decode))
            chunk = order[i:j]
            ps = chunk.tolist()
            scores = (ctx.transfer_costs_s(ps) + load) + est[chunk][:, None]
            row_min = scores.min(axis=1).tolist()  # each row's value at its argmin, exactly
            priced += ps
            mins += row_min
            picks += scores.argmin(axis=1).tolist()
            best = min(best, min(row_min))
            i, budget = j, 2 * budget
        tied = sorted(p for p, score in zip(priced, mins) if score <= best + TIE_TOLERANCE_S)
        p = tied[ctx.turn % len(tied)]
        return Decision(p, picks[priced.index(p)])
