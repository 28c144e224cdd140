"""The embedded default trace: a seeded generator with Mooncake-conversation-like statistics.

Targets (from the public Mooncake ``conversation_trace.jsonl``, see shared/data/mooncake/README.md):
~3.4 req/s Poisson-like arrivals, prompt median ~6,900 and mean ~12,000 tokens (max ~126k),
output mean ~343 tokens, about 37% of prompt blocks reusable with an unlimited prefix cache.

Prefix sharing comes from two mechanisms, as in the real trace:

* a shared system prompt: most conversations start with the same first block (hash id 0);
* multi-turn conversations: a follow-up turn's prompt is its conversation's previous prompt plus
  new tokens, so it repeats the previous prompt's full blocks (their hash ids) and adds new ones.

Prompt lengths are drawn from the lognormal first; a follow-up then continues the recent
conversation whose previous prompt is the longest one still shorter, so the length distribution
stays the lognormal whatever the follow-up fraction. Everything is drawn from one
``numpy.random.default_rng(seed)`` in a fixed order: the same seed gives the same trace.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scheduler.model.trace import BLOCK_TOKENS, Request, n_blocks

SYSTEM_PROMPT_ID = 0
"""Hash id of the shared system-prompt block (the real conversation trace starts every line with 0)."""


class SyntheticConfigError(ValueError):
    """A :class:`SyntheticConfig` field is out of range; the message names the field."""


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic trace. Defaults reproduce the Mooncake conversation trace."""

    n_requests: int = 2000
    """Requests to generate (~10 minutes of arrivals at the default rate)."""
    rate_per_s: float = 3.4
    """Mean arrival rate; conversation trace: 12,031 requests in 3,537 s = 3.40 req/s."""
    input_median: float = 6900.0
    """Median prompt length in tokens (conversation trace: 6,909); lognormal mu = ln(median)."""
    input_mean: float = 12000.0
    """Mean prompt length before the cap (trace: 12,035); sigma = sqrt(2 ln(mean / median)) = 1.05."""
    max_input_tokens: int = 131_072
    """Prompt length cap: a 128k context window (trace max 126,195)."""
    output_mean: float = 343.0
    """Mean output length in tokens (trace: 342.6)."""
    output_cv: float = 0.73
    """Coefficient of variation of the gamma output length (trace: std 250 / mean 343)."""
    max_output_tokens: int = 2000
    """Output length cap (trace max 2,000); outputs are also >= 1."""
    follow_up_fraction: float = 0.40
    """Probability that a request tries to be a follow-up turn of a recent conversation. The
    trace has ~39% requests whose second block was seen before, sharing ~71% of their blocks;
    0.40 tries give ~38% follow-ups and ~37% reusable blocks (mean over seeds 0..9: 0.366; a
    try fails when no recent conversation has a shorter prompt)."""
    conversation_window: int = 64
    """A follow-up continues, among the this-many most recently active conversations, the one
    with the longest prompt still shorter than its own (the new turn adds the fewest tokens, as
    in the trace where a follow-up's median new content is 2 blocks). 64 is ~20 s of arrivals;
    a larger window raises sharing (tuned with follow_up_fraction to the 37% target)."""
    system_prompt_fraction: float = 0.9
    """Fraction of conversations whose first block is the shared system prompt (hash id 0)."""

    def __post_init__(self) -> None:
        checks = {
            "n_requests": self.n_requests >= 1,
            "rate_per_s": self.rate_per_s > 0,
            "input_median": self.input_median >= 1,
            "input_mean": self.input_mean >= self.input_median,
            "max_input_tokens": self.max_input_tokens >= 1,
            "output_mean": self.output_mean >= 1,
            "output_cv": self.output_cv > 0,
            "max_output_tokens": self.max_output_tokens >= 1,
            "follow_up_fraction": 0 <= self.follow_up_fraction <= 1,
            "conversation_window": self.conversation_window >= 1,
            "system_prompt_fraction": 0 <= self.system_prompt_fraction <= 1,
        }
        for name, ok in checks.items():
            if not ok:
                value = getattr(self, name)
                raise SyntheticConfigError(f"synthetic trace parameter {name!r} out of range: {value!r}")


@dataclass(eq=False)
class _Conversation:
    """Running state of one conversation: its latest prompt length and block ids."""

    tokens: int
    hash_ids: tuple[int, ...]


def synthetic_trace(config: SyntheticConfig | None = None, seed: int = 0) -> list[Request]:
    """Generate ``config.n_requests`` requests (arrival-sorted, ``req_id`` = index) for ``seed``."""
    c = config or SyntheticConfig()
    rng = np.random.default_rng(seed)
    n = c.n_requests
    # All random draws up front, in a fixed order (determinism does not depend on branches taken).
    arrivals = np.cumsum(rng.exponential(1.0 / c.rate_per_s, n))
    arrivals -= arrivals[0]  # the trace starts at t = 0 like Mooncake's
    sigma = math.sqrt(2.0 * math.log(c.input_mean / c.input_median))
    inputs = rng.lognormal(math.log(c.input_median), sigma, n)
    inputs = np.clip(np.rint(inputs), 1, c.max_input_tokens).astype(np.int64)
    shape = 1.0 / c.output_cv**2
    outputs = rng.gamma(shape, c.output_mean / shape, n)
    outputs = np.clip(np.rint(outputs), 1, c.max_output_tokens).astype(np.int64)
    follow_u = rng.random(n)
    system_u = rng.random(n)

    conversations: list[_Conversation] = []
    next_id = SYSTEM_PROMPT_ID + 1
    out: list[Request] = []
    for i in range(n):
        length = int(inputs[i])
        blocks = n_blocks(length)
        conv = None
        if follow_u[i] < c.follow_up_fraction:
            recent = conversations[-c.conversation_window :]
            candidates = [cv for cv in recent if cv.tokens < length]
            if candidates:
                conv = max(candidates, key=lambda cv: cv.tokens)
        if conv is not None:
            # Full blocks of the previous prompt are unchanged; its partial last block and
            # everything after it are new content, hence new ids.
            shared = conv.hash_ids[: conv.tokens // BLOCK_TOKENS]
        elif system_u[i] < c.system_prompt_fraction and length >= BLOCK_TOKENS:
            shared = (SYSTEM_PROMPT_ID,)
        else:
            shared = ()
        fresh = blocks - len(shared)
        ids = shared + tuple(range(next_id, next_id + fresh))
        next_id += fresh
        if conv is None:
            conversations.append(_Conversation(length, ids))
        else:
            conv.tokens, conv.hash_ids = length, ids
            conversations.remove(conv)
            conversations.append(conv)  # most recently active last: stays in the window
        out.append(Request(i, float(arrivals[i]), length, int(outputs[i]), ids))
    return out
