"""Re-plot a result folder from its files, and compare two result folders.

``netkv plot DIR`` redraws every figure of a result folder from ``summary.json`` (the experiment,
the SLO, the comparison target, the scenario's event spans) and ``requests.csv`` (the records),
plus ``link_utilisation.csv`` where the run recorded one, in any figure format. ``netkv compare
A B`` prints, per policy present in both folders, the change B - A of mean and p99 TTFT, SLO
attainment and mean TBT, and writes an overlaid TTFT CDF and ``compare.json``. Every problem with
a folder is a :class:`ResultFolderError` naming the file (and the row of a malformed CSV).
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import shutil
import tempfile
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from scheduler.model.records import RequestRecord
from scheduler.results.figures import plot_compare_cdf, render_figures
from scheduler.results.files import LINK_CSV, dumps_json, write_files
from scheduler.results.heatmap import LinkSeries
from scheduler.results.metrics import SloConfig
from scheduler.results.plotting import TARGET_POLICY, FigureText, check_format, experiment_caption
from scheduler.results.tables import fmt_number

COMPARE_METRICS = (("ttft_mean_s", "mean TTFT", "s"), ("ttft_p99_s", "p99 TTFT", "s"),
                   ("slo_attainment", "SLO attainment", "%"), ("tbt_mean_ms", "mean TBT", "ms"))
"""Metrics of ``netkv compare``: summary key, label, unit (attainment is a fraction shown in %)."""
COMPARE_FIGURE = "ttft_cdf_compare"
"""Overlaid TTFT CDF of ``netkv compare`` (without the format suffix)."""


class ResultFolderError(ValueError):
    """A result folder, or one of its files, is missing or malformed; the message names the file."""


@dataclass
class ResultFolder:
    """What a result folder holds for its figures: the summary, the records per policy (in the
    order of ``requests.csv``) and the link utilisation series if it has one."""

    path: Path
    summary: dict
    records: dict[str, list[RequestRecord]]
    links: LinkSeries | None = None

    @property
    def target(self) -> str:
        return str(self.summary.get("comparison_target") or TARGET_POLICY)

    def slo(self) -> SloConfig:
        """The SLO the run used (``config.slo``), default objectives where the summary lacks them."""
        raw = (self.summary.get("config") or {}).get("slo") or {}
        names = {f.name for f in fields(SloConfig)}
        try:
            return SloConfig(**{k: v for k, v in raw.items() if k in names})
        except (TypeError, ValueError) as exc:
            raise ResultFolderError(f"{self.path / 'summary.json'}: config.slo: {exc}") from None

    def spans(self) -> list[tuple[float, float, str]]:
        """The scenario's event spans stored in ``summary.json`` (``scenario_spans``)."""
        out = []
        for i, span in enumerate(self.summary.get("scenario_spans") or []):
            try:
                out.append((float(span["start_s"]), float(span["end_s"]), str(span["label"])))
            except (KeyError, TypeError, ValueError):
                raise ResultFolderError(f"{self.path / 'summary.json'}: scenario_spans[{i}]: expected "
                                        f"start_s, end_s and label, got {span!r}") from None
        return out


# -- reading -------------------------------------------------------------------------------------
_FIELD_TYPES = typing.get_type_hints(RequestRecord)


def _convert(kind: type, text: str) -> int | float | str:
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)  # "nan" included
    return text


def read_records(path: Path) -> dict[str, list[RequestRecord]]:
    """Parse a ``requests.csv`` back into records per policy, in file order. Raises
    :class:`ResultFolderError` naming the file and line for a missing column or a malformed row."""
    path = Path(path)
    try:
        fh = path.open(newline="")
    except OSError as exc:
        raise ResultFolderError(f"{path}: cannot read: {exc.strerror or exc}") from None
    out: dict[str, list[RequestRecord]] = {}
    with fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ResultFolderError(f"{path}: empty file (expected a header row)")
        columns = RequestRecord.columns()
        missing = [c for c in columns if c not in header]
        if missing:
            raise ResultFolderError(f"{path}: line 1: missing column(s) {', '.join(missing)}")
        index = {c: header.index(c) for c in columns}
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                raise ResultFolderError(f"{path}: line {line}: {len(row)} fields, the header has {len(header)}")
            values: dict[str, typing.Any] = {}  # each column converted to its RequestRecord field's type
            for c in columns:
                try:
                    values[c] = _convert(_FIELD_TYPES[c], row[index[c]])
                except ValueError:
                    raise ResultFolderError(f"{path}: line {line}: column {c}: {row[index[c]]!r} is not "
                                            f"{'an integer' if _FIELD_TYPES[c] is int else 'a number'}") from None
            rec = RequestRecord(**values)
            out.setdefault(rec.policy, []).append(rec)
    return out


