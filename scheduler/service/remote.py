"""A network cost oracle priced by the oracle service over HTTP: what a router calls.

:class:`ServiceOracle` keeps the oracle contract (:mod:`scheduler.decision.oracle`) but asks the
service (``POST /v1/cost``) for every decision, so an emulated run's scheduler prices through the
path a deployment would run: switch counters -> Ryu -> (Prometheus ->) oracle service -> scheduler.
Commitments become reservations (``POST /v1/reservations``, released on ``done``) when the policy
prices with the ``inflight`` oracle; with ``telemetry`` they are not sent.

Time: the scheduler's clock runs ``time_scale`` times slower than the wall clock the service
prices on (the emulator's time dilation), so offsets and durations sent are scaled by it; prices
come back in the model's seconds (the service prices the experiment's own topology).
A call that fails raises :class:`ServiceUnavailableError`: the replay reports it, it is never
priced silently by something else.
"""
from __future__ import annotations

import httpx
import numpy as np

from scheduler.decision.oracle import NetworkOracle, OracleQuery
from scheduler.service.client import OracleClient, OracleRequestError
from topology.model import FatTree

RESERVATION_SLACK = 2.0
"""A reservation lasts this many times its expected transfer time (at least), so a transfer that
runs late is still counted until ``done`` releases it."""


class ServiceUnavailableError(RuntimeError):
    """The oracle service did not answer a pricing call; the message says which and why."""


class ServiceOracle(NetworkOracle):
    """Prices every query through the service at ``url``; ``reserve`` sends commitments."""

    def __init__(self, tree: FatTree, url: str, time_scale: float = 1.0, reserve: bool = False,
                 timeout_s: float = 2.0, setup_s: float = 30e-6) -> None:
        super().__init__(tree, setup_s)
        self.url = url
        self.client = OracleClient(url, timeout_s=timeout_s)
        self.time_scale = time_scale
        self.reserve = reserve
        self.names = list(tree.gpu_names)
        self.calls = 0
        self.degraded_answers = 0
        self.telemetry_ages: list[float] = []
        """Age of the snapshot each answer was priced with, in the scheduler's seconds."""
        self.tracks_commitments = reserve
        self._held: dict[int, str] = {}
        self._now = 0.0  # the newest decision's time: commitments are sent relative to it

    def table(self, query: OracleQuery) -> None:
        return None

    def cost(self, query: OracleQuery) -> np.ndarray:
        self._now = query.now
        start = 0.0 if query.start is None else max(0.0, query.start - query.now)
        names = self.names
        try:
            out = self.client.cost(names[query.src], [names[int(d)] for d in query.dsts],
                                   nbytes=[int(b) for b in np.asarray(query.nbytes)], start_s=start * self.time_scale)
        except (OracleRequestError, httpx.HTTPError, OSError, ValueError) as exc:
            raise ServiceUnavailableError(f"oracle service at {self.url}: {exc}") from exc
        self.calls += 1
        self.degraded_answers += out.degraded
        if out.telemetry_age_s is not None:
            self.telemetry_ages.append(out.telemetry_age_s / self.time_scale)
        return np.array([np.inf if s is None else float(s) for s in out.seconds])

    def commit(self, src: int, dst: int, start: float, end: float, flow_key: int | None = None,
               nbytes: float = 0.0, key: int | None = None, tp: int = 1) -> None:
        if not self.reserve or key is None or nbytes <= 0:
            return
        duration = max(end - start, 1e-6) * RESERVATION_SLACK * self.time_scale
        try:
            self._held[key] = self.client.reserve(self.names[src], self.names[dst], int(nbytes),
                                                  max(0.0, start - self._now) * self.time_scale, duration)
        except (OracleRequestError, httpx.HTTPError, OSError, ValueError) as exc:
            raise ServiceUnavailableError(f"oracle service at {self.url}: {exc}") from exc

    def done(self, key: int, t: float) -> None:
        rid = self._held.pop(key, None)
        if rid is not None:
            try:
                self.client.release(rid)
            except (OracleRequestError, httpx.HTTPError, OSError, ValueError):
                pass  # expired already: the reservation lapses by itself

    def close(self) -> None:
        self.client.close()
