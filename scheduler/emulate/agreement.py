"""How the two backends agree on one window: NetKV's gains (:func:`agreement`), each tier's KV
transfer time (:func:`transfer_agreement`), and the same for the *same decisions*
(:func:`paired_agreement`).

``transfer_agreement`` compares each tier's mean transfer time on both backends, but the two
backends' transfers are not the same ones: a policy that reads live telemetry decides differently
when the fabric does, and one slower transfer moves later requests' queues and choices. In
:func:`paired_agreement` the simulator replays the emulated run's own decisions
(:class:`FixedDecisions`: each request on the prefill and decode instance the emulated replay
chose) under the same scenario, so every emulated transfer has a fluid twin: same bytes, same path,
the same background flows at about the same time (prefill compute and queues are modelled the same
way on both backends, so a transfer starts within the emulator's timing noise of its twin). What is
left in the ratio is the network: packets, queues and TCP against max-min fluid shares. The figures
per tier are the ratio of the mean times and the median of per-transfer ratios (robust to the few
retransmission timeouts).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from scheduler.decision.context import Decision, DecisionContext
from scheduler.model.records import RequestRecord
from scheduler.policies import TARGET
from scheduler.policies.base import Policy
from scheduler.results.metrics import compare
from scheduler.sim.simulator import Simulator
from scheduler.study.experiment import Experiment

NO_EFFECT_PCT = 0.5
"""Mean-TTFT changes this small (%) on both backends are no effect on either: the ``idle``
scenario's NetKV-vs-static changes read 0.0-0.1%, whose signs and ratio mean nothing."""


class FixedDecisions(Policy):
    """Each request on the (prefill, decode) instance pair named for it (GPU host names of the
    instances' leaders), as another run decided. Not registered: it replays, it does not choose."""

    name = "fixed-decisions"

    def __init__(self, decisions: Mapping[int, tuple[str, str]], label: str = "fixed-decisions") -> None:
        super().__init__(name=label)
        self.decisions = dict(decisions)
        self._index: tuple[dict[str, int], dict[str, int]] | None = None

    def choose(self, ctx: DecisionContext) -> Decision:
        if self._index is None:
            cl = ctx.cluster
            names = cl.tree.gpu_names
            self._index = ({names[int(g)]: i for i, g in enumerate(cl.prefill_ids)},
                           {names[int(g)]: i for i, g in enumerate(cl.decode_ids)})
        prefill, decode = self.decisions[ctx.request.req_id]
        try:
            return Decision(self._index[0][prefill], self._index[1][decode])
        except KeyError as exc:
            raise ValueError(f"request {ctx.request.req_id}: {exc.args[0]} is not an instance of this "
                             f"cluster's placement") from None


def _tier_stats(pairs: Sequence[tuple[int, float, float]]) -> dict[str, dict]:
    out = {}
    for tier in sorted({t for t, _, _ in pairs}):
        e = np.array([x for t, x, _ in pairs if t == tier])
        s = np.array([y for t, _, y in pairs if t == tier])
        out[str(tier)] = {"transfers": int(e.size), "emulate_ms": float(e.mean() * 1e3),
                          "simulate_ms": float(s.mean() * 1e3), "ratio": float(e.mean() / s.mean()),
                          "median_ratio": float(np.median(e / s)),
                          "p90_ratio": float(np.percentile(e / s, 90))}
    return out


def paired_agreement(exp: Experiment, records: Mapping[str, Sequence[RequestRecord]]) -> dict:
    """Per tier, over every replay in ``records`` (and per replay in ``by_policy``): the emulated
    transfers against the simulator's for the same decisions. Requests the emulated run did not
    complete are left out of both; so are transfers with nothing to move."""
    pairs_all: list[tuple[int, float, float]] = []
    by_policy = {}
    for label, recs in records.items():
        decided = {r.req_id: (r.prefill, r.decode) for r in recs}
        if not decided:
            continue
        requests = [r for r in exp.requests if r.req_id in decided]
        sim = Simulator(exp.cfg, requests, FixedDecisions(decided, label), exp.actions())
        twins = {r.req_id: r for r in sim.run()}
        pairs = [(r.tier, r.transfer_s, twins[r.req_id].transfer_s) for r in recs
                 if r.req_id in twins and r.kv_bytes > 0 and r.transfer_s > 0 and twins[r.req_id].transfer_s > 0]
        by_policy[label] = _tier_stats(pairs)
        pairs_all += pairs
    return {"by_tier": _tier_stats(pairs_all), "by_policy": by_policy,
            "method": "the simulator replays each emulated run's own decisions (scheduler/emulate/agreement.py)"}


def agreement(emu: dict, sim: dict, target: str = TARGET) -> dict:
    """NetKV's mean-TTFT change against each baseline on both backends: same sign, and the ratio
    of magnitudes (target: within a factor of 1.5). Changes within :data:`NO_EFFECT_PCT` on both
    backends are ``no_effect`` (both agree there is none; their signs and ratio are noise)."""
    out = {}
    ce, cs = compare(emu, target), compare(sim, target)
    for base in ce:
        e, s = ce[base]["ttft_mean_pct"], cs.get(base, {}).get("ttft_mean_pct", float("nan"))
        ratio = max(abs(e), abs(s)) / max(min(abs(e), abs(s)), 1e-9)
        none = bool(abs(e) <= NO_EFFECT_PCT and abs(s) <= NO_EFFECT_PCT)
        out[base] = {"emulate_pct": e, "simulate_pct": s, "no_effect": none,
                     "same_sign": none or bool(np.sign(e) == np.sign(s)),
                     "magnitude_ratio": None if none else ratio, "within_1_5x": none or bool(ratio <= 1.5)}
    return out


def _tier_means(policies: dict) -> tuple[np.ndarray, np.ndarray]:
    """(transfers, mean seconds) per tier over every policy, weighting each policy's tier mean by
    its transfer count."""
    n = max((len(row.get("tier_histogram") or []) for row in policies.values()), default=0)
    counts, total = np.zeros(n), np.zeros(n)
    for row in policies.values():
        for tier, (count, mean) in enumerate(zip(row.get("tier_histogram") or [],
                                                 row.get("transfer_mean_s_by_tier") or [])):
            if count and mean is not None:
                counts[tier] += count
                total[tier] += count * mean
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts, total / counts


def transfer_agreement(emu: dict, sim: dict) -> dict:
    """Mean KV transfer time per tier on both backends, over all policies (each policy's tier mean
    weighted by its transfers), and their ratio: where the emulated network is slower or faster
    than the fluid model during the run, not only on the idle fabric. The two backends' transfers
    are not paired (a policy reading live telemetry may pick other instances), so this is a
    per-tier indicator; tiers without transfers on either backend are left out."""
    ce, me = _tier_means(emu)
    cs, ms = _tier_means(sim)
    out = {}
    for tier in range(min(len(ce), len(cs))):
        if ce[tier] > 0 and cs[tier] > 0 and ms[tier] > 0:
            out[str(tier)] = {"emulate_ms": float(me[tier] * 1e3), "simulate_ms": float(ms[tier] * 1e3),
                              "ratio": float(me[tier] / ms[tier]),
                              "transfers_emulate": int(ce[tier]), "transfers_simulate": int(cs[tier])}
    return out

