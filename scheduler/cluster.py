"""Cluster model shared by both backends: instance roles, prefill FIFOs, prefix caches, decode
batches, and the per-request decision context handed to policies.

``DecodeBatch`` lives in ``scheduler.decode`` (shared with the agents' instance model) and is
re-exported here."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

from scheduler.cache import PrefixCacheGroup
from scheduler.config import ConfigError, ExperimentConfig
from scheduler.decode import DecodeBatch, decode_capacity_tokens
from scheduler.oracle import NetworkOracle, OracleQuery
from scheduler.timing import TimingModel
from scheduler.trace import BLOCK_TOKENS, Request
from topology.model import FatTree

__all__ = ["Cluster", "Decision", "DecisionContext", "DecodeBatch", "PLACEMENTS", "Roles", "assign_roles", "role_map"]


PLACEMENTS = ("by-server", "mixed", "by-rack")
"""Role layouts of ``cluster.placement`` (see :func:`assign_roles`)."""


class Roles(NamedTuple):
    """GPU indices by role: serving prefill and decode instances, and reserved (non-serving) GPUs."""

    prefill: np.ndarray
    decode: np.ndarray
    reserved: np.ndarray


def reserved_servers(tree: FatTree, per_pod: int) -> np.ndarray:
    """Server indices (GPU // gpus_per_server) reserved for other jobs: the last ``per_pod``
    servers of every pod."""
    spp = tree.gpp // tree.gps  # servers per pod
    if not 0 <= per_pod < spp:
        raise ConfigError(f"parameter 'cluster.reserved_servers_per_pod' must be within 0..{spp - 1} "
                          f"(a pod has {spp} servers), got {per_pod}")
    pods = np.arange(tree.config.pods)[:, None] * spp
    return np.sort((pods + np.arange(spp - per_pod, spp)[None, :]).reshape(-1))


def assign_roles(tree: FatTree, placement: str, prefill_fraction: float, reserved_per_pod: int = 0) -> Roles:
    """Roles of every GPU. The last ``reserved_per_pod`` servers of each pod are reserved (other
    jobs: they serve nothing, scenarios may use them as traffic endpoints). On the serving GPUs:
    ``by-server`` gives whole servers one role, ``by-rack`` whole ToRs (their serving servers),
    ``mixed`` interleaves roles inside every server. ``prefill_fraction`` of the units (servers,
    racks, or GPU slots of a server) are prefill, spread evenly over the units in GPU order."""
    if placement not in PLACEMENTS:
        raise ConfigError(f"parameter 'cluster.placement' must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    n = tree.n_gpus
    gpus = np.arange(n)
    reserved = np.isin(gpus // tree.gps, reserved_servers(tree, reserved_per_pod))
    serving = gpus[~reserved]
    if placement == "mixed":
        # the slot inside the server decides the role, so every serving server holds both roles;
        # k of the gps slots, evenly interleaved (1/2 of 4 -> slots 0 and 2 are prefill)
        units = serving % tree.gps
        n_units = tree.gps
    else:
        unit = tree.gps if placement == "by-server" else tree.gpt
        # serving units in GPU order, numbered 0.. (a rack's reserved servers are not part of it)
        _, units = np.unique(serving // unit, return_inverse=True)
        n_units = int(units.max()) + 1 if units.size else 0
    k = int(round(n_units * prefill_fraction))
    chosen = sorted({int(i * n_units / k) for i in range(k)}) if k else []
    is_prefill = np.isin(units, chosen)
    prefill, decode = serving[is_prefill], serving[~is_prefill]
    if prefill.size == 0 or decode.size == 0:
        raise ConfigError(
            f"placement '{placement}' with prefill_fraction {prefill_fraction} and "
            f"{reserved_per_pod} reserved server(s) per pod leaves no "
            f"{'prefill' if prefill.size == 0 else 'decode'} instance"
        )
    return Roles(prefill, decode, gpus[reserved])


def role_map(tree: FatTree, roles: Roles) -> dict[str, str]:
    """Server name -> its GPUs' roles, one letter per GPU (P prefill, D decode, R reserved):
    the layout as a reader checks it (``{"p0t0s0": "PPPP", "p0t0s1": "DDDD", ...}``)."""
    letter = np.full(tree.n_gpus, "?", dtype="<U1")
    letter[roles.prefill], letter[roles.decode], letter[roles.reserved] = "P", "D", "R"
    return {tree.server_name(s * tree.gps): "".join(letter[s * tree.gps:(s + 1) * tree.gps])
            for s in range(tree.n_gpus // tree.gps)}


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
        self._costs: dict[int, np.ndarray] = {}

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

    def decode_tiers(self, prefill: int) -> np.ndarray:
        """Tier (0..3) from prefill instance ``prefill`` to every decode instance."""
        return self.cluster.decode_tiers(prefill)

    def transfer_delay_s(self, prefill: int) -> float:
        """Seconds from now until the KV leaves prefill instance ``prefill``: its queue and the
        prefill compute (after-prefill streaming) or the queue and one layer (layer-wise)."""
        compute = float(self.prefill_estimate_s[prefill] - self.prefill_queue_s[prefill])
        if self.cluster.layer_wise:
            return float(self.prefill_queue_s[prefill]) + compute / self.cluster.cfg.model.layers
        return float(self.prefill_estimate_s[prefill])

    def raw_transfer_cost_s(self, prefill: int) -> np.ndarray:
        """Oracle cost (seconds) of moving each candidate's bytes from prefill instance ``prefill``."""
        if self.oracle is None:
            raise RuntimeError("this policy needs a network cost oracle but none was configured")
        hit = self._costs.get(prefill)
        if hit is None:
            src = int(self.cluster.prefill_ids[prefill])
            hit = self._costs[prefill] = self.oracle.cost(OracleQuery(
                src, self.cluster.decode_ids, self.decode_bytes, self.now, self.request.req_id,
                self.now + self.transfer_delay_s(prefill)))
        return hit

    def transfer_cost_s(self, prefill: int) -> np.ndarray:
        """The part of each candidate's transfer that lands in TTFT: the whole oracle cost after
        the prefill; streamed layer by layer, what the prefill compute cannot hide (at least the
        last layer's share): max(cost / layers, cost - compute x (layers - 1) / layers)."""
        cost = self.raw_transfer_cost_s(prefill)
        if not self.cluster.layer_wise:
            return cost
        layers = self.cluster.cfg.model.layers
        compute = float(self.prefill_estimate_s[prefill] - self.prefill_queue_s[prefill])
        return np.maximum(cost / layers, cost - compute * (layers - 1) / layers)


class Cluster:
    """Mutable state of all instances during one replay."""

    def __init__(self, cfg: ExperimentConfig, tree: FatTree) -> None:
        self.cfg = cfg
        self.tree = tree
        self.timing = TimingModel(cfg)
        self.roles = assign_roles(tree, cfg.cluster.placement, cfg.cluster.prefill_fraction,
                                  cfg.cluster.reserved_servers_per_pod)
        self.prefill_ids, self.decode_ids = self.roles.prefill, self.roles.decode
        self.gpu_to_decode = {int(g): i for i, g in enumerate(self.decode_ids)}
        self.decode_capacity_tokens = decode_capacity_tokens(cfg, self.timing)
        kv_tokens = self.timing.kv_capacity_tokens
        self.prefill_cache = PrefixCacheGroup(self.prefill_ids.size,
                                              int(kv_tokens * cfg.cluster.prefill_cache_fraction) // BLOCK_TOKENS)
        self.decode_cache = PrefixCacheGroup(self.decode_ids.size,
                                             int(kv_tokens * cfg.cluster.decode_cache_fraction) // BLOCK_TOKENS)
        self.layer_wise = cfg.timing.kv_streaming == "layer-wise"
        self._tiers: dict[int, np.ndarray] = {}
        self.prefill_busy_until = np.zeros(self.prefill_ids.size)
        self.decode_assigned_tokens = np.zeros(self.decode_ids.size)

    def decode_tiers(self, prefill: int) -> np.ndarray:
        """Tier from prefill instance ``prefill`` to every decode instance (static, memoised)."""
        hit = self._tiers.get(prefill)
        if hit is None:
            hit = self._tiers[prefill] = self.tree.tiers(int(self.prefill_ids[prefill]), self.decode_ids)
        return hit

    def context(self, request: Request, now: float, oracle: NetworkOracle | None) -> DecisionContext:
        return DecisionContext(self, request, now, oracle)

    def describe(self) -> dict:
        return {
            "prefill_instances": int(self.prefill_ids.size),
            "decode_instances": int(self.decode_ids.size),
            "reserved_gpus": int(self.roles.reserved.size),
            "layout": role_map(self.tree, self.roles),
            "kv_capacity_tokens_per_gpu": int(self.timing.kv_capacity_tokens),
            "decode_running_capacity_tokens": int(self.decode_capacity_tokens),
            "prefill_cache_blocks": self.prefill_cache.capacity,
            "decode_cache_blocks": self.decode_cache.capacity,
        }
