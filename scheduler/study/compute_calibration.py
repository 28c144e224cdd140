"""The compute model against Vidur's profiled GPUs: prefill and decode-step times of
:class:`~scheduler.model.timing.TimingModel` beside the sums of the per-layer operators Vidur's
execution-time predictor adds up (``vidur/entities/execution_time.py``: qkv and output
projections, rope, the attention kernel, the KV-cache save, the two norms, the MLP up, act and
down projections and the residual add; embedding, LM head and CPU-side overheads left out, as
Vidur's ``model_time`` leaves them), times the layers, at tensor-parallel degree 1.

``extract`` reads the operators from a Vidur checkout's ``data/profiling/compute`` (the median of
each operator, averaged over duplicate profiled rows, at profiled token counts: no interpolation
is needed at 1k-16k tokens and batch 1-32); ``VIDUR_TABLE`` is the extract committed beside this
module, so the comparison and its test run without the CSVs. Where an attention.csv is absent
(Git LFS content) its columns stay empty and the comparison leaves attention and the KV save out
of both sides (the linear layers alone; decode steps with no KV read).

    python -m scheduler.study.compute_calibration                  # table from VIDUR_TABLE
    python -m scheduler.study.compute_calibration --vidur DIR \\
        [--attention a100=PATH] [--write-table OUT.csv]           # re-extract from the CSVs
"""
from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path

from scheduler.model.config import build_config
from scheduler.model.timing import TimingModel

VIDUR_COMMIT = "7d47513363ec447a741ac5e47241580b47724fbf"
"""The microsoft/vidur commit whose profiles the committed table was extracted from."""

VIDUR_TABLE = Path(__file__).with_name("vidur_profiled_ops.csv")

PROFILES: dict[tuple[str, str], tuple[str, str]] = {
    ("a100-sxm", "llama-3-8b"): ("a100", "meta-llama/Meta-Llama-3-8B"),
    ("h100-sxm", "llama-2-7b"): ("h100", "meta-llama/Llama-2-7b-hf"),
}
"""(our GPU preset, our model preset) -> (Vidur device, Vidur model): the profiles Vidur publishes
closest to our presets (it has no Llama-3-8B profile on H100)."""

PREFILL_TOKENS = (1024, 2048, 4096, 8192, 16384)
DECODE_BATCHES = (1, 2, 4, 8, 16, 32)
DECODE_CONTEXT = 4096
"""KV tokens of every request in a profiled decode batch (a profiled kv_cache_size)."""

TOLERANCE = 0.10
"""The calibration target: every compared point within +-10% of its profiled sum."""

LINEAR_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj", "mlp_act",
              "input_layernorm", "post_attention_layernorm", "attn_rope", "add")
"""The operators of Vidur's mlp.csv its predictor adds per layer (by token count)."""

FIELDS = ("gpu", "model", "phase", "tokens", "context", "layers", "linear_ms", "attention_ms",
          "kv_save_ms", "source")


@dataclass(frozen=True)
class ProfiledPoint:
    """One profiled prefill (``tokens`` prompt tokens) or decode step (batch of ``tokens``
    requests of ``context`` KV tokens each): per-layer milliseconds, attention and KV save
    ``None`` where the profile was unreadable."""

    gpu: str
    model: str
    phase: str
    tokens: int
    context: int
    layers: int
    linear_ms: float
    attention_ms: float | None
    kv_save_ms: float | None
    source: str

    @property
    def full(self) -> bool:
        return self.attention_ms is not None and self.kv_save_ms is not None

    @property
    def profiled_s(self) -> float:
        per_layer = self.linear_ms + ((self.attention_ms or 0.0) + (self.kv_save_ms or 0.0) if self.full else 0.0)
        return per_layer * self.layers / 1e3


@dataclass(frozen=True)
class Comparison:
    point: ProfiledPoint
    ours_s: float

    @property
    def error(self) -> float:
        return self.ours_s / self.point.profiled_s - 1.0


def _median(rows: list[dict[str, str]], op: str) -> float:
    values = [float(r[f"time_stats.{op}.median"] or 0.0) for r in rows]
    return sum(values) / len(values)


