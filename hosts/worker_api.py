"""The HTTP worker's request and response formats: SGLang's ``/generate`` and the OpenAI
completions and chat endpoints, as a P/D router (smg, ``netkv router``) sends and reads them.

Pure (no sockets, no clock): :func:`parse_request` turns a JSON body into a :class:`WorkRequest`
(prompt text, token counts under :mod:`scheduler.model.prompts`' rule, the bootstrap fields a P/D
router adds), and the ``*_chunk``/``*_body`` functions build what the decode worker streams (SSE
``data:`` lines ending with ``data: [DONE]``) or returns in one piece.

Output tokens are words too (one word per token, :func:`output_word`), so a client counts them the
way the worker counts prompts; their content carries no meaning.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from scheduler.model.prompts import VOCABULARY, count_tokens

ENDPOINTS = {"/generate": "generate", "/v1/completions": "completions", "/v1/chat/completions": "chat"}
"""Request paths the workers serve -> the endpoint kind their bodies and answers follow."""
DEFAULT_MAX_TOKENS = 16
"""Output tokens of a request that names none (OpenAI's completions default)."""
SSE_DONE = "data: [DONE]\n\n"
"""The last line of every stream (smg stops relaying when it sees it)."""


class RequestError(ValueError):
    """A request body the workers cannot serve (answered with HTTP 400)."""


@dataclass(frozen=True)
class WorkRequest:
    """One request as a worker sees it: its prompt, lengths in tokens, whether it streams, and
    the P/D rendezvous (``room`` and the prefill worker's bootstrap address) when a router set it."""

    kind: str
    text: str
    input_tokens: int
    output_tokens: int
    stream: bool
    model: str
    room: int | None
    bootstrap_host: str | None
    bootstrap_port: int | None
    include_usage: bool = False


def _int_field(body: dict, name: str, default: int | None = None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(f"field {name!r} must be an integer, got {value!r}")
    return value


def _prompt(kind: str, body: dict) -> tuple[str, int]:
    """(text, input tokens) of the body's prompt."""
    if kind == "generate":
        if isinstance(body.get("text"), str):
            text = body["text"]
            return text, count_tokens(text)
        ids = body.get("input_ids")
        if isinstance(ids, list) and all(isinstance(i, int) for i in ids):
            return " ".join(VOCABULARY[i % len(VOCABULARY)] for i in ids), len(ids)
        raise RequestError("/generate needs 'text' (a string) or 'input_ids' (a list of ints)")
    if kind == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise RequestError("/v1/completions needs 'prompt' as one string (batches are not served)")
        return prompt, count_tokens(prompt)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("/v1/chat/completions needs 'messages' (a non-empty list)")
    parts: list[str] = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):  # content parts: their text ones
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise RequestError("every chat message needs a string 'content'")
        parts.append(content)
    text = " ".join(parts)
    return text, count_tokens(text)


def parse_request(kind: str, body: Any) -> WorkRequest:
    """The :class:`WorkRequest` of a JSON ``body`` sent to endpoint ``kind`` (see :data:`ENDPOINTS`);
    ``RequestError`` when it cannot be served."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    text, input_tokens = _prompt(kind, body)
    if input_tokens < 1:
        raise RequestError("the prompt is empty")
    if kind == "generate":
        params = body.get("sampling_params") or {}
        if not isinstance(params, dict):
            raise RequestError("'sampling_params' must be an object")
        out = _int_field(params, "max_new_tokens", DEFAULT_MAX_TOKENS)
    else:
        out = _int_field(body, "max_tokens")
        if out is None:
            out = _int_field(body, "max_completion_tokens", DEFAULT_MAX_TOKENS)
    if out is None or out < 1:
        raise RequestError(f"the request must ask for at least one output token, got {out}")
    room = _int_field(body, "bootstrap_room")
    port = _int_field(body, "bootstrap_port")
    host = body.get("bootstrap_host")
    if host is not None and not isinstance(host, str):
        raise RequestError(f"'bootstrap_host' must be a string, got {host!r}")
    options = body.get("stream_options") or {}
    return WorkRequest(kind, text, input_tokens, out, bool(body.get("stream", False)),
                       str(body.get("model") or ""), room, host, port,
                       bool(isinstance(options, dict) and options.get("include_usage")))


def output_word(room: int, k: int) -> str:
    """The ``k``-th output token (0-based) of request ``room``: a vocabulary word."""
    return VOCABULARY[(room + k) % len(VOCABULARY)]


def output_piece(room: int, k: int) -> str:
    """What token ``k`` adds to the output text (words separated by single spaces)."""
    return output_word(room, k) if k == 0 else " " + output_word(room, k)


def sse(obj: dict) -> str:
    """One server-sent event carrying ``obj``."""
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def _usage(req: WorkRequest, produced: int, cached: int) -> dict:
    return {"prompt_tokens": req.input_tokens, "completion_tokens": produced,
            "total_tokens": req.input_tokens + produced,
            "prompt_tokens_details": {"cached_tokens": cached}}


def stream_chunk(req: WorkRequest, rid: str, k: int, text_so_far: str, last: bool, cached: int = 0) -> str:
    """The SSE event of output token ``k`` (``text_so_far`` includes it)."""
    piece = output_piece(req.room or 0, k)
    finish = "length" if last else None
    if req.kind == "generate":  # SGLang streams the cumulative text
        meta = {"id": rid, "prompt_tokens": req.input_tokens, "completion_tokens": k + 1,
                "cached_tokens": cached,
                "finish_reason": {"type": "length", "length": req.output_tokens} if last else None}
        return sse({"text": text_so_far, "meta_info": meta})
    created = int(time.time())
    if req.kind == "completions":
        return sse({"id": rid, "object": "text_completion", "created": created, "model": req.model,
                    "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}]})
    delta: dict[str, str] = {"content": piece}
    if k == 0:
        delta["role"] = "assistant"
    return sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})


def usage_chunk(req: WorkRequest, rid: str, cached: int) -> str | None:
    """The closing usage event an OpenAI stream sends when ``stream_options.include_usage`` asked
    for it (None otherwise, and for ``/generate``)."""
    if req.kind == "generate" or not req.include_usage:
        return None
    obj = "text_completion" if req.kind == "completions" else "chat.completion.chunk"
    return sse({"id": rid, "object": obj, "created": int(time.time()), "model": req.model, "choices": [],
                "usage": _usage(req, req.output_tokens, cached)})


def full_body(req: WorkRequest, rid: str, text: str, cached: int = 0) -> dict:
    """The one-piece answer of a request that does not stream."""
    if req.kind == "generate":
        return {"text": text, "meta_info": {"id": rid, "prompt_tokens": req.input_tokens,
                                            "completion_tokens": req.output_tokens, "cached_tokens": cached,
                                            "finish_reason": {"type": "length", "length": req.output_tokens}}}
    created = int(time.time())
    if req.kind == "completions":
        choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
        obj = "text_completion"
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": "length"}
        obj = "chat.completion"
    return {"id": rid, "object": obj, "created": created, "model": req.model, "choices": [choice],
            "usage": _usage(req, req.output_tokens, cached)}