def read_link_series(path: Path, source: str = "") -> LinkSeries:
    """Parse a ``link_utilisation.csv`` (``time_s`` then one column per link)."""
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise ResultFolderError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not rows or not rows[0] or rows[0][0] != "time_s":
        raise ResultFolderError(f"{path}: line 1: expected a header starting with time_s")
    names = rows[0][1:]
    times, util = [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(names) + 1:
            raise ResultFolderError(f"{path}: line {line}: {len(row)} fields, the header has {len(names) + 1}")
        try:
            values = [float(x) for x in row]
        except ValueError:
            raise ResultFolderError(f"{path}: line {line}: every field must be a number") from None
        times.append(values[0])
        util.append(values[1:])
    return LinkSeries(np.array(times, dtype=float), names,
                      np.array(util, dtype=float).reshape(len(times), len(names)), source)


def load_folder(path: Path) -> ResultFolder:
    """Read a result folder's ``summary.json`` and ``requests.csv`` (and ``link_utilisation.csv``
    when present). Raises :class:`ResultFolderError` naming what is missing or malformed."""
    path = Path(path)
    if not path.is_dir():
        raise ResultFolderError(f"{path}: no such result folder")
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        raise ResultFolderError(f"{summary_path}: missing (not a simulate/emulate result folder?)")
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultFolderError(f"{summary_path}: not valid JSON: {exc}") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("policies"), dict):
        raise ResultFolderError(f"{summary_path}: no 'policies' section (a sweep or staleness folder? "
                                "those have their own figures)")
    csv_path = path / "requests.csv"
    if not csv_path.is_file():
        raise ResultFolderError(f"{csv_path}: missing")
    records = read_records(csv_path)
    links = None
    if (path / LINK_CSV).is_file():
        meta = summary.get("link_utilisation") or {}
        links = read_link_series(path / LINK_CSV, str(meta.get("source", "")))
    folder = ResultFolder(path, summary, records, links)
    folder.slo()  # fail here, naming the file, rather than inside a plot
    return folder


