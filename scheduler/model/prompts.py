"""Prompts with real text for trace requests, and the one rule that counts their tokens.

Tokens-per-text rule: **one token is one whitespace-separated word**. Texts are built from the
fixed vocabulary :data:`VOCABULARY` (plain lower-case words, none containing whitespace) and
joined by single spaces, so :func:`count_tokens` (``len(text.split())``) recovers the token count
exactly; the HTTP workers count prompts with the same function.

Each trace block (hash id) becomes :data:`BLOCK_TOKENS` words drawn from the vocabulary by a
pseudo-random generator seeded by the hash id (:func:`block_words`); a prompt is its blocks' words
in order, the last block cut to the prompt's remaining tokens (the first words of that block's
text, so a cut block is a prefix of the whole one). A hash id names a block and everything before
it, so two requests whose hash-id lists share a leading run share exactly that many blocks of
leading words: a text prefix that smg's text-based ``cache_aware`` policy sees, and that the
workers' block caches see through :func:`block_keys` (a chain hash over the same word blocks).
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from functools import lru_cache

from scheduler.model.trace import BLOCK_TOKENS, Request

_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu amber basalt cobalt dune ember "
    "fern granite harbor iris jasper kestrel lagoon meadow nectar orchid pebble quartz raven saffron "
    "thistle umber violet willow yarrow zephyr anchor beacon canyon drift estuary fjord glacier heath "
    "islet jungle knoll ledge marsh nook oasis prairie quarry ridge summit tundra upland valley wharf"
)
VOCABULARY: tuple[str, ...] = tuple(_WORDS.split())
"""The words prompts are made of: distinct lower-case words without whitespace (one word = one token)."""

BLOCK_CACHE_SIZE = 4096
"""Block texts kept memoised (a trace's shared system prompts and conversations recur)."""


@lru_cache(maxsize=BLOCK_CACHE_SIZE)
def block_words(hash_id: int) -> tuple[str, ...]:
    """The :data:`BLOCK_TOKENS` words of block ``hash_id``: deterministic in the hash id alone
    (a ``random.Random`` seeded by it), so the same block reads the same in every request."""
    if hash_id < 0:
        raise ValueError(f"hash ids are non-negative, got {hash_id}")
    rng = random.Random(hash_id)
    return tuple(rng.choices(VOCABULARY, k=BLOCK_TOKENS))


def prompt_words(hash_ids: Sequence[int], input_tokens: int) -> list[str]:
    """The words of a prompt of ``input_tokens`` tokens made of blocks ``hash_ids`` (one block per
    :data:`BLOCK_TOKENS` tokens, the last one cut); ``ValueError`` when the counts disagree."""
    need = -(-input_tokens // BLOCK_TOKENS)
    if input_tokens < 0 or len(hash_ids) != need:
        raise ValueError(f"{input_tokens} tokens need {need} hash ids, got {len(hash_ids)}")
    words: list[str] = []
    for h in hash_ids:
        words.extend(block_words(h)[: input_tokens - len(words)])
    return words


def prompt_text(hash_ids: Sequence[int], input_tokens: int) -> str:
    """The prompt text (words joined by single spaces) of :func:`prompt_words`."""
    return " ".join(prompt_words(hash_ids, input_tokens))


def request_text(req: Request) -> str:
    """The prompt text of a trace request."""
    return prompt_text(req.hash_ids, req.input_tokens)


def count_tokens(text: str) -> int:
    """Tokens of ``text`` under the module's rule: its whitespace-separated words."""
    return len(text.split())


def block_keys(text: str) -> list[int]:
    """One key per :data:`BLOCK_TOKENS`-word block of ``text`` (the last one possibly shorter):
    a chain hash, so a key names its block and everything before it, like a trace hash id. Two
    texts share exactly as many leading keys as they share leading whole blocks of words."""
    words = text.split()
    keys: list[int] = []
    chain = b""
    for start in range(0, len(words), BLOCK_TOKENS):
        digest = hashlib.blake2b(chain, digest_size=8)
        digest.update(" ".join(words[start:start + BLOCK_TOKENS]).encode())
        chain = digest.digest()
        keys.append(int.from_bytes(chain, "big") >> 1)  # non-negative, fits an int64
    return keys
