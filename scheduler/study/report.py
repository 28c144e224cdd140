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


def write_report(out_md: Path, text_fn, fig_names: list[str] | None = None) -> None:
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
             overrides: tuple[str, ...] = ()) -> Path:
    for sc in scenarios or []:
        if sc not in SCENARIOS:
            raise ReportError(f"--scenarios: {sc!r} is not a built-in scenario ({', '.join(SCENARIOS)})")
    if max_requests is not None and max_requests < 1:
        raise ReportError(f"--max-requests must be >= 1, got {max_requests}")
    plan = make_plan(quick, max_requests, scenarios, overrides=tuple(overrides))
    log(f"report: {len(plan.cells)} runs and {sum(len(s.values) for s in plan.sweeps) * len(plan.seeds)} sweep "
        f"points on {jobs or os.cpu_count()} processes")
    t0 = time.perf_counter()
    results = run_plan(plan, jobs, progress, log)
    wall = time.perf_counter() - t0
    write_report(out_md, lambda fig_dir: render(plan, results, fig_dir, command, wall))
    return Path(out_md)
