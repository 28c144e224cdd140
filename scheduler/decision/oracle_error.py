"""How right was the oracle: its price of each KV transfer at decision time against the time the
transfer then took.

At every decision of an oracle-consuming policy the dispatcher keeps the oracle's cost of the
chosen transfer (:meth:`scheduler.decision.context.DecisionContext.raw_transfer_cost_s`, with the
telemetry's staleness in force); the backend reports when the bytes arrived. ``measured`` is from
the moment the transfer could start (the prefill's end, or its first layer when streaming layer by
layer) to its last byte: the fluid network's time in ``simulate``, the agents' stamps in
``emulate``, so both backends write the same ``oracle_error.csv`` and summary block (its figure:
:mod:`scheduler.results.oracle_error_plot`). The error
includes what the oracle cannot know at decision time: traffic that starts or stops before the
transfer does (the prefill runs in between), and queueing behind its own earlier transfers.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass, fields, replace

import numpy as np

CSV_NAME = "oracle_error.csv"


@dataclass(frozen=True)
class PriceCheck:
    """One transfer: the oracle's price at decision time and the time it took (seconds)."""

    policy: str
    req_id: int
    tier: int
    kv_bytes: int
    predicted_s: float
    measured_s: float

    @property
    def relative(self) -> float:
        """|predicted - measured| / measured (NaN for an instantaneous transfer)."""
        return abs(self.predicted_s - self.measured_s) / self.measured_s if self.measured_s > 0 else math.nan


def _stats(rows: Sequence[PriceCheck]) -> dict:
    rel = np.array([r.relative for r in rows], dtype=float)
    rel = rel[np.isfinite(rel)]
    signed = np.array([(r.predicted_s - r.measured_s) / r.measured_s for r in rows if r.measured_s > 0])
    if rel.size == 0:
        return {"transfers": len(rows), "median_rel_error": None, "p90_rel_error": None, "median_bias": None}
    return {"transfers": len(rows), "median_rel_error": float(np.median(rel)),
            "p90_rel_error": float(np.percentile(rel, 90)), "median_bias": float(np.median(signed))}


def calibrated(rows: Sequence[PriceCheck], fits: Mapping[str, dict | None]) -> list[PriceCheck]:
    """The rows of the tiers with a fit, their prices mapped through it (``intercept_s + slope x
    predicted``: :func:`scheduler.emulate.calibration.affine_fit`)."""
    out = []
    for r in rows:
        fit = fits.get(str(r.tier))
        if fit:
            out.append(replace(r, predicted_s=fit["intercept_s"] + fit["slope"] * r.predicted_s))
    return out


def summarize(rows: Sequence[PriceCheck], fits: Mapping[str, dict | None] | None = None) -> dict:
    """``summary.json``'s ``oracle_error`` of one policy: transfers, median and p90 of the relative
    error, the median signed error (``median_bias`` > 0: the oracle over-priced), overall and per
    tier (``by_tier``: one entry per tier that saw a transfer). With ``fits`` (the emulator's
    calibration, tier -> fit), ``calibrated`` holds the same for the prices mapped through the fit
    of their tier: how far the oracle is from the packets once the emulator's fixed per-transfer
    cost and goodput, measured before the replay, are accounted for."""
    out = _by_tier(rows)
    if fits:
        fitted = calibrated(rows, fits)
        if fitted:
            out["calibrated"] = {**_by_tier(fitted), "fits": {t: f for t, f in fits.items() if f},
                                 "source": "calibration.json (tiers' fit)"}
    out["file"] = CSV_NAME
    return out


def console_line(rows: Sequence[PriceCheck], fits: Mapping[str, dict | None] | None = None) -> str:
    """One line for the terminal: median relative error per tier over ``rows`` (every policy's),
    as priced and, where the tier has a calibration fit, through it."""
    raw, fitted = _by_tier(rows)["by_tier"], _by_tier(calibrated(rows, fits or {}))["by_tier"]

    def cell(t: str) -> str:
        s = raw[t]
        text = f"tier {t}: {100 * s['median_rel_error']:.0f}%" if s["median_rel_error"] is not None else f"tier {t}: -"
        c = fitted.get(t)
        if c and c["median_rel_error"] is not None:
            text += f" ({100 * c['median_rel_error']:.0f}% calibrated)"
        return text + f" of {s['transfers']}"
    return ("oracle error, median |predicted - measured| / measured per KV transfer (all policies): "
            + "; ".join(cell(t) for t in raw))


def _by_tier(rows: Sequence[PriceCheck]) -> dict:
    out = _stats(rows)
    out["by_tier"] = {str(t): _stats([r for r in rows if r.tier == t]) for t in sorted({r.tier for r in rows})}
    return out


def csv_bytes(rows_by_policy: Mapping[str, Sequence[PriceCheck]]) -> bytes:
    """``oracle_error.csv``: one row per transfer, policies in order."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([f.name for f in fields(PriceCheck)] + ["relative_error"])
    for rows in rows_by_policy.values():
        for r in rows:
            w.writerow([*astuple(r), f"{r.relative:.6g}"])
    return buf.getvalue().encode()
