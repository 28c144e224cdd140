#!/usr/bin/env python3
"""Do two result folders hold the same results, wall-clock fields aside?

    python scripts/same_results.py BEFORE_DIR AFTER_DIR [--checkouts BEFORE_ROOT AFTER_ROOT]

Compares every ``summary.json`` (and ``sweep.csv``/``staleness.json`` if present) and every
``*.csv`` below the two folders, ignoring what a clock measures: ``provenance``, decision
latencies (``decision_us*``), wall times (``wall_s``), the command line and the ``decision_us`` column of
``requests.csv``. With ``--checkouts``, paths inside the first checkout (a scenario's
``source``) compare equal to the same paths inside the second. Prints each difference with its
path; exit 0 if none, 1 otherwise, 2 on bad arguments: a restructuring must keep every
result (docs/DESIGN.md).
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

WALL_CLOCK_KEYS = {"provenance", "wall_s", "decision_us", "decision_us_p50", "decision_us_p99",
                   "elapsed_s", "started_utc", "command", "argv"}
"""Keys whose values a clock measures, not the model (the same seed gives other values), and the
command line (it names the output folder)."""


def _strip(obj, roots: tuple[str, str] | None = None):
    if isinstance(obj, dict):
        return {k: _strip(v, roots) for k, v in obj.items() if k not in WALL_CLOCK_KEYS}
    if isinstance(obj, list):
        return [_strip(v, roots) for v in obj]
    if roots and isinstance(obj, str) and obj.startswith(roots[0]):
        return roots[1] + obj[len(roots[0]):]
    return obj


def _diff(a, b, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'after' if k not in a else 'before'}")
            else:
                _diff(a[k], b[k], f"{path}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}[{i}]", out)
    elif a != b:
        out.append(f"{path}: {a!r} != {b!r}")


def _csv_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if k not in WALL_CLOCK_KEYS} for row in csv.DictReader(f)]


def compare(before: Path, after: Path, roots: tuple[str, str] | None = None) -> list[str]:
    """Differences between two result trees, as readable lines (empty: the same results)."""
    out: list[str] = []
    files_a = {p.relative_to(before) for p in before.rglob("*") if p.suffix in (".json", ".csv")}
    files_b = {p.relative_to(after) for p in after.rglob("*") if p.suffix in (".json", ".csv")}
    for rel in sorted(files_a ^ files_b):
        out.append(f"{rel}: only in {'before' if rel in files_a else 'after'}")
    for rel in sorted(files_a & files_b):
        if rel.suffix == ".json":
            a = _strip(json.loads((before / rel).read_text()), roots)
            b = _strip(json.loads((after / rel).read_text()))
        else:
            a, b = _csv_rows(before / rel), _csv_rows(after / rel)
        _diff(a, b, str(rel), out)
    return out


def main(argv: list[str]) -> int:
    roots = None
    if len(argv) == 5 and argv[2] == "--checkouts":
        roots = (str(Path(argv[3]).resolve()), str(Path(argv[4]).resolve()))
        argv = argv[:2]
    if len(argv) != 2:
        print("usage: " + __doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    before, after = map(Path, argv)
    for p in (before, after):
        if not p.is_dir():
            print(f"same_results: {p}: no such folder", file=sys.stderr)
            return 2
    diffs = compare(before, after, roots)
    for line in diffs[:200]:
        print(line)
    n = sum(1 for _ in before.rglob("*.json")) + sum(1 for _ in before.rglob("*.csv"))
    print(f"same_results: {n} files compared, {len(diffs)} differences", file=sys.stderr)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
