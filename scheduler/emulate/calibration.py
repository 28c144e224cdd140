"""Calibrate the emulated fabric against the simulator, one (src, dst) pair per tier.

For each tier (one GPU pair each: :func:`topology.fabric.tier_samples`, or the pairs given),
sequentially on the idle fabric, through the host agents already connected to ``control``:

(a) **goodput**: ``goodput_repeats`` (default 3) transfers of ``configured bottleneck x
    goodput_seconds`` bytes, the median counting (one transfer that meets a CPU hiccup of the
    shared machine - the previous fabric's teardown, a controller poll burst - does not decide
    the tier's figure; every sample is kept in ``goodput_samples_mbit_s``); achieved =
    bytes x 8 / (receiver ``t_end - t_start``), compared with the configured emulated bottleneck
    (``real capacity x scale / time_scale`` along ``tree.path``); ok when >= 90%.
(b) **reference KV transfer**: ``reference_tokens x kv_bytes_per_token x scale`` bytes; measured
    = (receiver ``t_end`` - sender ``t_connect``) / ``time_scale`` (virtual seconds), compared
    with ``StaticTierOracle(tree, setup_s)`` for the real bytes on an idle fabric; ok within 15%.
    The transfer runs ``reference_repeats`` times (default 5), or more on a fast tier: as many as
    fit :data:`REFERENCE_BUDGET_S` of predicted transfer time, at most
    :data:`REFERENCE_MAX_REPEATS`; the median counts (why so many on NVLink:
    docs/calibration.md#calibration-references).
(c) **small reference**: the same for ``small_tokens`` (default :data:`SMALL_REFERENCE_TOKENS`),
    so that the two references fit ``measured = intercept_s + slope x predicted`` per tier
    (:func:`affine_fit`, ``fit`` in the tier's entry): the emulator's fixed cost per transfer
    (frame store-and-forward at the scaled rates, agent stamps) and its goodput. The oracle-error
    summary reads it (:func:`scheduler.decision.oracle_error.summarize`); decisions do not.

Transfer and request ids start at 10**12, so they never collide with the orchestrator's.
"""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from hosts.control import ControlServer
from hosts.messages import Error, Received, Send, Sent
from scheduler.decision.oracle import OracleQuery, StaticTierOracle
from topology.emulated import kind_rates_mbit
from topology.fabric import tier_samples
from topology.model import FatTree

CALIBRATION_ID_BASE = 10**12
GOODPUT_MIN_RATIO = 0.9
TIME_TOLERANCE = 0.15
REFERENCE_BUDGET_S = 0.1
"""Predicted transfer time the reference samples of one tier may add up to (emulated seconds); a
2.4 ms NVLink reference gets enough samples for a steady median (docs/calibration.md#calibration-references)."""
REFERENCE_MAX_REPEATS = 41
"""Most reference transfers per tier (an odd count, so the median is one sample)."""
SMALL_REFERENCE_TOKENS = 512
"""Tokens of the small reference transfer: one prefix-cache block, the smallest KV a request can
miss (one or two frames at the default scale), so the fit's intercept is the fixed cost."""
_IDS = itertools.count(CALIBRATION_ID_BASE)


class CalibrationError(RuntimeError):
    """A calibration transfer failed (agent error or timeout); the message names the pair."""


# --------------------------------------------------------------------------- pure parts
def emulated_rates_mbit(tree: FatTree, scale: float, time_scale: float,
                        nvlink_cap_mbit: float | None = None) -> dict[str, float]:
    """Configured emulated rate per link kind (:func:`topology.emulated.kind_rates_mbit`: real
    Gbit/s x 1000 x scale / time_scale), the rates the fabric shapes at ``scale / time_scale``."""
    if not scale > 0 or not time_scale > 0:
        raise ValueError(f"scale and time_scale must be > 0, got {scale}, {time_scale}")
    return kind_rates_mbit(tree, scale, time_scale, nvlink_cap_mbit)


def bottleneck_mbit(tree: FatTree, rates: dict[str, float], src: int, dst: int) -> float:
    return min(rates[tree.link_kind(i)] for i in tree.path(src, dst))


def _rate_mismatch(expected: dict[str, float], fabric: dict[str, float] | None) -> str | None:
    """Warn when the fabric was not built with ``scale / time_scale`` (its HTB rates differ)."""
    if not fabric:
        return None
    off = {k: (fabric[k], v) for k, v in expected.items() if k in fabric and abs(fabric[k] / v - 1) > 0.01}
    if not off:
        return None
    return ("fabric link rates differ from scale / time_scale: " + ", ".join(
        f"{k} {f:g} Mbit/s shaped vs {e:g} expected" for k, (f, e) in sorted(off.items())))


