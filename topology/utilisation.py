"""Link utilisation from byte counters: the one formula the controller and the simulator share.

The controller's telemetry (:mod:`controller.telemetry`, from OpenFlow port counters) and the
simulator's (:class:`scheduler.sim.telemetry.SimTelemetry`, from its fluid links' byte counters)
both report a link's utilisation over a poll interval through :func:`utilisation`, so the
oracle reads the same number from either backend for the same traffic.
"""
from __future__ import annotations

import numpy as np


def utilisation(delta: np.ndarray | float, interval_s: float, capacity: np.ndarray | float) -> np.ndarray:
    """Fraction of capacity used: ``delta / (interval_s x capacity)`` clipped to [0, 1].

    ``delta`` is what crossed the link in the interval and ``capacity`` its rate, in matching
    units (bytes and bytes/s, or bits and bits/s). A link at capacity 0 (down) reads 1 if
    anything crossed it and 0 otherwise; non-finite values (a counter glitch) read 0. Arrays of
    links or single links (0-d arrays) alike."""
    delta = np.asarray(delta, dtype=float)
    cap = np.asarray(capacity, dtype=float)
    live = cap > 0
    util = delta / np.where(live, interval_s * cap, 1.0)
    if not live.all():
        util = np.where(live, util, np.where(delta > 0, 1.0, 0.0))
    if not np.isfinite(util).all():
        util = np.nan_to_num(util)
    return np.clip(util, 0.0, 1.0)
