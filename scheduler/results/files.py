"""Result folders: ``summary.json``, ``requests.csv``, the figures, written atomically.

``write_results`` is atomic: everything is written into a hidden sibling folder which is renamed
onto ``out_dir`` only after the last file is complete, so an exception or Ctrl-C never leaves a
partial result folder behind; ``write_files`` does the same for any set of files (sweeps,
comparisons).
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scheduler.model.records import RequestRecord
from scheduler.results.figures import render_figures
from scheduler.results.heatmap import LinkSeries
from scheduler.results.metrics import SloConfig
from scheduler.results.plotting import FIGURE_FORMATS, FIGURES, TARGET_POLICY, check_format, figure_names

LINK_CSV = "link_utilisation.csv"
#: Files ``write_results`` always produces (figures in the default format, png).
RESULT_FILES = ("summary.json", "requests.csv", *(f"{name}.png" for name in FIGURES))

# Decimal places per requests.csv column (floats only); other float columns use 6 (microseconds).
_CSV_DECIMALS = {"tbt_mean_ms": 4, "decision_us": 2}


class ResultsExistError(FileExistsError):
    """The result folder already exists and is not empty; results are never overwritten."""


# -- JSON / CSV ----------------------------------------------------------------------------------
def _jsonable(obj: object) -> object:
    """``obj`` with NaN/inf floats replaced by ``None`` and numpy/tuple values made plain."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj  # str, None; anything else makes json.dumps raise TypeError


def dumps_json(obj: object) -> str:
    """Strict JSON (indent 2) of ``obj``; NaN and infinities become ``null``."""
    return json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"


def _csv_value(name: str, value: object) -> object:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{_CSV_DECIMALS.get(name, 6)}f}"
    return value


def _write_csv(path: Path, records: dict[str, list[RequestRecord]]) -> None:
    columns = RequestRecord.columns()
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for recs in records.values():
            for r in recs:
                writer.writerow([_csv_value(c, getattr(r, c)) for c in columns])


# -- result folder -------------------------------------------------------------------------------
def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _reserved_names() -> set[str]:
    """Every file name ``write_results`` may produce (all figure formats)."""
    names = {"summary.json", "requests.csv", LINK_CSV}
    for fmt in FIGURE_FORMATS:
        names.update(figure_names(fmt, links=True))
    return names


def _check_extra_names(extra_files: dict[str, bytes]) -> None:
    reserved = _reserved_names()
    for name in extra_files:
        if not name or name in (".", "..") or "/" in name or os.sep in name or name.startswith("."):
            raise ValueError(f"extra file name {name!r} must be a plain, non-hidden file name")
        if name in reserved:
            raise ValueError(f"extra file name {name!r} collides with a standard result file")


def write_results(out_dir: Path, summary: dict, records: dict[str, list[RequestRecord]], slo: SloConfig,
                  extra_files: dict[str, bytes] | None = None, target: str = TARGET_POLICY, fmt: str = "png",
                  spans: Sequence[tuple[float, float, str]] = (), links: LinkSeries | None = None) -> Path:
    """Write a complete result folder at ``out_dir`` and return it.

    Contents: ``summary.json`` (``summary`` as strict JSON, NaN -> null), ``requests.csv`` (one
    row per record, policies in ``records`` order, columns ``RequestRecord.columns()``), the
    figures of :func:`render_figures` in ``fmt`` (``ttft_cdf``, ``ttft_bars``, ``slo_attainment``,
    ``transfer_by_tier``, ``ttft_over_time`` with the scenario event ``spans`` (start_s, end_s,
    label), and with ``links`` ``link_utilisation`` plus its data ``link_utilisation.csv``, at most
    ``MAX_HEATMAP_COLUMNS`` time columns) and every ``extra_files`` entry (name -> bytes).

    Atomic: files go to a hidden temporary sibling that is renamed to ``out_dir`` at the end and
    removed on any exception (including ``KeyboardInterrupt``). Raises ``ResultsExistError`` if
    ``out_dir`` exists and is not empty (an empty folder is replaced), ``ValueError`` for a
    record whose ``policy`` differs from its key, a bad extra file name or an unknown ``fmt``.
    """
    out_dir = Path(out_dir)
    check_format(fmt)
    extra_files = dict(extra_files or {})
    _check_extra_names(extra_files)
    for name, recs in records.items():
        for r in recs:
            if r.policy != name:
                raise ValueError(f"record {r.req_id} has policy {r.policy!r} but is listed under {name!r}")
    with _atomic_folder(out_dir) as tmp:
        (tmp / "summary.json").write_text(dumps_json(summary))
        _write_csv(tmp / "requests.csv", records)
        if links is not None:
            links = links.binned()
            (tmp / LINK_CSV).write_bytes(links.csv_bytes())
        render_figures(tmp, records, slo, summary, target, fmt, spans, links)
        for name, data in extra_files.items():
            (tmp / name).write_bytes(data)
    return out_dir


@contextlib.contextmanager
def _atomic_folder(out_dir: Path):
    """Yield a hidden temporary sibling of ``out_dir`` to fill; renamed onto ``out_dir`` when the
    block ends, removed on any exception (Ctrl-C included). Raises ``ResultsExistError`` if
    ``out_dir`` exists and is not an empty folder, before and after the block."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ResultsExistError(f"{out_dir} exists and is not a folder")
    if _is_nonempty_dir(out_dir):
        raise ResultsExistError(f"result folder {out_dir} already exists and is not empty; "
                                "choose another folder or remove it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        if out_dir.is_dir():
            try:
                out_dir.rmdir()  # only succeeds while still empty
            except OSError as e:
                raise ResultsExistError(f"result folder {out_dir} was filled while writing results") from e
        try:
            os.rename(tmp, out_dir)
        except OSError as e:
            raise ResultsExistError(f"could not move results into {out_dir}: {e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_files(out_dir: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` (name -> bytes) as a new result folder ``out_dir``, atomically: into a hidden
    sibling renamed onto ``out_dir`` at the end, removed on any exception or Ctrl-C. Raises
    ``ResultsExistError`` if ``out_dir`` exists and is not empty."""
    out_dir = Path(out_dir)
    for name in files:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"file name {name!r} must be a plain, non-hidden file name")
    with _atomic_folder(out_dir) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    return out_dir
