"""Fixtures of the integration tests: a fleet of loopback agents (tests/integration/fleet.py)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from fleet import Fleet


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    f = Fleet()
    try:
        yield f
    finally:
        f.close()


@pytest.fixture
def pair(fleet: Fleet) -> Fleet:
    fleet.start("p0t0s0g0", 0)
    fleet.start("p0t0s0g1", 1)
    return fleet
