"""Loopback P/D workers for the router tests: prefill and decode HTTP workers (``hosts.http_worker``)
served in-process on 127.0.0.1, and a streaming OpenAI-client helper that times the chunks."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import openai

from hosts.asgi_thread import ServerThread
from hosts.http_worker import PdWorker, make_app, prompt_digest
from scheduler.model.config import build_config

BYTE_SCALE = 0.01
"""KV bytes sent per modelled byte in the loopback tests (a few MB per request, quick on loopback)."""


class Workers:
    """``n_prefill`` + ``n_decode`` workers on 127.0.0.1 ports; :meth:`close` stops them."""

    def __init__(self, n_prefill: int = 2, n_decode: int = 2) -> None:
        cfg = build_config()
        self.prefill = [PdWorker("prefill", cfg, name=f"p{i}", gpu=i, byte_scale=BYTE_SCALE)
                        for i in range(n_prefill)]
        self.decode = [PdWorker("decode", cfg, name=f"d{i}", gpu=n_prefill + i, byte_scale=BYTE_SCALE)
                       for i in range(n_decode)]
        self.servers: list[ServerThread] = []
        try:
            for w in self.prefill + self.decode:
                self.servers.append(ServerThread(make_app(w)).start())
        except BaseException:
            self.close()
            raise

    @property
    def prefill_urls(self) -> list[tuple[str, int | None]]:
        return [(s.url, w.bootstrap_port) for s, w in zip(self.servers, self.prefill)]

    @property
    def decode_urls(self) -> list[str]:
        return [s.url for s in self.servers[len(self.prefill):]]

    def records(self, role: str) -> list[dict]:
        return [r for w in (self.prefill if role == "prefill" else self.decode) for r in w.records]

    def close(self) -> None:
        for s in self.servers:
            s.stop()


@dataclass
class Streamed:
    """One streamed completion as the client saw it."""

    prompt: str
    t_send: float
    chunk_times: list[float] = field(default_factory=list)
    text: str = ""

    @property
    def ttft(self) -> float:
        return self.chunk_times[0] - self.t_send

    @property
    def digest(self) -> str:
        return prompt_digest(self.prompt)


def stream_completion(base_url: str, prompt: str, max_tokens: int, chat: bool = False) -> Streamed:
    """Stream one completion (or chat completion) through the router at ``base_url``."""
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
    out = Streamed(prompt, time.time())
    if chat:
        for chunk in client.chat.completions.create(model="netkv-emulated", max_tokens=max_tokens, stream=True,
                                                    messages=[{"role": "user", "content": prompt}]):
            if chunk.choices and chunk.choices[0].delta.content:
                out.chunk_times.append(time.time())
                out.text += chunk.choices[0].delta.content
    else:
        for c in client.completions.create(model="netkv-emulated", prompt=prompt, max_tokens=max_tokens,
                                           stream=True):
            if c.choices and c.choices[0].text:
                out.chunk_times.append(time.time())
                out.text += c.choices[0].text
    return out