def goodput_bytes(mbit_s: float, seconds: float) -> int:
    return int(mbit_s * 1e6 / 8 * seconds)


def reference_bytes(tokens: int, kv_bytes_per_token: int, scale: float) -> tuple[int, int]:
    """(real, emulated) bytes of the reference KV transfer (emulated at least 1 byte)."""
    real = int(tokens) * int(kv_bytes_per_token)
    return real, max(1, round(real * scale))


def predicted_seconds(tree: FatTree, setup_s: float, src: int, dst: int, nbytes_real: int) -> float:
    """The simulator's idle-fabric cost of moving ``nbytes_real`` real bytes src -> dst."""
    query = OracleQuery(src=src, dsts=np.array([dst]), nbytes=np.array([float(nbytes_real)]), now=0.0)
    return float(StaticTierOracle(tree, setup_s).cost(query)[0])


def reference_count(repeats: int, predicted_wall_s: float) -> int:
    """Reference transfers for a tier: ``repeats``, or as many as fit :data:`REFERENCE_BUDGET_S`
    of ``predicted_wall_s`` each, at most :data:`REFERENCE_MAX_REPEATS` (and at least one)."""
    fit = int(REFERENCE_BUDGET_S // predicted_wall_s) if predicted_wall_s > 0 else REFERENCE_MAX_REPEATS
    return max(1, repeats, min(REFERENCE_MAX_REPEATS, fit | 1))


def affine_fit(small: tuple[float, float], ref: tuple[float, float]) -> dict[str, float] | None:
    """``measured = intercept_s + slope x predicted`` through two (predicted, measured) points,
    None when they cannot define one (equal predictions, or a slope <= 0)."""
    (p0, m0), (p1, m1) = small, ref
    if not p1 - p0 > 0 or not m1 - m0 > 0:
        return None
    slope = (m1 - m0) / (p1 - p0)
    return {"intercept_s": m0 - slope * p0, "slope": slope}


def calibration_fits(calibration: dict | None) -> dict[str, dict | None]:
    """Tier -> :func:`affine_fit` of a :func:`calibrate` report (what the oracle-error summary reads)."""
    return {t: c.get("fit") for t, c in (calibration or {}).get("tiers", {}).items()}


def within(ratio: float, tolerance: float = TIME_TOLERANCE) -> bool:
    return abs(ratio - 1.0) <= tolerance + 1e-9  # 0.85 and 1.15 count as inside


# --------------------------------------------------------------------------- transfers
def _transfer(control: ControlServer, tree: FatTree, fab: Any, src: int, dst: int, port: int,
              nbytes: int, timeout_s: float) -> tuple[Sent, Received]:
    """One agent transfer src -> dst; returns the (sent, received) reports."""
    tid = next(_IDS)
    src_name = tree.gpu_name(src)
    control.send(src_name, Send(tid, tid, fab.peer_ip(src, dst), port, int(nbytes), dst))
    evs = control.wait_transfers([tid], timeout_s)[tid]
    if "error" in evs:
        error = evs["error"]
        assert isinstance(error, Error)  # the reports are keyed by their KIND
        raise CalibrationError(f"calibration transfer {src_name} -> {tree.gpu_name(dst)} "
                               f"({nbytes} bytes) failed: {error.reason}")
    sent, received = evs["sent"], evs["received"]
    assert isinstance(sent, Sent) and isinstance(received, Received)  # the reports are keyed by their KIND
    return sent, received


def _reference_times(control: ControlServer, tree: FatTree, fab: Any, src: int, dst: int, port: int,
                     nbytes: int, timeout_s: float, time_scale: float, count: int) -> list[float]:
    """``count`` transfers of ``nbytes``: (receiver end - sender connect) / time_scale each."""
    out = []
    for _ in range(count):
        sent, recv = _transfer(control, tree, fab, src, dst, port, nbytes, timeout_s)
        assert sent.t_connect is not None  # a sender always stamps its connect
        out.append((recv.t_end - sent.t_connect) / time_scale)
    return out


def calibrate(fab: Any, tree: FatTree, control: ControlServer, agent_port: int, scale: float,
              time_scale: float, kv_bytes_per_token: int, setup_s: float,
              reference_tokens: int = 8192, small_tokens: int = SMALL_REFERENCE_TOKENS,
              goodput_seconds: float = 1.5, goodput_repeats: int = 3,
              timeout_s: float = 60.0, reference_repeats: int = 5,
              pairs: dict[int, tuple[int, int]] | None = None) -> dict:
    """Goodput and reference-transfer time per tier on the idle fabric (see the module doc), for
    the (src, dst) GPU pair of each tier in ``pairs`` (default :func:`topology.fabric.tier_samples`:
    every tier; ``emulate`` passes the prefill -> decode pairs of the tiers its KV transfers take).
    Both GPUs of every pair need an agent connected to ``control``."""
    rates = emulated_rates_mbit(tree, scale, time_scale, getattr(fab, "nvlink_cap_mbit", None))
    warning = _rate_mismatch(rates, getattr(getattr(fab, "topo", None), "rates_mbit", None))
    real, emulated = reference_bytes(reference_tokens, kv_bytes_per_token, scale)
    tiers: dict[str, dict] = {}
    for tier, (src, dst) in (tier_samples(tree) if pairs is None else pairs).items():
        configured = bottleneck_mbit(tree, rates, src, dst)
        nbytes = goodput_bytes(configured, goodput_seconds)
        goodputs = []
        for _ in range(max(1, goodput_repeats)):
            _, recv = _transfer(control, tree, fab, src, dst, agent_port, nbytes, timeout_s)
            wire_s = recv.t_end - recv.t_start
            goodputs.append(nbytes * 8 / wire_s / 1e6 if wire_s > 0 else float("inf"))
        achieved = float(np.median(goodputs))
        predicted = predicted_seconds(tree, setup_s, src, dst, real)
        samples = _reference_times(control, tree, fab, src, dst, agent_port, emulated, timeout_s, time_scale,
                                   reference_count(reference_repeats, predicted * time_scale))
        measured = float(np.median(samples))
        small_real, small_emulated = reference_bytes(small_tokens, kv_bytes_per_token, scale)
        small_predicted = predicted_seconds(tree, setup_s, src, dst, small_real)
        small_samples = _reference_times(control, tree, fab, src, dst, agent_port, small_emulated, timeout_s,
                                         time_scale, reference_count(reference_repeats, small_predicted * time_scale))
        small_measured = float(np.median(small_samples))
        ratio = measured / predicted if predicted > 0 else float("inf")
        tiers[str(tier)] = {
            "src": tree.gpu_name(src), "dst": tree.gpu_name(dst),
            "path": [tree.link_name(i) for i in tree.path(src, dst)],
            "configured_mbit_s": round(configured, 4),
            "achieved_mbit_s": round(achieved, 4),
            "goodput_samples_mbit_s": [round(g, 4) for g in goodputs],
            "goodput_ratio": round(achieved / configured, 4),
            "goodput_ok": achieved / configured >= GOODPUT_MIN_RATIO,
            "reference_bytes_real": real,
            "reference_bytes_emulated": emulated,
            "measured_s": measured,
            "measured_samples_s": samples,
            "predicted_s": predicted,
            "time_ratio": round(ratio, 4),
            "time_ok": within(ratio),
            "small_reference_bytes_emulated": small_emulated,
            "small_measured_s": small_measured,
            "small_measured_samples_s": small_samples,
            "small_predicted_s": small_predicted,
            "fit": affine_fit((small_predicted, small_measured), (predicted, measured)),
        }
    return {
        "scale": scale,
        "time_scale": time_scale,
        "tiers": tiers,
        "all_ok": all(t["goodput_ok"] and t["time_ok"] for t in tiers.values()),
        "warning": warning,
    }


def calibration_misses(calibration: dict) -> list[str]:
    """One line per tier outside its targets (goodput below :data:`GOODPUT_MIN_RATIO`, reference
    time outside +-:data:`TIME_TOLERANCE`), for the run's output; empty when every tier is in."""
    out = []
    for tier, t in sorted((calibration or {}).get("tiers", {}).items()):
        why = []
        if not t["goodput_ok"]:
            why.append(f"goodput {100 * t['goodput_ratio']:.0f}% < {100 * GOODPUT_MIN_RATIO:.0f}%")
        if not t["time_ok"]:
            why.append(f"idle KV time x{t['time_ratio']:.2f}, "
                       f"outside x{1 - TIME_TOLERANCE:.2f}-{1 + TIME_TOLERANCE:.2f}")
        if why:
            out.append(f"tier {tier} ({t['src']} -> {t['dst']}): " + ", ".join(why))
    return out
