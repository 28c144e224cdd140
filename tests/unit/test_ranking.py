"""Kendall's tau-b of cost orderings (the staleness study's ranking agreement)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from scheduler.decision.ranking import kendall_tau_b, within_groups


def _reference(a, b) -> float:
    """tau-b by its definition, pair by pair."""
    conc = disc = ta = tb = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        da = 0 if a[i] == a[j] else (1 if a[i] > a[j] else -1)
        db = 0 if b[i] == b[j] else (1 if b[i] > b[j] else -1)
        ta += da == 0
        tb += db == 0
        conc += da * db > 0
        disc += da * db < 0
    n0 = len(a) * (len(a) - 1) / 2
    return (conc - disc) / np.sqrt((n0 - ta) * (n0 - tb))


def test_extremes_ties_and_unreachable() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert kendall_tau_b(x, x * 10) == pytest.approx(1.0)
    assert kendall_tau_b(x, -x) == pytest.approx(-1.0)
    assert kendall_tau_b(x, np.ones(4)) is None and kendall_tau_b(x[:1], x[:1]) is None
    inf = np.array([1.0, np.inf, np.inf, 2.0])
    assert kendall_tau_b(inf, np.array([1.0, 9.0, 9.0, 2.0])) == pytest.approx(1.0)  # inf ties inf, ranks last
    with pytest.raises(ValueError):
        kendall_tau_b(x, x[:3])


def test_matches_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        a, b = rng.integers(0, 5, 12).astype(float), rng.integers(0, 5, 12).astype(float)
        if len(set(a)) > 1 and len(set(b)) > 1:
            assert kendall_tau_b(a, b) == pytest.approx(_reference(a, b))


def test_within_groups_skips_groups_without_an_ordering() -> None:
    a = np.array([1.0, 2.0, 5.0, 5.0, 7.0])
    b = np.array([2.0, 1.0, 3.0, 4.0, 0.0])
    assert within_groups(a, b, np.array([0, 0, 1, 1, 2])) == [pytest.approx(-1.0)]
