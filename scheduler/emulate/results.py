"""The result folder of an ``emulate`` run: :func:`scheduler.results.summary.write_experiment`
with the sections only the fabric measures (calibration, fidelity, the simulator's reference
and the agreement of both backends) and the controller's telemetry as the link heat map."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from scheduler.model.records import RequestRecord
from scheduler.results.heatmap import LinkSeries
from scheduler.results.summary import write_experiment
from scheduler.study.experiment import Experiment

TELEMETRY_SOURCE = "controller telemetry, wall s since the first poll, every policy's replay in turn"
"""``link_utilisation.source`` of an emulated run: the policies replay in turn on one fabric."""


def telemetry_links(rows: list, exp: Experiment) -> LinkSeries | None:
    """The controller's telemetry rows (``TelemetryPoller.rows``: ..., wall time, utilisation per
    link) as one heat map over the whole run, wall seconds since the first poll; a row that does
    not advance the clock is dropped. None without rows."""
    if not rows:
        return None
    keep = [rows[0]]
    for r in rows[1:]:
        if r[2] > keep[-1][2]:  # against the last row kept: a late row must not break the order
            keep.append(r)
    return LinkSeries(np.array([r[2] - keep[0][2] for r in keep]),
                      [exp.tree.link_name(i) for i in range(exp.tree.n_links)], np.stack([r[3] for r in keep]),
                      TELEMETRY_SOURCE)


def write_emulation(out: Path, exp: Experiment, info: dict, policies: dict, records: dict[str, list[RequestRecord]],
                    evidence: dict, scale: float, time_scale: float, *, target: str, provenance: dict | None,
                    fmt: str = "png") -> tuple[Path, dict]:
    """Write an emulated run's result folder from :func:`scheduler.emulate.orchestrator.run_emulation`'s
    ``evidence``; (its path, its summary). Beside the standard files: ``calibration.json`` and the
    controller's raw ``telemetry.csv``."""
    ev = evidence
    sections = {
        "fidelity": ev.get("fidelity"), "calibration": ev.get("calibration"),
        "emulation": {"scale": scale, "time_scale": time_scale, "fabric": ev.get("fabric"), "hosts": ev.get("hosts"),
                      "telemetry_path": ev.get("telemetry_path"), "settings": ev.get("settings"),
                      "fidelity_misses": ev.get("fidelity_misses")},
        "simulate_reference": ev.get("simulate_reference"), "agreement": ev.get("agreement"),
        "transfer_agreement": ev.get("transfer_agreement"),
        "paired_transfer_agreement": ev.get("paired_transfer_agreement")}
    extra = {"calibration.json": (json.dumps(ev.get("calibration"), indent=2, default=float) + "\n").encode(),
             "telemetry.csv": ev.get("telemetry_csv", b"")}
    return write_experiment(out, "emulate", exp, info, policies, records, target=target, provenance=provenance,
                            fmt=fmt, sections=sections, links=telemetry_links(ev.get("telemetry_rows") or [], exp),
                            oracle_rows=ev.get("oracle_rows") or {}, extra_files=extra)