# -- plot ----------------------------------------------------------------------------------------
def replot(src: Path, fmt: str = "png", out: Path | None = None) -> tuple[Path, dict[str, FigureText]]:
    """Redraw every figure of the result folder ``src`` in ``fmt`` into ``out`` (default: ``src``
    itself; created if missing). Figures are drawn under temporary names in a hidden folder
    beside them and each renamed over its old version, so a failure leaves the old figures.
    Returns (folder written, file name -> title and caption)."""
    check_format(fmt)
    folder = load_folder(src)
    dest = Path(out) if out is not None else folder.path
    if dest.exists() and not dest.is_dir():
        raise ResultFolderError(f"--out {dest}: exists and is not a folder")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".replot-", dir=dest))
    try:
        texts = render_figures(tmp, folder.records, folder.slo(), folder.summary, folder.target, fmt,
                               folder.spans(), folder.links)
        if dest != folder.path and folder.links is not None:
            shutil.copyfile(folder.path / LINK_CSV, tmp / LINK_CSV)
        for name in os.listdir(tmp):
            os.replace(tmp / name, dest / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest, texts


# -- compare -------------------------------------------------------------------------------------
def _delta(a: object, b: object, scale: float) -> dict:
    """A metric of both folders and its change B - A, absolute and relative to A (%)."""
    va = float(a) * scale if isinstance(a, (int, float)) else float("nan")
    vb = float(b) * scale if isinstance(b, (int, float)) else float("nan")
    diff = vb - va
    pct = 100.0 * diff / va if math.isfinite(diff) and va != 0 else float("nan")
    return {"a": va, "b": vb, "delta": diff, "delta_pct": pct}


def compare_folders(a: ResultFolder, b: ResultFolder) -> dict:
    """compare.json: both folders (path, experiment caption), then per policy present in both
    the metrics of :data:`COMPARE_METRICS` with their change B - A; policies in only one folder
    listed apart. Raises :class:`ResultFolderError` when no policy is in both."""
    common = [n for n in a.summary["policies"] if n in b.summary["policies"]]
    if not common:
        raise ResultFolderError(f"{a.path} and {b.path} have no policy in common "
                                f"(A: {', '.join(a.summary['policies']) or 'none'}; "
                                f"B: {', '.join(b.summary['policies']) or 'none'})")
    policies = {}
    for name in common:
        sa, sb = a.summary["policies"][name], b.summary["policies"][name]
        policies[name] = {key: _delta(sa.get(key), sb.get(key), 100.0 if unit == "%" else 1.0)
                          for key, _, unit in COMPARE_METRICS}
    return {
        "kind": "compare",
        "a": {"path": str(a.path.resolve()), "experiment": experiment_caption(a.summary)},
        "b": {"path": str(b.path.resolve()), "experiment": experiment_caption(b.summary)},
        "units": {key: unit for key, _, unit in COMPARE_METRICS},
        "policies": policies,
        "only_in_a": [n for n in a.summary["policies"] if n not in b.summary["policies"]],
        "only_in_b": [n for n in b.summary["policies"] if n not in a.summary["policies"]],
    }


def format_comparison(cmp: Mapping) -> str:
    """The table ``netkv compare`` prints: per policy and metric A, B, B - A and (B - A) / A."""
    header = ["policy", "metric", "A", "B", "B - A", "B - A %"]
    rows = []
    for name, metrics in cmp["policies"].items():
        for key, label, unit in COMPARE_METRICS:
            m = metrics[key]
            fmt = ".1f" if unit == "%" else (".2f" if unit == "ms" else ".3f")
            change_unit = " pp" if unit == "%" else f" {unit}"
            rows.append([name, f"{label} ({unit})", fmt_number(m["a"], fmt), fmt_number(m["b"], fmt),
                         fmt_number(m["delta"], "+" + fmt) + (change_unit if math.isfinite(m["delta"]) else ""),
                         fmt_number(m["delta_pct"], "+.1f") + ("%" if math.isfinite(m["delta_pct"]) else "")])
            name = ""  # the policy's name on its first row only
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        left = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
        return "  ".join(left + [c.rjust(w) for c, w in zip(cells[2:], widths[2:])]).rstrip()

    out = [f"A: {cmp['a']['path']}", f"   {cmp['a']['experiment']}",
           f"B: {cmp['b']['path']}", f"   {cmp['b']['experiment']}", "",
           line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]
    for side in ("a", "b"):
        if cmp[f"only_in_{side}"]:
            out.append(f"only in {side.upper()} (not compared): {', '.join(cmp[f'only_in_{side}'])}")
    return "\n".join(out) + "\n"


def default_compare_out(results_dir: Path) -> Path:
    """``<timestamp>-compare`` under ``results_dir`` (default ``results/``)."""
    return Path(results_dir) / f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-compare"


def run_compare(dir_a: Path, dir_b: Path, out: Path, fmt: str = "png",
                provenance: dict | None = None) -> tuple[Path, str, dict]:
    """Compare two result folders; write ``compare.json``, ``compare.txt`` and the overlaid CDF as
    a new folder ``out`` (atomically, :func:`scheduler.results.files.write_files`). Returns (folder,
    table text, comparison)."""
    check_format(fmt)
    a, b = load_folder(dir_a), load_folder(dir_b)
    cmp = compare_folders(a, b)
    if provenance is not None:
        cmp = {"kind": cmp["kind"], "provenance": provenance, **{k: v for k, v in cmp.items() if k != "kind"}}
    text = format_comparison(cmp)
    with tempfile.TemporaryDirectory() as tmp:
        fig = Path(tmp) / f"{COMPARE_FIGURE}.{fmt}"
        caption = (f"A (solid), {a.path.name}: {experiment_caption(a.summary)}\n"
                   f"B (dashed), {b.path.name}: {experiment_caption(b.summary)}")
        plot_compare_cdf(fig, a.records, b.records, list(cmp["policies"]), a.slo().ttft_s,
                         b.slo().ttft_s, caption, a.target)
        files = {"compare.json": dumps_json(cmp).encode(), "compare.txt": text.encode(),
                 fig.name: fig.read_bytes()}
    return write_files(out, files), text, cmp
