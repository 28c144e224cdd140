"""Cluster model shared by both backends: instance roles, prefill FIFOs, prefix caches, decode
batches, and the per-request decision context handed to policies.

``DecodeBatch`` lives in ``scheduler.decode`` (shared with the agents' instance model) and is
re-exported here."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from scheduler.cache import PrefixCacheGroup
from scheduler.config import ConfigError, ExperimentConfig
from scheduler.decode import DecodeBatch, decode_capacity_tokens
from scheduler.oracle import NetworkOracle, OracleQuery
from scheduler.timing import TimingModel
from scheduler.trace import BLOCK_TOKENS, Request
from topology.model import FatTree

__all__ = ["Cluster", "Decision", "DecisionContext", "DecodeBatch", "assign_roles"]


def assign_roles(tree: FatTree, placement: str, prefill_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(prefill GPU indices, decode GPU indices). ``mixed`` interleaves roles inside every server,
    ``by-server``/``by-rack`` give whole servers/ToRs one role; ``prefill_fraction`` of the units
    (GPUs in a server, servers, or ToRs) are prefill, spread evenly."""
    n = tree.n_gpus
    unit = {"mixed": 1, "by-server": tree.gps, "by-rack": tree.gpt}[placement]
    if placement == "mixed":
        # the slot inside the server decides the role, so every server holds both roles;
        # k of the gps slots, evenly interleaved (1/2 of 4 -> slots 0 and 2 are prefill)
        per = tree.gps
        k = int(round(per * prefill_fraction))
        chosen = sorted({int(i * per / k) for i in range(k)}) if k else []
        is_prefill = np.isin(np.arange(n) % per, chosen)
    else:
        units = n // unit
        k = int(round(units * prefill_fraction))
        chosen = sorted({int(i * units / k) for i in range(k)}) if k else []
        is_prefill = np.isin(np.arange(n) // unit, chosen)
    prefill = np.flatnonzero(is_prefill)
    decode = np.flatnonzero(~is_prefill)
    if prefill.size == 0 or decode.size == 0:
        raise ConfigError(
            f"placement '{placement}' with prefill_fraction {prefill_fraction} leaves no "
            f"{'prefill' if prefill.size == 0 else 'decode'} instance"
        )
    return prefill, decode


@dataclass
class Decision:
    prefill: int  # index into Cluster.prefill_ids
    decode: int  # index into Cluster.decode_ids


class DecisionContext:
    """Everything a policy may look at for one request; each view is computed at most once."""

    def __init__(self, cluster: "Cluster", request: Request, now: float, oracle: NetworkOracle | None) -> None:
        self.cluster = cluster
        self.request = request
        self.now = now
        self.oracle = oracle

    @property
    def n_prefill(self) -> int:
        return self.cluster.prefill_ids.size

    @property
    def n_decode(self) -> int:
        return self.cluster.decode_ids.size

    def _cached_tokens(self, group: PrefixCacheGroup) -> np.ndarray:
        blocks = group.prefix_blocks(self.request.hash_ids)
        return np.minimum(blocks * BLOCK_TOKENS, self.request.input_tokens)

    @cached_property
    def prefill_cached_tokens(self) -> np.ndarray:
        return self._cached_tokens(self.cluster.prefill_cache)

    @cached_property
    def prefill_queue_s(self) -> np.ndarray:
        return np.maximum(self.cluster.prefill_busy_until - self.now, 0.0)

    @cached_property
    def prefill_estimate_s(self) -> np.ndarray:
        """Queue + prefill compute given each instance's cache hit (Mooncake Conductor's TTFT terms)."""
        t = self.cluster.timing
        return self.prefill_queue_s + t.prefill_s_array(self.request.input_tokens, self.prefill_cached_tokens)

    @cached_property
    def decode_cached_tokens(self) -> np.ndarray:
        return self._cached_tokens(self.cluster.decode_cache)

    @cached_property
    def decode_bytes(self) -> np.ndarray:
        """KV bytes each decode candidate needs moved: the prompt blocks it does not already hold."""
        missing = self.request.input_tokens - self.decode_cached_tokens
        return missing.astype(float) * self.cluster.timing.kv_bytes_per_token

    @cached_property
    def decode_load(self) -> np.ndarray:
        """Tokens assigned to each decode instance (running + on their way) / its running capacity."""
        return self.cluster.decode_assigned_tokens / self.cluster.decode_capacity_tokens

    def transfer_cost_s(self, prefill: int) -> np.ndarray:
        """Oracle cost of moving each candidate's bytes from prefill instance ``prefill``."""
        if self.oracle is None:
            raise RuntimeError("this policy needs a network cost oracle but none was configured")
        src = int(self.cluster.prefill_ids[prefill])
        return self.oracle.cost(OracleQuery(src, self.cluster.decode_ids, self.decode_bytes, self.now,
                                            flow_key=self.request.req_id))


class Cluster:
    """Mutable state of all instances during one replay."""

    def __init__(self, cfg: ExperimentConfig, tree: FatTree) -> None:
        self.cfg = cfg
        self.tree = tree
        self.timing = TimingModel(cfg)
        self.prefill_ids, self.decode_ids = assign_roles(tree, cfg.cluster.placement, cfg.cluster.prefill_fraction)
        self.gpu_to_decode = {int(g): i for i, g in enumerate(self.decode_ids)}
        self.decode_capacity_tokens = decode_capacity_tokens(cfg, self.timing)
        kv_tokens = self.timing.kv_capacity_tokens
        self.prefill_cache = PrefixCacheGroup(self.prefill_ids.size,
                                              int(kv_tokens * cfg.cluster.prefill_cache_fraction) // BLOCK_TOKENS)
        self.decode_cache = PrefixCacheGroup(self.decode_ids.size,
                                             int(kv_tokens * cfg.cluster.decode_cache_fraction) // BLOCK_TOKENS)
        self.prefill_busy_until = np.zeros(self.prefill_ids.size)
        self.decode_assigned_tokens = np.zeros(self.decode_ids.size)

    def context(self, request: Request, now: float, oracle: NetworkOracle | None) -> DecisionContext:
        return DecisionContext(self, request, now, oracle)

    def describe(self) -> dict:
        return {
            "prefill_instances": int(self.prefill_ids.size),
            "decode_instances": int(self.decode_ids.size),
            "kv_capacity_tokens_per_gpu": int(self.timing.kv_capacity_tokens),
            "decode_running_capacity_tokens": int(self.decode_capacity_tokens),
            "prefill_cache_blocks": self.prefill_cache.capacity,
            "decode_cache_blocks": self.decode_cache.capacity,
        }
