"""Helpers shared by several test modules."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from scheduler.decision.context import Decision
from scheduler.paths import MOONCAKE_DIR
from scheduler.policies.base import Policy

NETKV_BIN = str(Path(sys.executable).with_name("netkv"))
"""The installed ``netkv`` command of the interpreter running the tests (``pip install -e .``)."""

CONVERSATION_TRACE = MOONCAKE_DIR / "conversation_trace.jsonl"
"""The public Mooncake conversation trace, read where the CLI's examples read it
(``scheduler.paths.MOONCAKE_DIR``, beside the checkout)."""


def needs_mooncake(path: Path = CONVERSATION_TRACE) -> pytest.MarkDecorator:
    """Skip the test, naming the path, where the Mooncake trace ``path`` is absent (it is shared
    data beside the checkout, never part of the repository)."""
    return pytest.mark.skipif(not path.exists(), reason=f"Mooncake trace not found at {path}")


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


def experiment(scenario: str = "idle", policies: str = "cache-load,netkv", overrides=(), params=None, n: int = 60):
    """A prepared, untuned experiment on the synthetic trace's first ``n`` requests."""
    from scheduler.model.config import build_config
    from scheduler.study.experiment import prepare

    exp, _ = prepare(build_config(overrides=list(overrides)), None, scenario, policies, n, 0, params, tune=False)
    return exp


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
