"""Tests for scheduler/model/prompts.py: prompt texts from trace blocks, their token counts and the
prefix property (shared leading hash ids <=> shared leading text, visible to the block keys)."""
from __future__ import annotations

import pytest

from scheduler.model.prompts import (
    VOCABULARY,
    block_keys,
    count_tokens,
    prompt_text,
    prompt_words,
    request_text,
)
from scheduler.model.trace import BLOCK_TOKENS, Request

B = BLOCK_TOKENS


def common_prefix_words(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split(), b.split()):
        if x != y:
            break
        n += 1
    return n


def common_prefix_keys(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# (hash ids a, tokens a, hash ids b, tokens b, shared leading words, shared leading block keys)
PREFIX_CASES = [
    ((1, 2, 3), 3 * B, (1, 2, 3), 3 * B, 3 * B, 3),           # identical prompts
    ((1, 2, 3), 3 * B, (1, 2, 5), 3 * B, 2 * B, 2),           # diverge in the third block
    ((1, 2), 2 * B, (1, 2, 7), 3 * B, 2 * B, 2),              # one is a block prefix of the other
    ((5,), B, (6,), B, 0, 0),                                 # nothing shared
    ((1, 2), B + 100, (1, 2), B + 300, B + 100, 1),           # same last block, cut at different lengths
    ((1, 9), B + 10, (1, 8), B + 10, B, 1),                   # partial last blocks differ
    ((3,), 40, (3,), 40, 40, 1),                              # one short block
]


@pytest.mark.parametrize(("ids_a", "n_a", "ids_b", "n_b", "words", "keys"), PREFIX_CASES)
def test_shared_hash_prefix_is_shared_text_prefix(ids_a: tuple[int, ...], n_a: int, ids_b: tuple[int, ...],
                                                  n_b: int, words: int, keys: int) -> None:
    a, b = prompt_text(ids_a, n_a), prompt_text(ids_b, n_b)
    assert count_tokens(a) == n_a and count_tokens(b) == n_b
    # two different blocks agree on their first word with chance 1/len(VOCABULARY): the seeds above do not
    assert common_prefix_words(a, b) == words
    assert common_prefix_keys(block_keys(a), block_keys(b)) == keys


def test_text_is_deterministic_and_uses_the_vocabulary() -> None:
    text = prompt_text((11, 12), B + 5)
    assert text == prompt_text((11, 12), B + 5)
    assert set(text.split()) <= set(VOCABULARY)
    assert "  " not in text and text == text.strip()


def test_request_text_counts_its_input_tokens() -> None:
    req = Request(0, 0.0, 2 * B + 17, 4, (100, 200, 300))
    assert count_tokens(request_text(req)) == 2 * B + 17
    assert len(block_keys(request_text(req))) == 3


def test_hash_id_count_must_match_the_length() -> None:
    with pytest.raises(ValueError, match="need 2 hash ids"):
        prompt_words((1,), B + 1)


def test_vocabulary_words_are_single_tokens() -> None:
    assert len(set(VOCABULARY)) == len(VOCABULARY)
    assert all(count_tokens(w) == 1 for w in VOCABULARY)
