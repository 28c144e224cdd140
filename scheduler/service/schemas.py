"""Request and response bodies of the oracle service, validated in one place (pydantic).

Sizes are bytes (``bytes``) or tokens of a model (``tokens`` with an optional ``model``, default
the service's): exactly one of the two, one entry per candidate. Numbers must be finite: JSON's
``NaN``/``Infinity`` extensions are rejected like negative sizes, with a 422 naming the field.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_CANDIDATES = 4096
"""Most candidates one query may name (the scheduler's largest benchmarked decode set)."""
MAX_BYTES = 10**15
"""Largest transfer size accepted (1 PB; far above any KV cache), so sizes stay exact as floats."""
MAX_TOKENS = 10**9
"""Largest token count accepted."""
MAX_START_S = 3600.0
"""A transfer may be priced or reserved at most this far ahead, s."""

Name = Annotated[str, Field(min_length=1, max_length=64,
                            description="GPU host name (p0t1s0g2) or worker address (10.0.0.1 or 10.0.0.1:9470)")]
Bytes = Annotated[int, Field(ge=0, le=MAX_BYTES)]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
Source = Literal["static", "ryu", "prometheus", "replay"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Sized(_Strict):
    """``bytes`` or ``tokens`` (+ ``model``) per candidate."""

    bytes: list[Bytes] | None = Field(None, description="KV bytes to move to each candidate")
    tokens: list[Tokens] | None = Field(None, description="KV tokens to move to each candidate (bytes from the model)")
    model: str | None = Field(None, description="model preset of `tokens` (default: the service's model)")
    start_s: float = Field(0.0, ge=0.0, le=MAX_START_S, description="the transfer starts this many s from now")

    def _check_sizes(self, n: int, names: str) -> None:
        if (self.bytes is None) == (self.tokens is None):
            raise ValueError("give exactly one of 'bytes' and 'tokens'")
        field = "bytes" if self.bytes is not None else "tokens"
        sizes = self.bytes if self.bytes is not None else self.tokens
        assert sizes is not None
        if len(sizes) != n:
            raise ValueError(f"'{field}' has {len(sizes)} entries but '{names}' has {n}: one per candidate")


class CostRequest(_Sized):
    prefill: Name
    candidates: list[Name] = Field(min_length=1, max_length=MAX_CANDIDATES)

    @model_validator(mode="after")
    def _sizes(self) -> CostRequest:
        self._check_sizes(len(self.candidates), "candidates")
        return self


class Telemetry(BaseModel):
    telemetry_age_s: float | None = Field(description="age of the snapshot priced with; null when static")
    source: Source
    degraded: bool = Field(description="telemetry was configured but is unavailable or stale: priced statically")
    degraded_reason: str | None = None


class CostResponse(Telemetry):
    seconds: list[float | None] = Field(description="transfer time per candidate, s (null: unreachable)")
    tier: list[int] = Field(description="0 same server, 1 same rack, 2 same pod, 3 cross-pod")
    bottleneck: list[str | None] = Field(description="the link with the least bandwidth left per candidate")


class SelectRequest(_Sized):
    prefill: Name
    candidates: list[Name] = Field(min_length=1, max_length=MAX_CANDIDATES)
    loads: list[Annotated[float, Field(ge=0.0, le=1e6)]] = Field(description="load fraction of each candidate")
    load_weight_s: float = Field(0.1, ge=0.0, le=1e6, description="seconds of score per unit of load (NetKV's weight)")
    reserve: bool = Field(False, description="also reserve the chosen transfer")
    duration_s: float | None = Field(None, gt=0.0, le=MAX_START_S,
                                     description="reservation length, s (default: the priced transfer time)")

    @model_validator(mode="after")
    def _sizes(self) -> SelectRequest:
        self._check_sizes(len(self.candidates), "candidates")
        if len(self.loads) != len(self.candidates):
            raise ValueError(f"'loads' has {len(self.loads)} entries but 'candidates' has {len(self.candidates)}")
        return self


class Reservation(BaseModel):
    id: str
    expires_at: float = Field(description="unix time the reservation lapses unless deleted earlier")


class SelectResponse(Telemetry):
    choice: str
    index: int
    seconds: float | None = Field(description="the choice's transfer time, s")
    score: float | None = Field(description="seconds + load term of the choice (null: unreachable)")
    tier: int
    bottleneck: str | None
    reservation: Reservation | None = None


class ReservationRequest(_Strict):
    prefill: Name
    decode: Name
    bytes: Bytes | None = None
    tokens: Tokens | None = None
    model: str | None = None
    start_s: float = Field(0.0, ge=0.0, le=MAX_START_S)
    duration_s: float | None = Field(None, gt=0.0, le=MAX_START_S,
                                     description="default: the priced transfer time")

    @model_validator(mode="after")
    def _size(self) -> ReservationRequest:
        if (self.bytes is None) == (self.tokens is None):
            raise ValueError("give exactly one of 'bytes' and 'tokens'")
        return self


class ReservationResponse(Reservation):
    seconds: float | None


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    source: Source
    reason: str | None
    telemetry_age_s: float | None
    reservations: int
