"""Continuous batching of one decode instance, and its running capacity.

Shared by the simulator (``scheduler.sim.simulator``), the cluster mirror (``scheduler.model.cluster``) and
the per-instance compute model the host agents run (``scheduler.model.instance``): one implementation of
the decode timing, so every backend batches and admits requests with the same code.
"""
from __future__ import annotations

from scheduler.model.config import ExperimentConfig
from scheduler.model.timing import TimingModel


def decode_capacity_tokens(cfg: ExperimentConfig, timing: TimingModel) -> int:
    """Tokens (prompt + output) a decode instance may hold in its running batch: the KV memory
    left after the weights, minus the share kept as prefix cache (at least 1).

    Raises ``ValueError`` when the weights leave no KV memory at all."""
    kv_tokens = timing.kv_capacity_tokens
    if kv_tokens <= 0:
        raise ValueError("no GPU memory left for KV cache after the weights")
    return max(int(kv_tokens * (1.0 - cfg.cluster.decode_cache_fraction)), 1)


class DecodeBatch:
    """Continuous batching on one decode instance, advanced between membership changes.

    Between joins and departures every running request emits one token per step and the step time
    is constant (computed from the batch's context at the change; contexts grow by the tokens
    emitted). This turns millions of token steps into two events per request.

    Requests are keyed by an int (``req``) unique within the batch; ties between requests that
    finish at the same step go to the smaller key. Admission is FIFO: a request whose KV arrived
    joins at once when nobody waits and it fits (:meth:`offer`), otherwise it waits until
    departures make room (:meth:`depart`)."""

    def __init__(self, timing: TimingModel, capacity_tokens: int) -> None:
        self.timing = timing
        self.capacity_tokens = capacity_tokens
        self.members: dict[int, list[float]] = {}  # req -> [tokens_left, context_tokens, reserved]
        self.used_tokens = 0.0
        self.step_s = timing.decode_step_s(0)
        self.last_t = 0.0
        self.version = 0
        self.waiting: list[tuple[int, int, int]] = []  # FIFO of (req, input_tokens, output_tokens)

    def _advance(self, t: float) -> None:
        if self.members and t > self.last_t:
            steps = (t - self.last_t) / self.step_s
            for m in self.members.values():
                m[0] -= steps
                m[1] += steps
        self.last_t = t

    def _restep(self) -> None:
        ctx = sum(m[1] for m in self.members.values())
        self.step_s = self.timing.decode_step_s(ctx)
        self.version += 1

    def fits(self, input_tokens: int, output_tokens: int) -> bool:
        need = input_tokens + output_tokens
        return not self.members or self.used_tokens + need <= self.capacity_tokens

    def join(self, t: float, req: int, input_tokens: int, output_tokens: int) -> float:
        """Admit a request at ``t``; returns the time of its first token."""
        self._advance(t)
        reserved = input_tokens + output_tokens
        self.members[req] = [float(output_tokens), float(input_tokens), float(reserved)]
        self.used_tokens += reserved
        self._restep()
        return t + self.step_s

    def offer(self, t: float, req: int, input_tokens: int, output_tokens: int) -> float | None:
        """The request's KV arrived at ``t``: join now (returns the first-token time) when nobody
        waits and it fits, else append it to the waiting FIFO (returns None)."""
        if not self.waiting and self.fits(input_tokens, output_tokens):
            return self.join(t, req, input_tokens, output_tokens)
        self.waiting.append((req, input_tokens, output_tokens))
        return None

    def admit_waiting(self, t: float) -> list[tuple[int, float]]:
        """Join waiting requests at ``t``, in FIFO order, while the head fits; returns
        ``[(req, first_token_time), ...]`` of those admitted."""
        admitted = []
        while self.waiting and self.fits(self.waiting[0][1], self.waiting[0][2]):
            req, input_tokens, output_tokens = self.waiting.pop(0)
            admitted.append((req, self.join(t, req, input_tokens, output_tokens)))
        return admitted

    def next_finish(self) -> tuple[float, int] | None:
        """(time, req) of the next running request to emit its last token, or None."""
        if not self.members:
            return None
        req, m = min(self.members.items(), key=lambda kv: (kv[1][0], kv[0]))
        return self.last_t + max(m[0], 0.0) * self.step_s, req

    def leave(self, t: float, req: int) -> None:
        self._advance(t)
        m = self.members.pop(req)
        self.used_tokens -= m[2]
        self._restep()

    def depart(self, t: float, req: int) -> list[tuple[int, float]]:
        """``req`` finished at ``t``: it leaves and the waiting requests that now fit join at
        ``t`` (:meth:`admit_waiting`, whose result is returned)."""
        self.leave(t, req)
        return self.admit_waiting(t)
