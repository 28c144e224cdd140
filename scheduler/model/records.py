"""The per-request result record both backends produce, and the column order of requests.csv."""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class RequestRecord:
    """Timings of one request under one policy. Times in seconds from trace start unless noted."""

    policy: str
    req_id: int
    arrival_s: float
    input_tokens: int
    output_tokens: int
    prefill: str  # GPU host name of the chosen prefill instance
    decode: str  # GPU host name of the chosen decode instance
    tier: int  # 0 same server, 1 same rack, 2 same pod, 3 cross-pod
    prefill_cached_tokens: int  # prompt tokens found in the prefill instance's prefix cache
    decode_cached_tokens: int  # prompt tokens already held by the decode instance (not moved)
    kv_bytes: int  # KV-cache bytes moved prefill -> decode (real units, unscaled)
    queue_s: float  # waiting in the prefill instance's FIFO
    prefill_s: float  # prefill compute
    transfer_s: float  # KV transfer (prefill end -> last byte at decode)
    decode_wait_s: float  # waiting for decode memory after the transfer
    first_token_s: float  # absolute time of the first output token
    ttft_s: float  # first_token_s - arrival_s = queue + prefill + transfer + wait + first step
    tbt_mean_ms: float  # mean time between output tokens
    decision_us: float  # scheduler decision latency, microseconds of wall time
    stalled_s: float = 0.0  # time the KV transfer stood still on a failed link (before rerouting or repair)

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]
