"""Trace transformations for load and context sweeps: arrival rate x K, prompt lengths x K.

Both keep what the schedulers see of a trace's structure: sessions stay in order (arrivals are
compressed, never reordered), and prefix sharing stays consistent (two requests that shared a
prefix of the original prompts share the corresponding prefix of the scaled ones, and nothing
more), because a block's hash id names the block *and everything before it* (scheduler/model/trace.py).

Context scaling maps original block ``i`` of a prompt onto the new blocks whose start falls in
``[i x K, (i + 1) x K)`` (in block units). Growing (K > 1): new block ``j`` inside original block
``h`` is named ``h x SPLIT + (j - first new block of h)``, a function of ``h`` and the position,
which ``h`` determines, so equal originals give equal copies. Shrinking (K < 1): new block ``j``
merges the originals it covers and is named after the last of them (which names all before it).
Output lengths are unchanged: the sweep varies what crosses the network, not the decode.
"""
from __future__ import annotations

import dataclasses
import math

from scheduler.model.trace import Request, n_blocks

SPLIT = 1 << 12
"""Sub-block ids per original block when prompts grow (K <= SPLIT); ids stay exact integers."""


class TransformError(ValueError):
    """A scale factor is out of range; the message names the option."""


def rate_scale(requests: list[Request], k: float) -> list[Request]:
    """Arrival rate x ``k``: every arrival time divided by ``k`` (order, sessions, prompts kept)."""
    if not (k > 0 and math.isfinite(k)):
        raise TransformError(f"--rate-scale must be a positive number, got {k!r}")
    if k == 1:
        return list(requests)
    return [dataclasses.replace(r, arrival_s=r.arrival_s / k) for r in requests]


@dataclasses.dataclass(frozen=True)
class ContextScaled:
    """Result of :func:`context_scale`: the requests and how many hit the context window."""

    requests: list[Request]
    capped: int
    max_tokens: int


def _scaled_ids(ids: tuple[int, ...], k: float, blocks: int) -> tuple[int, ...]:
    out = []
    for j in range(blocks):
        if k >= 1:
            i = min(int(j / k), len(ids) - 1)  # the original block this new one lies in
            first = math.ceil(i * k) if i else 0  # first new block inside original block i
            out.append(ids[i] * SPLIT + (j - first))
        else:
            last = min(math.ceil((j + 1) / k) - 1, len(ids) - 1)  # last original block it covers
            out.append(ids[last])
    return tuple(out)


def context_scale(requests: list[Request], k: float, max_tokens: int) -> ContextScaled:
    """Prompt lengths x ``k`` (rounded, at least one token), capped at ``max_tokens`` (the model's
    context window); hash ids rebuilt so that shared prefixes stay shared (module docstring)."""
    if not (k > 0 and math.isfinite(k)):
        raise TransformError(f"--context-scale must be a positive number, got {k!r}")
    if k > SPLIT:
        raise TransformError(f"--context-scale {k:g} is above the supported {SPLIT}")
    if max_tokens < 1:
        raise TransformError(f"context window must be >= 1 token, got {max_tokens}")
    if k == 1:
        return ContextScaled(list(requests), 0, max_tokens)
    out, capped = [], 0
    for r in requests:
        tokens = max(round(r.input_tokens * k), 1)
        if tokens > max_tokens:
            tokens, capped = max_tokens, capped + 1
        blocks = n_blocks(tokens)
        ids = _scaled_ids(r.hash_ids, k, blocks)
        out.append(dataclasses.replace(r, input_tokens=tokens, hash_ids=ids))
    return ContextScaled(out, capped, max_tokens)

