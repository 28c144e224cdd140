"""``summary.json`` of an experiment and its result folder, the same for every backend.

A policy's entry (:func:`policy_summary`), the run's header (:func:`build_summary`: backend,
provenance, every constant, the trace, the policies) and the comparison against the target are
assembled here once, so ``simulate`` and ``emulate`` folders differ only by the sections their
backend measures (``emulate``: calibration, fidelity, the simulator's reference) and
:func:`write_experiment` writes either folder with :func:`scheduler.results.files.write_results`.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from scheduler.model.cluster import Cluster
from scheduler.model.config import ExperimentConfig
from scheduler.model.records import RequestRecord
from scheduler.model.scenario import Scenario
from scheduler.results import oracle_error_plot
from scheduler.results.files import LINK_CSV, write_results
from scheduler.results.heatmap import LinkSeries
from scheduler.results.metrics import SloConfig, ablation, compare, summarize_policy
from scheduler.results.plotting import experiment_caption
from scheduler.results.timeline import scenario_spans
from topology.model import FatTree


class Experiment(Protocol):
    """What a result folder reads of an experiment (:class:`scheduler.study.experiment.Experiment`
    provides it): results depend on this view, not on the study package."""

    cfg: ExperimentConfig
    tree: FatTree
    scenario: Scenario
    policies: list[Any]  # PolicySpec: .name
    seed: int
    policy_files: list  # PolicyFile: .path, .text, .describe()

    @property
    def horizon_s(self) -> float: ...

    def actions(self) -> Any: ...

    def slo(self) -> SloConfig: ...


def policy_summary(records: list[RequestRecord], slo: SloConfig, params: dict, tuning: list[dict], wall_s: float,
                   measured: Mapping[str, object] | None = None, after: Mapping[str, object] | None = None) -> dict:
    """One policy's entry of ``policies``: the metrics of its ``records`` under ``slo``, then what
    the backend ``measured`` of the run (reroutes, faults, ...), the policy's ``params``, its
    ``tuning`` table and the run's wall time, then ``after`` (the backend's other sections).
    Sections whose value is None are left out."""
    out = summarize_policy(records, slo)
    out.update({k: v for k, v in (measured or {}).items() if v is not None})
    out.update({"params": params, "tuning": tuning, "wall_s": wall_s})
    out.update({k: v for k, v in (after or {}).items() if v is not None})
    return out


def run_config(exp: Experiment, info: dict) -> dict:
    """summary.json's ``config``: every constant, the derived topology and roles, the scenario,
    the trace (``info`` of :func:`scheduler.study.experiment.prepare`), the seed and the policies."""
    config = exp.cfg.to_dict()
    config["topology_derived"] = exp.tree.describe()
    config["cluster_derived"] = Cluster(exp.cfg, exp.tree).describe()
    config["scenario"] = {"name": exp.scenario.name, "source": exp.scenario.source, "params": exp.scenario.params}
    config["trace"] = info
    config["seed"] = exp.seed
    config["policies"] = [c.name for c in exp.policies]
    if exp.policy_files:
        config["policy_modules"] = [f.describe() for f in exp.policy_files]
    return config


def build_summary(backend: str, exp: Experiment, info: dict, policies: dict, provenance: dict | None,
                  sections: Mapping[str, object] | None = None) -> dict:
    """summary.json: ``kind`` and ``backend``, ``provenance`` (command, commit, time, versions),
    ``config`` (:func:`run_config`), ``policies``, then ``sections`` in their order."""
    summary: dict[str, object] = {"kind": backend, "backend": backend, "provenance": provenance,
                                  "config": run_config(exp, info), "policies": policies}
    summary.update(sections or {})
    return summary


def scenario_files(exp: Experiment) -> dict[str, bytes]:
    """The scenario file as it was loaded (``scenario.toml``) and every ``--policy-module`` file
    (``policy-<name>.py``), so a result folder holds what defined its run."""
    files = {"scenario.toml": exp.scenario.text.encode()} if exp.scenario.text else {}
    for f in exp.policy_files:
        files[f"policy-{Path(f.path).name}"] = f.text.encode()
    return files


def control_section(scenario: Scenario, policies: dict, target: str) -> dict:
    """summary.json's ``control``: the same trace window and policies run on the control
    ``scenario`` (``idle`` for the main job), with the comparison against ``target`` and the
    ablation, so that what the main scenario's network information buys reads beside what it buys
    on a quiet fabric."""
    return {"scenario": scenario.describe(), "policies": policies, "comparison": compare(policies, target),
            "ablation": ablation(policies)}


def write_experiment(out: Path, backend: str, exp: Experiment, info: dict, policies: dict,
                     records: dict[str, list[RequestRecord]], *, target: str, provenance: dict | None,
                     fmt: str = "png", sections: Mapping[str, object] | None = None,
                     links: LinkSeries | None = None, link_policy: str | None = None,
                     oracle_rows: dict | None = None, extra_files: Mapping[str, bytes] | None = None
                     ) -> tuple[Path, dict]:
    """Write the result folder of one experiment run at ``out``; (its path, its summary).

    The summary is :func:`build_summary` with the comparison against ``target``, the ablation,
    the backend's ``sections``, the scenario's event spans and where the per-link utilisation
    ``links`` is (recorded under ``link_policy``, when it is one policy's). The folder holds
    :func:`scenario_files`, the oracle-error files of ``oracle_rows`` (policy -> rows) and
    ``extra_files`` beside what :func:`write_results` writes.
    """
    spans = scenario_spans(exp.actions(), exp.horizon_s, exp.scenario.events, exp.tree.link_name)
    link_meta = None
    if links is not None:
        link_meta = {"policy": link_policy} if link_policy is not None else {}
        link_meta.update({"source": links.source, "file": LINK_CSV})
    summary = build_summary(backend, exp, info, policies, provenance, {
        "comparison_target": target, "comparison": compare(policies, target), "ablation": ablation(policies),
        **(sections or {}),
        "scenario_spans": [{"start_s": a, "end_s": b, "label": label} for a, b, label in spans],
        "link_utilisation": link_meta})
    files = {**(extra_files or {}), **scenario_files(exp),
             **oracle_error_plot.result_files(oracle_rows or {}, experiment_caption(summary), target, fmt)}
    path = write_results(out, summary, records, exp.slo(), files, target, fmt=fmt, spans=spans, links=links)
    return path, summary
