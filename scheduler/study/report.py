"""``netkv report``: regenerate docs/results.md and its figures from fresh simulator runs.

The report is a list of sections, each made of runs whose exact command is printed beside what
they produced: the headline comparison per scenario and placement (with the paper's numbers side
by side), the ablation that isolates what live network information buys, the load, context,
bandwidth and streaming sweeps with 95% intervals over seeds (disjoint windows of the trace), the
telemetry staleness study, and where NetKV does not help. Every run is independent, so all of them
(matrix cells and sweep points) go into one process pool; the simulator is deterministic, so a
rerun reproduces every figure exactly (wall-clock fields aside).

``--quick`` runs a few-minute version (shorter windows, fewer scenarios and seeds); the default is
the full report (the whole conversation trace for the headline, three 3,000-request windows for the
sweeps).

:mod:`scheduler.study.report_plan` holds the plan and runs it, :mod:`scheduler.study.report_markdown`
renders the markdown; this module checks the options and writes the report.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from scheduler.study.report_markdown import render
from scheduler.study.report_plan import SCENARIOS, make_plan, run_plan


class ReportError(ValueError):
    """A report option is invalid; the message names it."""


REPORT_NAME = "results.md"
"""The markdown file's name when ``--out`` is a folder (the figures go into ``results/`` beside it)."""


def report_paths(out: Path) -> tuple[Path, Path]:
    """(markdown file, figure folder) for ``--out``: a ``.md`` name is the markdown file and its
    figures go into the folder of its stem beside it; anything else (an existing folder, a new
    name) is a folder holding :data:`REPORT_NAME` and its figures. Raises :class:`ReportError`
    naming ``--out`` when either cannot be written there; checked before any run."""
    out = Path(out)
    md = out / REPORT_NAME if out.is_dir() or out.suffix != ".md" else out
    figs = md.parent / md.stem
    if md.is_dir():
        raise ReportError(f"--out {out}: {md} is a folder, where the markdown file goes")
    if figs.exists() and not figs.is_dir():
        raise ReportError(f"--out {out}: {figs} exists and is not a folder, where the figures go")
    try:
        existing = next(p for p in (md.parent, *md.parent.resolve().parents) if p.exists())
    except StopIteration:
        raise ReportError(f"--out {out}: no existing folder above it") from None
    if not existing.is_dir():
        raise ReportError(f"--out {out}: {existing} is not a folder")
    try:  # what write_report does: temporary siblings, renamed at the end
        os.rmdir(tempfile.mkdtemp(prefix=".netkv-write-check-", dir=existing))
    except OSError as exc:
        raise ReportError(f"--out {out}: cannot write in {existing}: {exc.strerror or exc}") from None
    return md, figs


def write_report(out_md: Path, text_fn) -> None:
    """Write the markdown and its figure folder (``<out_md.stem>/``) atomically enough: into
    temporary siblings, then renamed over the old ones."""
    out_md = Path(out_md)
    fig_dir = out_md.parent / out_md.stem
    out_md.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_md.stem}.tmp-", dir=out_md.parent))
    tmp_md = out_md.parent / f".{out_md.name}.tmp"
    try:
        tmp_md.write_text(text_fn(tmp_dir))
        old = out_md.parent / f".{out_md.stem}.old"
        if fig_dir.exists():
            fig_dir.rename(old)
        tmp_dir.rename(fig_dir)
        os.replace(tmp_md, out_md)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_md.unlink(missing_ok=True)
        raise


def generate(out_md: Path, quick: bool = False, jobs: int | None = None, max_requests: int | None = None,
             scenarios: list[str] | None = None, progress: bool = True, log=print, command: str = "netkv report",
             overrides: tuple[str, ...] = (), executor: str = "local") -> Path:
    for sc in scenarios or []:
        if sc not in SCENARIOS:
            raise ReportError(f"--scenarios: {sc!r} is not a built-in scenario ({', '.join(SCENARIOS)})")
    if max_requests is not None and max_requests < 1:
        raise ReportError(f"--max-requests must be >= 1, got {max_requests}")
    out_md, fig_dir = report_paths(out_md)
    plan = make_plan(quick, max_requests, scenarios, overrides=tuple(overrides))
    where = f"{jobs or os.cpu_count()} processes" if executor == "local" else f"--executor {executor}"
    log(f"report: {len(plan.cells)} runs and {sum(len(s.values) for s in plan.sweeps) * len(plan.seeds)} sweep "
        f"points on {where}")
    t0 = time.perf_counter()
    results = run_plan(plan, jobs, progress, log, executor)
    wall = time.perf_counter() - t0
    write_report(out_md, lambda tmp_dir: render(plan, results, tmp_dir, command, wall, fig_dir.name))
    return out_md
