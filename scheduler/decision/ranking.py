"""How alike two cost orderings of the same candidates are: Kendall's tau-b (pure numpy).

The staleness study compares, at every decision, the stale oracle's cost of each decode candidate
with a fresh oracle's: tau-b across all candidates (do they rank the fabric alike?) and within each
tier (the rankings a tier-aware router cannot get from the topology). +inf (unreachable) ranks
after every finite cost and ties with another +inf.
"""
from __future__ import annotations

import numpy as np


def _signs(x: np.ndarray) -> np.ndarray:
    """sign(x_i - x_j) for i < j, with +inf == +inf a tie."""
    with np.errstate(invalid="ignore"):
        d = np.subtract.outer(x, x)
    s = np.sign(d)
    s[np.isnan(s)] = 0.0
    return s[np.triu_indices(x.size, k=1)]


def kendall_tau_b(a: np.ndarray, b: np.ndarray) -> float | None:
    """Kendall's tau-b of ``a`` and ``b`` (same length), in -1..1; None when either is constant
    (or fewer than two values): an ordering of nothing says nothing."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"kendall_tau_b needs two vectors of one length, got {a.shape} and {b.shape}")
    if a.size < 2:
        return None
    sa, sb = _signs(a), _signs(b)
    na, nb = np.count_nonzero(sa), np.count_nonzero(sb)
    if na == 0 or nb == 0:
        return None
    return float(np.dot(sa, sb) / np.sqrt(float(na) * float(nb)))


def within_groups(a: np.ndarray, b: np.ndarray, groups: np.ndarray) -> list[float]:
    """tau-b inside every group (e.g. tier) that has an ordering on both sides."""
    out = []
    for g in np.unique(groups):
        m = groups == g
        tau = kendall_tau_b(a[m], b[m])
        if tau is not None:
            out.append(tau)
    return out
