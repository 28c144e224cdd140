"""Instance timing: roofline prefill, memory-bound decode steps, KV sizes. Pure functions."""
from __future__ import annotations

import numpy as np

from scheduler.model.config import ExperimentConfig


def tp_speedup(tp: int, efficiency: float) -> float:
    """Speedup of a ``tp``-GPU tensor-parallel instance over one GPU: ``tp x efficiency``
    (``timing.tp_efficiency``), exactly 1.0 at tp = 1."""
    return 1.0 if tp == 1 else tp * efficiency


class TimingModel:
    """Prefill and decode times of one instance (``cluster.tp`` GPUs) for the configured model and
    GPU: each GPU holds weights / tp and does 1/tp of the FLOPs and memory traffic, at
    ``tp_speedup``; the instance's KV capacity is the sum over its GPUs."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        m, g, t = cfg.model, cfg.gpu, cfg.timing
        tp = cfg.cluster.tp
        speedup = tp_speedup(tp, t.tp_efficiency)
        self.tp = tp
        self.kv_bytes_per_token = m.kv_bytes_per_token
        self._flops_per_token = 2.0 * m.params_b * 1e9
        # Attention score + value FLOPs per (query token, context token) pair: 2 matmuls x 2 FLOPs/MAC
        # x layers x (q_heads x head_dim).
        self._attn_flops_per_pair = 4.0 * m.layers * m.q_heads * m.head_dim
        # the instance's rates (x 1.0 exactly at tp = 1)
        self._flop_rate = g.peak_tflops * 1e12 * t.prefill_mfu * speedup
        self._hbm_rate = g.hbm_tb_s * 1e12 * t.decode_hbm_efficiency * speedup
        self._weight_bytes = m.weight_bytes
        self._prefill_overhead = t.prefill_overhead_s
        # seconds per new prompt token to write its KV into the paged cache (each GPU writes 1/tp)
        self._kv_save_per_token = m.kv_bytes_per_token / 1e9 * t.prefill_kv_save_s_per_gb / speedup
        self._step_overhead = t.decode_step_overhead_s
        self.weight_bytes_per_gpu = m.weight_bytes / tp
        kv_memory_per_gpu = g.memory_gb * 1e9 * g.memory_utilisation - self.weight_bytes_per_gpu
        self.kv_capacity_tokens = int(kv_memory_per_gpu * tp // m.kv_bytes_per_token)
        """KV tokens the instance's GPUs hold together (the memory left after their weight shards)."""

    def kv_bytes(self, tokens: int) -> int:
        return int(tokens) * self.kv_bytes_per_token

    def prefill_s(self, input_tokens: int, cached_tokens: int = 0) -> float:
        """Compute of the ``input_tokens - cached_tokens`` new tokens attending to the whole prefix:
        max(FLOPs / (peak x MFU), weights read once / HBM) + their KV written to the paged cache
        + fixed overhead."""
        new = max(int(input_tokens) - int(cached_tokens), 0)
        if new == 0:
            return self._prefill_overhead
        cached = input_tokens - new
        flops = self._flops_per_token * new + self._attn_flops_per_pair * new * (cached + new / 2.0)
        return (max(flops / self._flop_rate, self._weight_bytes / self._hbm_rate)
                + new * self._kv_save_per_token + self._prefill_overhead)

    def prefill_attention_s(self, input_tokens: int, cached_tokens: int = 0) -> float:
        """The attention-score part of :meth:`prefill_s`'s compute term (its quadratic FLOPs at the
        same rate): what a comparison against profiles without attention kernels subtracts."""
        new = max(int(input_tokens) - int(cached_tokens), 0)
        return self._attn_flops_per_pair * new * (input_tokens - new + new / 2.0) / self._flop_rate

    def prefill_kv_save_s(self, input_tokens: int, cached_tokens: int = 0) -> float:
        """The KV-write part of :meth:`prefill_s` (``timing.prefill_kv_save_s_per_gb``)."""
        return max(int(input_tokens) - int(cached_tokens), 0) * self._kv_save_per_token

    def prefill_fifo(self, t: float, busy_until: float, input_tokens: int,
                     cached_tokens: int = 0) -> tuple[float, float]:
        """(start, end) of a prefill submitted at ``t`` to an instance whose FIFO is busy until
        ``busy_until``: it starts when both have come, and lasts :meth:`prefill_s`."""
        start = max(t, busy_until)
        return start, start + self.prefill_s(input_tokens, cached_tokens)

    SCALAR_MAX_INSTANCES = 128
    """Up to this many instances :meth:`prefill_s_array` evaluates :meth:`prefill_s` per distinct
    length (a memo beats numpy's per-call overhead on small clusters); beyond, the vectorised
    formula (the same model; its last bits may differ, so every caller goes through here)."""

    def prefill_s_array(self, input_tokens: int, cached_tokens: np.ndarray) -> np.ndarray:
        """:meth:`prefill_s` for one prompt over an array of cached-prefix lengths. Instances share
        a handful of distinct hit lengths (none, the system prompt, a conversation), so each
        distinct length is computed once."""
        if len(cached_tokens) <= self.SCALAR_MAX_INSTANCES:
            memo: dict[int, float] = {}
            return np.array([memo[c] if c in memo else memo.setdefault(c, self.prefill_s(input_tokens, c))
                             for c in cached_tokens.tolist()])
        return self._prefill_s_vector(input_tokens, cached_tokens)

    def prefill_s_values(self, input_tokens: int, cached_tokens: list[int], n_instances: int) -> list[float]:
        """The entries :meth:`prefill_s_array` gives these cached lengths in an array over
        ``n_instances`` instances, bit for bit, without building that array (a decision asks
        for one value per group of instances with the same hit)."""
        if n_instances <= self.SCALAR_MAX_INSTANCES:  # prefill_s inlined (ints given), same operations
            out = []
            fpt, attn, rate = self._flops_per_token, self._attn_flops_per_pair, self._flop_rate
            floor, overhead = self._weight_bytes / self._hbm_rate, self._prefill_overhead
            kv_save = self._kv_save_per_token
            for c in cached_tokens:
                new = input_tokens - c
                if new <= 0:
                    out.append(overhead)
                    continue
                cached = input_tokens - new
                out.append(max((fpt * new + attn * new * (cached + new / 2.0)) / rate, floor)
                           + new * kv_save + overhead)
            return out
        return self._prefill_s_vector(input_tokens, np.array(cached_tokens, dtype=np.int64)).tolist()

    def _prefill_s_vector(self, input_tokens: int, cached_tokens: np.ndarray) -> np.ndarray:
        cached = np.minimum(cached_tokens, input_tokens).astype(float)
        new = input_tokens - cached
        flops = new * (self._flops_per_token + self._attn_flops_per_pair * (cached + 0.5 * new))
        t = np.maximum(flops / self._flop_rate, self._weight_bytes / self._hbm_rate) + new * self._kv_save_per_token
        t[new <= 0] = 0.0
        return t + self._prefill_overhead

    def decode_step_s(self, context_tokens_in_batch: float) -> float:
        """One decode step of a batch: weights plus every running request's KV read from HBM."""
        moved = self._weight_bytes + context_tokens_in_batch * self.kv_bytes_per_token
        return moved / self._hbm_rate + self._step_overhead
