"""Tests for hosts/worker_api.py: what the HTTP workers read from SGLang and OpenAI bodies (token
counts by the prompts' rule, bootstrap fields) and the stream events they answer with."""
from __future__ import annotations

import json

import pytest

from hosts.worker_api import RequestError, full_body, output_piece, parse_request, stream_chunk, usage_chunk
from scheduler.model.prompts import count_tokens, prompt_text

BOOT = {"bootstrap_host": "10.0.0.1", "bootstrap_port": 8998, "bootstrap_room": 2**63 + 5}
TEXT = prompt_text((4, 5), 700)

# (endpoint kind, body, input tokens, output tokens, stream)
CASES = [
    ("generate", {"text": TEXT, "sampling_params": {"max_new_tokens": 9}, "stream": True}, 700, 9, True),
    ("generate", {"input_ids": [1, 2, 3]}, 3, 16, False),
    ("completions", {"prompt": TEXT, "max_tokens": 4}, 700, 4, False),
    ("completions", {"prompt": [TEXT], "max_tokens": 2, "stream": True}, 700, 2, True),
    ("chat", {"messages": [{"role": "system", "content": "alpha bravo"}, {"role": "user", "content": TEXT}],
              "max_completion_tokens": 3, "stream": True}, 702, 3, True),
]


@pytest.mark.parametrize(("kind", "body", "n_in", "n_out", "stream"), CASES)
def test_parse_counts_tokens_and_keeps_the_bootstrap(kind: str, body: dict, n_in: int, n_out: int,
                                                     stream: bool) -> None:
    req = parse_request(kind, body | BOOT)
    assert (req.input_tokens, req.output_tokens, req.stream) == (n_in, n_out, stream)
    assert (req.bootstrap_host, req.bootstrap_port, req.room) == ("10.0.0.1", 8998, 2**63 + 5)


@pytest.mark.parametrize(("kind", "body", "match"), [
    ("completions", {"prompt": ["a", "b"]}, "one string"),
    ("completions", {"prompt": "a", "max_tokens": 0}, "at least one"),
    ("chat", {"messages": []}, "non-empty"),
    ("generate", {}, "'text'"),
    ("completions", {"prompt": "a", "bootstrap_room": "x"}, "bootstrap_room"),
    ("completions", [], "JSON object"),
])
def test_parse_refuses_what_cannot_be_served(kind: str, body: object, match: str) -> None:
    with pytest.raises(RequestError, match=match):
        parse_request(kind, body)


@pytest.mark.parametrize("kind", ["generate", "completions", "chat"])
def test_streamed_pieces_make_the_full_text(kind: str) -> None:
    body = {"prompt": "a b", "text": "a b", "messages": [{"role": "user", "content": "a b"}], "max_tokens": 3,
            "sampling_params": {"max_new_tokens": 3}, "stream_options": {"include_usage": True}}
    req = parse_request(kind, body | BOOT)
    text, pieces = "", []
    for k in range(3):
        text += output_piece(req.room or 0, k)
        event = json.loads(stream_chunk(req, "r", k, text, k == 2).removeprefix("data: "))
        if kind == "generate":
            pieces = [event["text"]]  # cumulative
        elif kind == "completions":
            pieces.append(event["choices"][0]["text"])
        else:
            pieces.append(event["choices"][0]["delta"]["content"])
    assert "".join(pieces) == text and count_tokens(text) == 3
    whole = full_body(req, "r", text)
    assert (whole["text"] if kind == "generate" else whole["usage"]["completion_tokens"]) in (text, 3)
    assert (usage_chunk(req, "r", 0) is None) == (kind == "generate")
