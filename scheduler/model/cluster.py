"""Cluster model shared by both backends: instance roles, prefill FIFOs, prefix caches and decode
batches (the per-request view policies read is :mod:`scheduler.decision.context`).

``DecodeBatch`` lives in ``scheduler.model.decode`` (shared with the agents' instance model) and is
re-exported here."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from scheduler.model.cache import PrefixCacheGroup
from scheduler.model.config import ConfigError, ExperimentConfig
from scheduler.model.decode import DecodeBatch, decode_capacity_tokens
from scheduler.model.timing import TimingModel
from scheduler.model.trace import BLOCK_TOKENS
from topology.model import FatTree

__all__ = [
    "PLACEMENTS",
    "Cluster",
    "DecodeBatch",
    "Roles",
    "assign_roles",
    "instance_leaders",
    "operand",
    "role_map",
]


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


_ROLES: dict[tuple, Roles] = {}
"""Roles already assigned, by (topology, placement, fraction, reserved, tp): an experiment builds a
cluster per policy and per tuning run on the same layout."""


def assign_roles(tree: FatTree, placement: str, prefill_fraction: float, reserved_per_pod: int = 0,
                 tp: int = 1) -> Roles:
    """Roles of every GPU (see :func:`_assign_roles`), as read-only arrays computed once per layout."""
    key = (tree.config, placement, prefill_fraction, reserved_per_pod, tp)
    roles = _ROLES.get(key)
    if roles is None:
        roles = _assign_roles(tree, placement, prefill_fraction, reserved_per_pod, tp)
        for a in roles:
            a.flags.writeable = False
        if len(_ROLES) > 64:  # sweeps over many layouts: keep memory bounded
            _ROLES.clear()
        _ROLES[key] = roles
    return roles


def _assign_roles(tree: FatTree, placement: str, prefill_fraction: float, reserved_per_pod: int,
                  tp: int) -> Roles:
    """Roles of every GPU. The last ``reserved_per_pod`` servers of each pod are reserved (other
    jobs: they serve nothing, scenarios may use them as traffic endpoints). On the serving GPUs:
    ``by-server`` gives whole servers one role, ``by-rack`` whole ToRs (their serving servers),
    ``mixed`` interleaves roles inside every server, by instance slot (``tp`` consecutive GPUs,
    so every instance's GPUs share a role). ``prefill_fraction`` of the units (servers, racks, or
    instance slots of a server) are prefill, spread evenly over the units in GPU order.

    On a rail fabric (``topology.kind = "rail"``) a rack is the servers' rack label (the ``t`` of
    their names), a pod the scalable unit; ``by-server`` and ``by-rack`` put every decode GPU on
    the rail of a prefill GPU of the same index, while ``mixed`` gives the roles different slots,
    so different rails: every cross-server transfer then changes rail."""
    if placement not in PLACEMENTS:
        raise ConfigError(f"parameter 'cluster.placement' must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    n = tree.n_gpus
    gpus = np.arange(n)
    reserved = np.isin(gpus // tree.gps, reserved_servers(tree, reserved_per_pod))
    serving = gpus[~reserved]
    if placement == "mixed":
        # the slot inside the server decides the role, so every serving server holds both roles;
        # k of the gps slots, evenly interleaved (1/2 of 4 -> slots 0 and 2 are prefill)
        units = (serving % tree.gps) // tp
        n_units = tree.gps // tp
    else:
        unit = tree.gps if placement == "by-server" else tree.gpt
        # serving units in GPU order, numbered 0.. (a rack's reserved servers are not part of it)
        _, units = np.unique(serving // unit, return_inverse=True)
        n_units = int(units.max()) + 1 if units.size else 0
    k = round(n_units * prefill_fraction)
    chosen = sorted({int(i * n_units / k) for i in range(k)}) if k else []
    is_prefill = np.isin(units, chosen)
    prefill, decode = serving[is_prefill], serving[~is_prefill]
    if prefill.size == 0 or decode.size == 0:
        per_server = f" and cluster.tp={tp} ({tree.gps // tp} instance(s) per server)" if tp > 1 else ""
        raise ConfigError(
            f"placement '{placement}' with prefill_fraction {prefill_fraction}{per_server} and "
            f"{reserved_per_pod} reserved server(s) per pod leaves no "
            f"{'prefill' if prefill.size == 0 else 'decode'} instance"
        )
    return Roles(prefill, decode, gpus[reserved])


def instance_leaders(gpus: np.ndarray, tp: int) -> np.ndarray:
    """The first GPU (leader) of every instance among ``gpus`` (one role's GPUs, whole instances
    of ``tp`` consecutive GPUs aligned on multiples of ``tp``): an instance is named by it, and
    its rank r is GPU leader + r."""
    return gpus if tp == 1 else gpus[gpus % tp == 0]


def instance_map(tree: FatTree, roles: Roles, tp: int) -> dict[str, list[str]]:
    """Role -> instances, each as its GPUs' names joined by '+' (the leader first:
    ``{"prefill": ["p0t0s0g0+p0t0s0g1", ...], "decode": [...]}``)."""
    return {role: ["+".join(tree.gpu_name(int(g) + r) for r in range(tp)) for g in instance_leaders(gpus, tp)]
            for role, gpus in (("prefill", roles.prefill), ("decode", roles.decode))}


def role_map(tree: FatTree, roles: Roles) -> dict[str, str]:
    """Server name -> its GPUs' roles, one letter per GPU (P prefill, D decode, R reserved):
    the layout as a reader checks it (``{"p0t0s0": "PPPP", "p0t0s1": "DDDD", ...}``)."""
    letter = np.full(tree.n_gpus, "?", dtype="<U1")
    letter[roles.prefill], letter[roles.decode], letter[roles.reserved] = "P", "D", "R"
    return {tree.server_name(s * tree.gps): "".join(letter[s * tree.gps:(s + 1) * tree.gps])
            for s in range(tree.n_gpus // tree.gps)}


def operand(value: float) -> np.ndarray:
    """A constant of the decision path as a read-only 0-d float64 array: numpy applies a Python
    float to an array slower than a 0-d array (the same IEEE operation on the same value)."""
    out = np.array(value, dtype=np.float64)
    out.flags.writeable = False
    return out


class Cluster:
    """Mutable state of all instances during one replay."""

    def __init__(self, cfg: ExperimentConfig, tree: FatTree) -> None:
        self.cfg = cfg
        self.tree = tree
        self.timing = TimingModel(cfg)
        self.tp = cfg.cluster.tp
        self.roles = assign_roles(tree, cfg.cluster.placement, cfg.cluster.prefill_fraction,
                                  cfg.cluster.reserved_servers_per_pod, self.tp)
        # instances by their leader GPU (rank r of an instance is leader + r)
        self.prefill_ids = instance_leaders(self.roles.prefill, self.tp)
        self.decode_ids = instance_leaders(self.roles.decode, self.tp)
        self.prefill_gpus: list[int] = self.prefill_ids.tolist()  # as Python ints, for oracle queries
        # the GPUs of rank r of every decode instance, one array per rank (the oracle's candidates)
        self.decode_rank_ids = [self.decode_ids + r for r in range(self.tp)]
        self.gpu_to_decode = {int(g): i for i, g in enumerate(self.decode_ids)}
        self.decode_capacity_tokens = decode_capacity_tokens(cfg, self.timing)
        self.decode_capacity_0d = operand(self.decode_capacity_tokens)  # exact (an int < 2**53)
        kv_tokens = self.timing.kv_capacity_tokens
        self.prefill_cache = PrefixCacheGroup(self.prefill_ids.size,
                                              int(kv_tokens * cfg.cluster.prefill_cache_fraction) // BLOCK_TOKENS)
        self.decode_cache = PrefixCacheGroup(self.decode_ids.size,
                                             int(kv_tokens * cfg.cluster.decode_cache_fraction) // BLOCK_TOKENS)
        self.layer_wise = cfg.timing.kv_streaming == "layer-wise"
        self._tiers: dict[int, np.ndarray] = {}
        self.memo: dict[tuple, np.ndarray] = {}
        """Static views of the decision path (functions of the roles and the topology only),
        memoised for the run by :class:`scheduler.decision.context.DecisionContext`."""
        self.prefill_busy_until = np.zeros(self.prefill_ids.size)
        self.decode_assigned_tokens = np.zeros(self.decode_ids.size)

    def decode_tiers(self, prefill: int) -> np.ndarray:
        """Tier from prefill instance ``prefill`` to every decode instance (static, memoised)."""
        hit = self._tiers.get(prefill)
        if hit is None:
            hit = self._tiers[prefill] = self.tree.tiers(int(self.prefill_ids[prefill]), self.decode_ids)
        return hit

    def describe(self) -> dict:
        return {
            "tp": self.tp,
            "prefill_instances": int(self.prefill_ids.size),
            "decode_instances": int(self.decode_ids.size),
            "reserved_gpus": int(self.roles.reserved.size),
            "layout": role_map(self.tree, self.roles),
            "instances": instance_map(self.tree, self.roles, self.tp),
            "weight_bytes_per_gpu": self.timing.weight_bytes_per_gpu,
            "kv_capacity_tokens_per_instance": int(self.timing.kv_capacity_tokens),
            "kv_capacity_tokens_per_gpu": int(self.timing.kv_capacity_tokens) // self.tp,
            "decode_running_capacity_tokens": int(self.decode_capacity_tokens),
            "prefill_cache_blocks": self.prefill_cache.capacity,
            "decode_cache_blocks": self.decode_cache.capacity,
        }


def kv_tier_pairs(tree: FatTree, prefill: np.ndarray, decode: np.ndarray) -> dict[int, tuple[int, int]]:
    """One (prefill GPU, decode GPU) pair per tier some KV transfer of this placement can take: the
    paths calibration measures (``by-rack`` has none on tiers 0 and 1, its prefill racks holding no
    decode instance). The first prefill GPU that has a decode GPU at that tier, and the first such
    decode GPU."""
    out: dict[int, tuple[int, int]] = {}
    for p in prefill:
        tiers = tree.tiers(int(p), decode)
        for tier in np.unique(tiers):
            out.setdefault(int(tier), (int(p), int(decode[np.flatnonzero(tiers == tier)[0]])))
    return dict(sorted(out.items()))
