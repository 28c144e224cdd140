"""Every constant of the model, named, documented and overridable (``--set section.field=value``).

Each config is a dataclass whose fields carry their help text in ``metadata["help"]`` (the
Vidur style), so ``netkv constants`` can list them and ``summary.json`` can record them.
Every section and its validation are in this one file: the one place a reader looks up a
constant, its default and its source.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from controller.settings import DEFAULT_POLL_INTERVAL_S
from topology.model import FatTreeConfig, TopologyError


class ConfigError(ValueError):
    """A configuration value or override is invalid; the message names the parameter."""


def param(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


# ----------------------------------------------------------------------------- model presets
@dataclass(frozen=True)
class ModelPreset:
    """Transformer shape: decides KV bytes per token, prefill FLOPs and decode memory traffic."""

    name: str = param("llama-3-8b", "preset name")
    layers: int = param(32, "transformer layers")
    q_heads: int = param(32, "attention (query) heads")
    kv_heads: int = param(8, "KV heads (GQA)")
    head_dim: int = param(128, "head dimension")
    params_b: float = param(8.03, "parameters, billions (FLOPs per token = 2 x params)")
    weight_bytes_per_param: float = param(2.0, "bytes per weight (bf16 = 2, fp8 = 1)")
    kv_bytes_per_element: float = param(2.0, "bytes per KV element (bf16 = 2)")
    max_context_tokens: int = param(131072, "context window, tokens (Llama-3.1-8B: 128k; the conversation "
                                    "trace's prompts reach 126k); --context-scale caps prompts at it")

    @property
    def kv_bytes_per_token(self) -> int:
        """2 (K and V) x layers x kv_heads x head_dim x bytes/element (reference section 2)."""
        return int(2 * self.layers * self.kv_heads * self.head_dim * self.kv_bytes_per_element)

    @property
    def weight_bytes(self) -> float:
        return self.params_b * 1e9 * self.weight_bytes_per_param


MODEL_PRESETS: dict[str, ModelPreset] = {
    "llama-3-8b": ModelPreset(),
    # 70B: fp8 weights (70.6 GB), KV stays bf16 = 320 KiB/token; served tensor-parallel (DEFAULT_TP).
    "llama-3-70b": ModelPreset("llama-3-70b", 80, 64, 8, 128, 70.6, 1.0, 2.0, 131072),
    # Llama-2's window is 4k: a trace with longer prompts exceeds it (--context-scale caps them)
    "llama-2-7b": ModelPreset("llama-2-7b", 32, 32, 32, 128, 6.74, 2.0, 2.0, 4096),
    # Qwen2.5-7B: 32k native (128k only with YaRN scaling)
    "qwen2.5-7b": ModelPreset("qwen2.5-7b", 28, 28, 4, 128, 7.62, 2.0, 2.0, 32768),
}

# ----------------------------------------------------------------------------- hardware
@dataclass(frozen=True)
class GpuConfig:
    """One GPU instance's compute and memory (reference section 3). Presets take NVIDIA's
    datasheet figures; what a GPU achieves of them is ``timing.prefill_mfu`` and
    ``timing.decode_hbm_efficiency``, calibrated against Vidur's operator profiles
    (docs/calibration.md, "Compute model against profiled GPUs")."""

    name: str = param("h100-sxm", "GPU preset name")
    peak_tflops: float = param(989.0, "dense bf16 peak, TFLOP/s (NVIDIA H100 SXM datasheet: 989; A100: 312)")
    hbm_tb_s: float = param(3.35, "HBM bandwidth, TB/s (datasheets: H100 SXM HBM3 3.35, H200 4.8, "
                            "A100 80GB SXM HBM2e 2.039)")
    memory_gb: float = param(80.0, "HBM capacity, GB")
    memory_utilisation: float = param(0.9, "fraction of HBM the engine may use (vLLM's default 0.9)")


GPU_PRESETS: dict[str, GpuConfig] = {
    "h100-sxm": GpuConfig(),
    "h200": GpuConfig("h200", 989.0, 4.8, 141.0, 0.9),
    # NVIDIA A100 Tensor Core GPU datasheet, 80GB SXM: bf16 dense 312 TFLOP/s, HBM2e 2,039 GB/s;
    # the GPU of Vidur's a100 profiles (data/profiling/compute/a100, an 80 GB DGX A100)
    "a100-sxm": GpuConfig("a100-sxm", 312.0, 2.039, 80.0, 0.9),
}
"""GPU presets (``--gpu``): datasheet peaks; h100-sxm and a100-sxm are the two GPUs the compute
model is checked against (docs/calibration.md)."""

DEFAULT_GPU_FOR_MODEL = {"llama-3-70b": "h200"}

DEFAULT_TP: dict[tuple[str, str], int] = {
    ("llama-3-70b", "h100-sxm"): 4,
    ("llama-3-70b", "h200"): 2,
}
"""``cluster.tp`` of a (model, GPU) preset pair (1 when absent). The rule behind every entry: the
smallest power of two at which a decode instance's running share (its KV capacity x
(1 - ``cluster.decode_cache_fraction`` = 0.5)) holds one request of the model's whole context
window. Llama-3-70B (fp8, 320 KiB/token, 128k window): on H100s tp=1 leaves 4.3k KV tokens
(weights fill 98% of the usable 72 GB), tp=2 a 112k running share, tp=4 331k (17.7 GB of weights
per GPU); on H200s tp=1 runs 85k, tp=2 279k. The 7-8B presets fit their window at tp=1 (8B on an
H100: a 213k running share)."""


KV_STREAMING = ("after-prefill", "layer-wise")
SLO_DEFINITIONS = ("fixed", "ttft-only", "per-request")
"""How a request counts as meeting its SLO (see :class:`SloConfig`)."""


@dataclass(frozen=True)
class TimingConfig:
    """Roofline-style prefill and memory-bound decode timing."""

    prefill_mfu: float = param(0.71, "achieved fraction of gpu.peak_tflops in prefill, counted on 2 x model.params_b "
                               "FLOPs per token plus the attention scores: fitted to Vidur's profiled per-layer "
                               "operators (microsoft/vidur@7d47513 data/profiling/compute/a100/meta-llama/"
                               "Meta-Llama-3-8B and h100/meta-llama/Llama-2-7b-hf, tp=1) within +-4% from 1k to 16k "
                               "tokens (docs/calibration.md)")
    prefill_kv_save_s_per_gb: float = param(0.13, "seconds per GB of new KV a prefill writes into the paged cache "
                                            "(0 = free): Vidur's attn_kv_cache_save operator, 0.126-0.138 s/GB over "
                                            "1k-16k-token prefills of Llama-3-8B on an A100 (its attention.csv); "
                                            "its decode steps' writes are negligible and not charged")
    prefill_overhead_s: float = param(0.002, "fixed per-prefill time, s: fitted with prefill_mfu to Vidur's operator "
                                      "sums (which leave out the CPU-side scheduling Vidur models apart)")
    decode_hbm_efficiency: float = param(0.78, "achieved fraction of gpu.hbm_tb_s in decode steps (weights of "
                                         "model.params_b plus the batch's KV read once): fitted to Vidur's profiled "
                                         "decode operators (A100 Llama-3-8B at 4k context, H100 Llama-2-7B linear "
                                         "layers) within +-5% at batch 1-32 (docs/calibration.md)")
    decode_step_overhead_s: float = param(0.0005, "fixed per-decode-step time, s: fitted with decode_hbm_efficiency "
                                          "to the same profiles")
    tp_efficiency: float = param(0.9, "fraction of the ideal tp-fold speedup a tensor-parallel instance reaches "
                                 "in prefill compute and decode memory traffic (each GPU does 1/tp of both; "
                                 "two all-reduces per layer over NVLink cost the rest). 1.0 = ideal scaling; "
                                 "0.9 is an assumption: Megatron-LM measured 77% of linear scaling at 8-way TP "
                                 "on V100 NVLink (Shoeybi et al. 2019), H100 NVSwitch has 3x its bandwidth and "
                                 "tp <= 4 all-reduces over fewer GPUs; no effect at cluster.tp=1")
    transfer_setup_s: float = param(30e-6, "KV transfer setup (RDMA registration/handshake: tens of us)")
    kv_streaming: str = param("after-prefill", "when KV leaves the prefill instance: 'after-prefill' (the whole "
                              "cache once the prefill ends: vLLM's NIXL connector under llm-d and Dynamo, the "
                              "transfer fully in TTFT) or 'layer-wise' (each layer's KV as soon as it is computed: "
                              "Mooncake, Splitwise; only the part the network cannot hide stays in TTFT)")


@dataclass(frozen=True)
class ClusterConfig:
    """Instance roles and caches."""

    tp: int = param(1, "tensor-parallel degree: GPUs per instance, consecutive GPUs of one server (must "
                    "divide topology.gpus_per_server); the instance's first GPU (the leader) names it. "
                    "Weights split over its GPUs, KV capacity is their sum, compute scales by "
                    "tp x timing.tp_efficiency and KV transfers stripe rank r -> rank r over the GPUs' "
                    "NICs. Default per model/GPU preset (config.DEFAULT_TP): 1, llama-3-70b 4 on "
                    "h100-sxm and 2 on h200, the smallest tp whose decode running share holds a "
                    "whole-context request")
    placement: str = param("by-rack", "GPU roles on the serving servers: 'by-server' (whole servers are prefill "
                           "or decode, alternating in server order: disaggregated pools as Mooncake, Splitwise, "
                           "llm-d and Dynamo deploy them), 'mixed' (both roles inside every server), 'by-rack' "
                           "(whole ToRs)")
    reserved_servers_per_pod: int = param(1, "servers at the end of every pod that serve nothing (reserved for "
                                          "other jobs: a shared cluster); scenarios use their GPUs as traffic "
                                          "endpoints, so congestion can sit on fabric links without a serving NIC")
    prefill_fraction: float = param(0.5, "fraction of GPUs that are prefill instances")
    decode_cache_fraction: float = param(0.5, "fraction of a decode GPU's KV memory kept as prefix cache "
                                         "(the rest holds running requests)")
    prefill_cache_fraction: float = param(1.0, "fraction of a prefill GPU's KV memory used as prefix cache")


@dataclass(frozen=True)
class OracleConfig:
    """Telemetry the network cost oracle sees (same cadence as the Ryu controller's polling)."""

    kind: str = param("telemetry", "default oracle of oracle-consuming policies (a policy spec such as "
                      "'netkv:static' picks its own): static, telemetry, inflight, perfect "
                      "(see scheduler/decision/oracle.py)")
    poll_interval_s: float = param(DEFAULT_POLL_INTERVAL_S, "port-statistics polling interval, s (controller default)")
    staleness_s: float = param(0.0, "age of the telemetry snapshot the oracle answers from, s")
    min_available_fraction: float = param(0.1, "a new flow on a saturated link still gets at least this "
                                          "fraction of its capacity (TCP/RDMA fair share against a few flows)")
    saturated_link_flows: float = param(6.0, "elastic flows a live oracle assumes share a busy link (telemetry shows "
                                        "load, not flows): a new flow gets max(1 - utilisation, 1 / (flows + 1)) "
                                        "of the capacity, its max-min share against that many; 9 gives the "
                                        "min_available_fraction floor alone (10x the idle price on a saturated "
                                        "link); 6: of 1, 2, 4, 6 and 9, the one without a loss against netkv:static at "
                                        "long contexts on the conversation trace (docs/predictive-and-joint.md)")
    fallback_polls: float = param(4.0, "a telemetry oracle whose newest usable snapshot is older than this many poll "
                                  "intervals (telemetry stopped: controller down) prices like the static oracle, "
                                  "counted in the summary, until telemetry returns; 4 polls: one late or lost reply "
                                  "is normal, four in a row is an outage; the simulator's never are")
    persistence_s: float = param(0.0, "predictive oracle only (other kinds ignore it): how long, s, it trusts the "
                                 "snapshot's background for a transfer expected to start later; beyond it the "
                                 "background decays toward the idle price as exp(-(lead - P) / P); 0: off (the "
                                 "live price whatever the lead). Off by default: 1 s shortens decode-flap's tail "
                                 "transfers (its background swaps every 15 s) but loses up to 2.5% mean TTFT in "
                                 "rolling, whose background persists (docs/mechanisms.md)")


@dataclass(frozen=True)
class TuningConfig:
    """Grid search of the load weights of cache-load and netkv on a held-out slice."""

    tune_requests: int = param(500, "requests in the held-out tuning slice (taken from the trace's end)")
    cache_load_weights: tuple = param((0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
                                      "cache-load: load weight per unit of cache-miss fraction")
    netkv_weights_s: tuple = param((0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
                                   "netkv: seconds of cost per unit of decode load fraction")
    affinity_weights: tuple = param((0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
                                    "topology-affinity: weight of llm-d's tier score (1 / 0.2 / 0.05 / 0.02) against "
                                    "cache-load's score (its load weight is cache-load's tuned one)")
    tbt_tolerance_ms: float = param(0.5, "tuning picks the lowest mean TTFT among weights whose mean TBT is "
                                    "within this of the best (the paper's TBT-overhead bound)")


@dataclass(frozen=True)
class SloConfig:
    """Service-level objectives a request must meet to count as attained, under three definitions
    (all reported; ``definition`` names the one ``slo_attainment``, the tables' "SLO met" column and
    the comparison use); ``scheduler/results/metrics.py`` measures records against it.

    ``fixed``: TTFT <= ``ttft_s`` and mean TBT <= ``tbt_ms``. ``ttft-only``: TTFT <= ``ttft_s``.
    ``per-request``: TTFT <= ``ttft_fixed_s + ttft_per_token_ms x prompt tokens`` and mean TBT <=
    ``tbt_ms`` (DistServe/Splitwise style: a long prompt may take longer).

    ``ttft_s`` (default 2.0 s): chosen for interactive chat on an 8B-class model with long prompts:
    DistServe uses 0.2-0.4 s for *short* chat prompts, Mooncake 30 s for long-context 70B serving;
    the conversation trace's prompts average about 12k tokens, whose prefill alone takes on the
    order of a second, so 2 s leaves room for queueing and the KV transfer while still being
    interactive. ``tbt_ms`` (default 100.0 ms): Mooncake's tightest TBT SLO and DistServe's TPOT
    SLO of 0.1 s for chat. Invalid objectives are a ``ConfigError`` naming the ``slo.`` parameter.
    """

    definition: str = param("fixed", "default SLO definition: 'fixed' (TTFT <= ttft_s and mean TBT <= tbt_ms), "
                            "'ttft-only' (TTFT <= ttft_s) or 'per-request' (TTFT <= ttft_fixed_s + "
                            "ttft_per_token_ms x prompt tokens, and mean TBT <= tbt_ms)")
    ttft_s: float = param(2.0, "TTFT SLO, s (interactive chat on an 8B-class model with ~12k-token prompts)")
    tbt_ms: float = param(100.0, "TBT SLO, ms (Mooncake's tightest; DistServe's TPOT 0.1 s)")
    ttft_fixed_s: float = param(0.2, "per-request TTFT SLO, fixed part, s: DistServe's chatbot TTFT SLO (0.2 s, "
                                "OPT-13B), the allowance of a short prompt")
    ttft_per_token_ms: float = param(0.065, "per-request TTFT SLO, per prompt token, ms: Splitwise's rule of an "
                                     "SLO as a multiple of the uncontended latency, set at twice the default "
                                     "model's unloaded prefill per token under the earlier 50%-MFU timing (~0.032 "
                                     "ms); the timing calibrated on Vidur's H100/A100 profiles gives ~0.042 ms, so "
                                     "about 1.5x now (kept, so SLO figures stay comparable across reports)")

    def __post_init__(self) -> None:
        for name in ("ttft_s", "tbt_ms", "ttft_fixed_s", "ttft_per_token_ms"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"parameter 'slo.{name}' must be > 0, got {value}")
            if not math.isfinite(value):
                raise ConfigError(f"parameter 'slo.{name}' must be finite, got {value}")
        if self.definition not in SLO_DEFINITIONS:
            raise ConfigError(f"parameter 'slo.definition' must be one of {', '.join(SLO_DEFINITIONS)}, "
                              f"got {self.definition!r}")

    def scaled(self, scale: float) -> SloConfig:
        """Every objective multiplied by ``scale`` (> 0)."""
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"SLO scale must be a positive finite number, got {scale!r}")
        return SloConfig(definition=self.definition, ttft_s=self.ttft_s * scale, tbt_ms=self.tbt_ms * scale,
                         ttft_fixed_s=self.ttft_fixed_s * scale, ttft_per_token_ms=self.ttft_per_token_ms * scale)

    def ttft_limits(self, input_tokens: np.ndarray, definition: str | None = None) -> np.ndarray:
        """Each request's TTFT objective, seconds, under ``definition`` (default: this one's)."""
        if (definition or self.definition) == "per-request":
            return self.ttft_fixed_s + self.ttft_per_token_ms * 1e-3 * np.asarray(input_tokens, dtype=float)
        return np.full(np.shape(input_tokens), self.ttft_s)


SECTIONS: dict[str, type] = {
    "topology": FatTreeConfig,
    "model": ModelPreset,
    "gpu": GpuConfig,
    "timing": TimingConfig,
    "cluster": ClusterConfig,
    "oracle": OracleConfig,
    "tuning": TuningConfig,
    "slo": SloConfig,
}


@dataclass(frozen=True)
class ExperimentConfig:
    topology: FatTreeConfig = field(default_factory=FatTreeConfig)
    model: ModelPreset = field(default_factory=ModelPreset)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    slo: SloConfig = field(default_factory=SloConfig)

    def to_dict(self) -> dict:
        out = {}
        for name in SECTIONS:
            out[name] = dataclasses.asdict(getattr(self, name))
        out["model"]["kv_bytes_per_token"] = self.model.kv_bytes_per_token
        return out


DERIVED_FIELDS = {"model": ("kv_bytes_per_token",)}
"""Fields ``ExperimentConfig.to_dict`` adds for readers that are computed, not set."""


def config_from_dict(data: dict) -> ExperimentConfig:
    """The :class:`ExperimentConfig` whose ``to_dict()`` (possibly through JSON, which turns tuples
    into lists) is ``data``: ``config_from_dict(cfg.to_dict()) == cfg``. Missing sections and
    fields take their defaults; an unknown section or field, a value of the wrong type, or a
    config ``validate`` rejects raises ``ConfigError`` naming it."""
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config section(s) {', '.join(map(repr, unknown))} (known: {', '.join(SECTIONS)})")
    parts: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        values = data.get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' must be a mapping, got {type(values).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for fname, value in values.items():
            if fname in DERIVED_FIELDS.get(section, ()):
                continue
            f = known.get(fname)
            if f is None:
                raise ConfigError(f"unknown parameter '{section}.{fname}' (known: {', '.join(known)})")
            kwargs[fname] = _typed(f"{section}.{fname}", f.default, value)
        try:
            parts[section] = cls(**kwargs)
        except TopologyError as exc:
            raise ConfigError(f"config section '{section}': {exc}") from None
    cfg = ExperimentConfig(**parts)
    validate(cfg)
    return cfg


def _typed(name: str, default: Any, value: Any) -> Any:
    """``value`` as the type of the field's ``default`` (ints may stand for floats, lists for
    tuples); ``ConfigError`` otherwise."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
        value = tuple(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"parameter '{name}' must be {type(default).__name__}, got {value!r}")
    return value


def _coerce(cls: type, fname: str, raw: str) -> Any:
    f = next((f for f in dataclasses.fields(cls) if f.name == fname), None)
    if f is None:
        names = ", ".join(x.name for x in dataclasses.fields(cls))
        raise ConfigError(f"unknown parameter '{fname}' (known: {names})")
    default = f.default
    try:
        if isinstance(default, bool):
            return raw.lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(float(x) for x in raw.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"parameter '{fname}': cannot parse {raw!r} as {type(default).__name__}") from None
    return raw


ORACLE_KINDS = ("static", "telemetry", "inflight", "perfect", "predictive")
"""The network cost oracle kinds ``oracle.kind`` may name: the registry of
:mod:`scheduler.decision.oracle` (one class each), listed here so the model validates a config
without importing the decision layer; a test holds the two equal."""


def build_config(model: str = "llama-3-8b", gpu: str | None = None,
                 overrides: list[str] | None = None) -> ExperimentConfig:
    """Presets plus ``section.field=value`` overrides; errors name the parameter."""
    if model not in MODEL_PRESETS:
        raise ConfigError(f"unknown --model {model!r} (presets: {', '.join(MODEL_PRESETS)})")
    gpu = gpu or DEFAULT_GPU_FOR_MODEL.get(model, "h100-sxm")
    if gpu not in GPU_PRESETS:
        raise ConfigError(f"unknown GPU preset {gpu!r} (presets: {', '.join(GPU_PRESETS)})")
    parts: dict[str, Any] = {name: cls() for name, cls in SECTIONS.items()}
    parts["model"] = MODEL_PRESETS[model]
    parts["gpu"] = GPU_PRESETS[gpu]
    parts["cluster"] = dataclasses.replace(parts["cluster"], tp=DEFAULT_TP.get((model, gpu), 1))
    changes: dict[str, dict[str, Any]] = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        section, dot, fname = key.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set {item!r}: expected section.field=value (e.g. topology.nic_gbit_s=200)")
        if section not in SECTIONS:
            raise ConfigError(f"--set {item!r}: unknown section '{section}' (known: {', '.join(SECTIONS)})")
        try:
            changes.setdefault(section, {})[fname] = _coerce(SECTIONS[section], fname, raw.strip())
        except ConfigError as exc:
            raise ConfigError(f"--set {item!r}: {exc}") from None
    for section, kv in changes.items():
        try:
            parts[section] = dataclasses.replace(parts[section], **kv)
        except TopologyError as exc:
            raise ConfigError(f"--set {section}: {exc}") from None
    cfg = ExperimentConfig(**parts)
    validate(cfg)
    return cfg


def validate(cfg: ExperimentConfig) -> None:
    positive = [
        ("model.layers", cfg.model.layers), ("model.kv_heads", cfg.model.kv_heads),
        ("model.max_context_tokens", cfg.model.max_context_tokens),
        ("model.head_dim", cfg.model.head_dim), ("model.params_b", cfg.model.params_b),
        ("gpu.peak_tflops", cfg.gpu.peak_tflops), ("gpu.hbm_tb_s", cfg.gpu.hbm_tb_s),
        ("gpu.memory_gb", cfg.gpu.memory_gb), ("timing.prefill_mfu", cfg.timing.prefill_mfu),
        ("timing.decode_hbm_efficiency", cfg.timing.decode_hbm_efficiency),
        ("timing.tp_efficiency", cfg.timing.tp_efficiency),
        ("oracle.poll_interval_s", cfg.oracle.poll_interval_s),
        ("oracle.fallback_polls", cfg.oracle.fallback_polls),
        ("oracle.saturated_link_flows", cfg.oracle.saturated_link_flows),
    ]
    for name, value in positive:
        if not value > 0:
            raise ConfigError(f"parameter '{name}' must be > 0, got {value}")
    fractions = [
        ("timing.prefill_mfu", cfg.timing.prefill_mfu), ("cluster.prefill_fraction", cfg.cluster.prefill_fraction),
        ("cluster.decode_cache_fraction", cfg.cluster.decode_cache_fraction),
        ("cluster.prefill_cache_fraction", cfg.cluster.prefill_cache_fraction),
        ("oracle.min_available_fraction", cfg.oracle.min_available_fraction),
        ("gpu.memory_utilisation", cfg.gpu.memory_utilisation),
        ("timing.tp_efficiency", cfg.timing.tp_efficiency),
    ]
    for name, value in fractions:
        if not 0 <= value <= 1:
            raise ConfigError(f"parameter '{name}' must be within 0..1, got {value}")
    non_negative = [
        ("timing.prefill_overhead_s", cfg.timing.prefill_overhead_s),
        ("timing.prefill_kv_save_s_per_gb", cfg.timing.prefill_kv_save_s_per_gb),
        ("timing.decode_step_overhead_s", cfg.timing.decode_step_overhead_s),
        ("timing.transfer_setup_s", cfg.timing.transfer_setup_s),
        ("tuning.tune_requests", cfg.tuning.tune_requests),
    ]
    for name, value in non_negative:
        if not value >= 0:
            raise ConfigError(f"parameter '{name}' must be >= 0, got {value}")
    if not 0 < cfg.cluster.prefill_fraction < 1:
        raise ConfigError(f"parameter 'cluster.prefill_fraction' must be strictly between 0 and 1 "
                          f"(both roles are needed), got {cfg.cluster.prefill_fraction}")
    if cfg.timing.kv_streaming not in KV_STREAMING:
        raise ConfigError(f"parameter 'timing.kv_streaming' must be one of {', '.join(KV_STREAMING)}, "
                          f"got {cfg.timing.kv_streaming!r}")
    if cfg.oracle.kind not in ORACLE_KINDS:
        raise ConfigError(f"parameter 'oracle.kind' must be one of {', '.join(ORACLE_KINDS)}, "
                          f"got {cfg.oracle.kind!r}")
    if cfg.oracle.staleness_s < 0:
        raise ConfigError(f"parameter 'oracle.staleness_s' must be >= 0, got {cfg.oracle.staleness_s}")
    if not (cfg.oracle.persistence_s >= 0 and math.isfinite(cfg.oracle.persistence_s)):
        raise ConfigError(f"parameter 'oracle.persistence_s' must be >= 0 and finite (0: off), "
                          f"got {cfg.oracle.persistence_s}")
    if cfg.cluster.placement not in ("mixed", "by-server", "by-rack"):
        raise ConfigError(f"parameter 'cluster.placement' must be by-server, mixed or by-rack, "
                          f"got {cfg.cluster.placement!r}")
    if cfg.cluster.reserved_servers_per_pod < 0:
        raise ConfigError(f"parameter 'cluster.reserved_servers_per_pod' must be >= 0, "
                          f"got {cfg.cluster.reserved_servers_per_pod}")
    validate_tp(cfg)


def usable_bytes_per_gpu(gpu: GpuConfig) -> float:
    """HBM the engine may use on one GPU (``gpu.memory_gb`` x ``gpu.memory_utilisation``)."""
    return gpu.memory_gb * 1e9 * gpu.memory_utilisation


def weights_fit(model: ModelPreset, gpu: GpuConfig, tp: int) -> bool:
    """Whether a tp-way instance's weight shard (weights / tp) leaves any usable HBM for KV."""
    return model.weight_bytes / tp < usable_bytes_per_gpu(gpu)


def validate_tp(cfg: ExperimentConfig) -> None:
    """``cluster.tp`` divides a server's GPUs (an instance never spans servers) and the instance's
    weight shards fit its GPUs; the errors name the model, the GPU and tp, and suggest a tp."""
    tp, gps = cfg.cluster.tp, cfg.topology.gpus_per_server
    if tp < 1 or gps % tp:
        divisors = [d for d in range(1, gps + 1) if gps % d == 0]
        raise ConfigError(f"parameter 'cluster.tp' must divide topology.gpus_per_server={gps} (an instance is "
                          f"{tp} consecutive GPUs of one server): one of {', '.join(map(str, divisors))}, got {tp}")
    if weights_fit(cfg.model, cfg.gpu, tp):
        return
    m, g = cfg.model, cfg.gpu
    fitting = [d for d in range(tp + 1, gps + 1) if gps % d == 0 and weights_fit(m, g, d)]
    hint = (f"use --set cluster.tp={fitting[0]}" if fitting else
            f"no tp up to a server's {gps} GPUs fits: use a larger GPU or fewer bytes per weight")
    raise ConfigError(
        f"model '{m.name}' weights ({m.weight_bytes / 1e9:.1f} GB, {m.weight_bytes / tp / 1e9:.1f} GB per GPU "
        f"at cluster.tp={tp}) do not fit GPU '{g.name}' ({g.memory_gb:g} GB x gpu.memory_utilisation "
        f"{g.memory_utilisation:g} = {usable_bytes_per_gpu(g) / 1e9:.1f} GB usable): {hint}")


def describe_constants() -> list[tuple[str, str, str]]:
    """(section.field, default, help) for every overridable constant."""
    rows = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            rows.append((f"{section}.{f.name}", repr(f.default), f.metadata.get("help", "")))
    return rows