def _is_lfs_pointer(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(40).startswith(b"version https://git-lfs")


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def extract(vidur_root: Path, attention: dict[str, Path] | None = None) -> list[ProfiledPoint]:
    """The profiled points of every ``PROFILES`` entry from a Vidur checkout (``attention``
    overrides a device's attention.csv path)."""
    points: list[ProfiledPoint] = []
    for (gpu, model), (device, vidur_model) in PROFILES.items():
        layers = build_config(model, gpu).model.layers
        base = Path(vidur_root) / "data" / "profiling" / "compute" / device / vidur_model
        mlp = [r for r in _read(base / "mlp.csv") if r["num_tensor_parallel_workers"] == "1"]
        att_path = (attention or {}).get(device, base / "attention.csv")
        att: list[dict[str, str]] = []
        if att_path.is_file() and not _is_lfs_pointer(att_path):
            att = [r for r in _read(att_path) if r["num_tensor_parallel_workers"] == "1"]
        source = f"microsoft/vidur@{VIDUR_COMMIT[:7]} data/profiling/compute/{device}/{vidur_model}"
        for phase, sizes in (("prefill", PREFILL_TOKENS), ("decode", DECODE_BATCHES)):
            for n in sizes:
                lin_rows = [r for r in mlp if int(r["num_tokens"]) == n]
                if not lin_rows:
                    continue
                linear = sum(_median(lin_rows, op) for op in LINEAR_OPS)
                if phase == "prefill":
                    sel = [r for r in att if r["is_prefill"] == "True" and int(r["prefill_chunk_size"]) == n
                           and int(r["kv_cache_size"]) == 0]
                    kernel, context = "attn_prefill", 0
                else:
                    sel = [r for r in att if r["is_prefill"] == "False" and int(r["batch_size"]) == n
                           and int(r["kv_cache_size"]) == DECODE_CONTEXT]
                    kernel, context = "attn_decode", DECODE_CONTEXT if sel else 0
                points.append(ProfiledPoint(
                    gpu, model, phase, n, context, layers, linear,
                    _median(sel, kernel) if sel else None,
                    _median(sel, "attn_kv_cache_save") if sel else None, source))
    return points


def write_table(points: list[ProfiledPoint], path: Path) -> None:
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for p in points:
            w.writerow([p.gpu, p.model, p.phase, p.tokens, p.context, p.layers, f"{p.linear_ms:.6g}",
                        "" if p.attention_ms is None else f"{p.attention_ms:.6g}",
                        "" if p.kv_save_ms is None else f"{p.kv_save_ms:.6g}", p.source])


def load_table(path: Path = VIDUR_TABLE) -> list[ProfiledPoint]:
    def opt(v: str) -> float | None:
        return float(v) if v else None
    return [ProfiledPoint(r["gpu"], r["model"], r["phase"], int(r["tokens"]), int(r["context"]), int(r["layers"]),
                          float(r["linear_ms"]), opt(r["attention_ms"]), opt(r["kv_save_ms"]), r["source"])
            for r in _read(Path(path))]


def compare(points: list[ProfiledPoint], overrides: list[str] | None = None) -> list[Comparison]:
    """Our time for every profiled point under the default constants (plus ``overrides``,
    ``--set`` syntax), on the same footing: without attention and KV save where the profile
    has none, and a decode step without KV where its attention is missing."""
    out = []
    for p in points:
        timing = TimingModel(build_config(p.model, p.gpu, list(overrides or []) + ["cluster.tp=1"]))
        if p.phase == "prefill":
            ours = timing.prefill_s(p.tokens)
            if not p.full:
                ours -= timing.prefill_attention_s(p.tokens) + timing.prefill_kv_save_s(p.tokens)
        else:
            ours = timing.decode_step_s(p.tokens * p.context if p.full else 0)
        out.append(Comparison(p, ours))
    return out


def markdown(rows: list[Comparison]) -> str:
    lines = ["| GPU | model (Vidur profile) | phase | size | operators compared | profiled (ms) | ours (ms) | error |",
             "|---|---|---|---:|---|---:|---:|---:|"]
    for c in rows:
        p = c.point
        size = f"{p.tokens} tokens" if p.phase == "prefill" else f"batch {p.tokens}"
        if p.full:
            ops = "all per-layer" + (f", {p.context}-token KV" if p.phase == "decode" else "")
        else:
            ops = "linear layers only" + (" (no KV read)" if p.phase == "decode" else "")
        lines.append(f"| {p.gpu} | {p.model} ({p.source.rsplit('/', 1)[-1]}) | {p.phase} | {size} | {ops} | "
                     f"{p.profiled_s * 1e3:.1f} | {c.ours_s * 1e3:.1f} | {c.error * 100:+.1f}% |")
    worst = max(abs(c.error) for c in rows)
    lines.append("")
    lines.append(f"Largest error: {worst * 100:.1f}% (target +-{TOLERANCE * 100:.0f}%).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vidur", type=Path, help="a microsoft/vidur checkout (its data/profiling/compute is read)")
    ap.add_argument("--attention", action="append", default=[], metavar="DEVICE=PATH",
                    help="an attention.csv for a Vidur device (a100, h100) where the checkout has an LFS pointer")
    ap.add_argument("--table", type=Path, default=VIDUR_TABLE, help="extracted table to compare (without --vidur)")
    ap.add_argument("--write-table", type=Path, help="write the extracted points here")
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.FIELD=VALUE",
                    help="override a constant for the comparison")
    args = ap.parse_args(argv)
    if args.vidur:
        attention = {}
        for item in args.attention:
            device, sep, path = item.partition("=")
            if not sep:
                ap.error(f"--attention {item!r}: expected DEVICE=PATH")
            attention[device] = Path(path)
        points = extract(args.vidur, attention)
    else:
        points = load_table(args.table)
    if args.write_table:
        write_table(points, args.write_table)
    rows = compare(points, args.overrides)
    print(markdown(rows))
    return 0 if all(math.isfinite(c.error) and abs(c.error) <= TOLERANCE for c in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
