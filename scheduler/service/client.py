"""A small typed client of the oracle service, what a router-side scorer calls (httpx, sync).

::

    with OracleClient("http://127.0.0.1:8470") as oracle:
        costs = oracle.cost("p0t0s0g0", ["p0t1s0g0", "p1t1s0g0"], nbytes=[2**27, 2**27])
        costs.seconds, costs.bottleneck
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from types import TracebackType

import httpx

from scheduler.service.app import TOKEN_ENV


class OracleRequestError(RuntimeError):
    """The service refused a request (4xx) or failed (5xx); ``status`` and ``detail`` say why."""

    def __init__(self, status: int, detail: object) -> None:
        super().__init__(f"oracle service answered HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Costs:
    seconds: list[float | None]
    tier: list[int]
    bottleneck: list[str | None]
    telemetry_age_s: float | None
    source: str
    degraded: bool


@dataclass(frozen=True)
class Selection:
    choice: str
    index: int
    seconds: float | None
    score: float | None
    reservation_id: str | None
    degraded: bool


class OracleClient:
    """Sync client; ``token`` defaults to the ``NETKV_ORACLE_TOKEN`` environment variable."""

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 2.0) -> None:
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        resp = self._http.request(method, path, json=body)
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail")
            except ValueError:
                detail = resp.text
            raise OracleRequestError(resp.status_code, detail)
        return resp.json() if resp.content else {}

    @staticmethod
    def _sizes(nbytes: list[int] | None, tokens: list[int] | None, model: str | None) -> dict:
        body: dict = {"bytes": nbytes} if nbytes is not None else {"tokens": tokens}
        if model is not None:
            body["model"] = model
        return body

    def cost(self, prefill: str, candidates: list[str], nbytes: list[int] | None = None,
             tokens: list[int] | None = None, model: str | None = None, start_s: float = 0.0) -> Costs:
        """Seconds, tier and bottleneck link per candidate (give ``nbytes`` or ``tokens``)."""
        out = self._call("POST", "/v1/cost", {"prefill": prefill, "candidates": candidates, "start_s": start_s,
                                              **self._sizes(nbytes, tokens, model)})
        return Costs(out["seconds"], out["tier"], out["bottleneck"], out["telemetry_age_s"], out["source"],
                     out["degraded"])

    def select(self, prefill: str, candidates: list[str], loads: list[float], nbytes: list[int] | None = None,
               tokens: list[int] | None = None, model: str | None = None, load_weight_s: float = 0.1,
               reserve: bool = False) -> Selection:
        """NetKV's choice among ``candidates``; with ``reserve`` its transfer is held."""
        out = self._call("POST", "/v1/select", {"prefill": prefill, "candidates": candidates, "loads": loads,
                                                "load_weight_s": load_weight_s, "reserve": reserve,
                                                **self._sizes(nbytes, tokens, model)})
        res = out.get("reservation")
        return Selection(out["choice"], out["index"], out["seconds"], out["score"], res["id"] if res else None,
                         out["degraded"])

    def reserve(self, prefill: str, decode: str, nbytes: int, start_s: float = 0.0,
                duration_s: float | None = None) -> str:
        """Hold a committed transfer of ``nbytes`` starting ``start_s`` from now for ``duration_s``
        (default: its priced time), so later prices count it; its reservation id."""
        body: dict = {"prefill": prefill, "decode": decode, "bytes": nbytes, "start_s": start_s}
        if duration_s is not None:
            body["duration_s"] = duration_s
        return str(self._call("POST", "/v1/reservations", body)["id"])

    def release(self, reservation_id: str) -> None:
        """End a reservation (its transfer finished)."""
        self._call("DELETE", f"/v1/reservations/{reservation_id}")

    def topology(self) -> dict:
        return self._call("GET", "/v1/topology")

    def health(self) -> dict:
        return self._call("GET", "/healthz")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OracleClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
