"""Real rates to emulated ones: the one formula the fabric, calibration, emulability check and
scenario executor share (pure: no Mininet import).

A real rate of ``g`` Gbit/s runs on the emulated fabric at ``g x 1000 x scale / time_scale``
Mbit/s: ``scale`` shrinks rates and KV bytes alike, so transfer times stay real, and
``--time-scale K`` slows the link and the clocks K times (docs/DESIGN.md, "Emulated units").
"""
from __future__ import annotations

from topology.model import FatTree


def emulated_mbit(real_gbit_s: float, scale: float, time_scale: float = 1.0) -> float:
    """Emulated Mbit/s of a real rate of ``real_gbit_s`` Gbit/s."""
    return real_gbit_s * 1000.0 * scale / time_scale


def kind_rates_mbit(tree: FatTree, scale: float, time_scale: float = 1.0,
                    nvlink_cap_mbit: float | None = None) -> dict[str, float]:
    """Emulated Mbit/s per link kind ('nvlink', 'nic', 'tor_agg', 'agg_core'); NVLink capped at
    ``nvlink_cap_mbit / time_scale`` when a cap is given (the cap is in undilated Mbit/s)."""
    rates = {kind: emulated_mbit(gbit, scale, time_scale) for kind, gbit in tree.link_capacity_gbit_s.items()}
    if nvlink_cap_mbit is not None:
        rates["nvlink"] = min(rates["nvlink"], float(nvlink_cap_mbit) / time_scale)
    return rates
