"""Helpers shared by several test modules."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from scheduler.cluster import Decision
from scheduler.policies.base import Policy


NETKV_BIN = str(Path(sys.executable).with_name("netkv"))
"""The installed ``netkv`` command of the interpreter running the tests (``pip install -e .``)."""


class Fixed(Policy):
    """Always the instances led by GPUs ``p_gpu`` (prefill) and ``d_gpu`` (decode): for exact
    timing checks."""

    name = "fixed"

    def __init__(self, p_gpu: int, d_gpu: int) -> None:
        super().__init__()
        self.p_gpu, self.d_gpu = p_gpu, d_gpu

    def choose(self, ctx) -> Decision:
        cl = ctx.cluster
        return Decision(int(np.flatnonzero(cl.prefill_ids == self.p_gpu)[0]),
                        int(np.flatnonzero(cl.decode_ids == self.d_gpu)[0]))
