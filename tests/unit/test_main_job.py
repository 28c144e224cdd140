"""The main job (`netkv simulate` without --scenario): the shared-cluster scenario it runs and the
idle control it runs beside it, in summary.json and on stdout; `--control` to choose or drop it."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from scheduler.model.cluster import assign_roles
from scheduler.model.config import build_config
from scheduler.model.scenario import CONTROL_SCENARIO, MAIN_JOB_SCENARIO, load_scenario
from scheduler.results.tables import format_control
from scripts.cmd_simulate import control_scenario
from scripts.netkv import EXIT_BAD_INPUT, EXIT_OK, build_parser, main
from topology.model import FatTree

N = 40
POLICIES = "cache-load,netkv:static,netkv"


def simulate(out: Path, *extra: str) -> int:
    return main(["simulate", "--max-requests", str(N), "--no-tune", "--no-progress", "--policies", POLICIES,
                 "--out", str(out), *extra])


def test_default_job_is_the_shared_cluster_with_the_idle_control() -> None:
    args = build_parser().parse_args(["simulate"])
    assert control_scenario(args) == CONTROL_SCENARIO == "idle"
    assert args.scenario == MAIN_JOB_SCENARIO == "shared-cluster"
    given = build_parser().parse_args(["simulate", "--scenario", "hotspot"])
    assert control_scenario(given) is None  # a scenario given: no control unless asked
    asked = build_parser().parse_args(["simulate", "--scenario", "hotspot", "--control", "idle"])
    assert control_scenario(asked) == "idle"
    assert control_scenario(build_parser().parse_args(["simulate", "--control", "none"])) is None


def test_shared_cluster_has_tenants_storage_bursts_and_a_link_flap() -> None:
    """Its three ingredients: steady flows between servers that serve nothing (other tenants),
    bursts from those servers into decode GPUs for part of the run (storage), and a link of the
    fabric down for a while and back (a flap)."""
    cfg = build_config("llama-3-8b", None, [])
    tree = FatTree(cfg.topology)
    roles = assign_roles(tree, cfg.cluster.placement, cfg.cluster.prefill_fraction,
                         cfg.cluster.reserved_servers_per_pod, cfg.cluster.tp)
    names = tree.gpu_names
    reserved = {names[g] for g in roles.reserved}
    decode = {names[g] for g in roles.decode}
    sc = load_scenario(MAIN_JOB_SCENARIO, tree)
    kinds = [e["kind"] for e in sc.events]
    assert sorted(set(kinds)) == ["burst", "flow", "link"]
    run_s = 400.0
    acts = sc.actions(tree, run_s + 300.0, run_s)
    tenant = [a for a in acts if a.kind == "flow_start" and a.rate_gbit_s is not None]
    assert tenant and all(a.time_s == 0.0 for a in tenant)
    assert all(names[a.src] in reserved and names[a.dst] in reserved for a in tenant)
    assert not [a for a in acts if a.kind == "flow_stop" and str(a.flow_id).startswith("e0.") and a.time_s < run_s]
    storage = [a for a in acts if a.kind == "flow_start" and a.rate_gbit_s is None]
    assert {names[a.dst] for a in storage} == decode and {names[a.src] for a in storage} <= reserved
    first, last = min(a.time_s for a in storage), max(a.time_s for a in storage)
    assert first > 0.0 and last < run_s  # part of the run only
    down = [a for a in acts if a.kind == "link_capacity" and a.factor == 0.0]
    up = [a for a in acts if a.kind == "link_capacity" and a.factor == 1.0]
    assert len(down) == len(up) == 1 and last < down[0].time_s < up[0].time_s < run_s
    assert up[0].links == down[0].links
    assert "description" in sc.describe() and sc.text.count("#") > 20  # documented in the file


def test_control_beside_the_scenario_in_summary_and_stdout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "main"
    assert simulate(out) == EXIT_OK
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["scenario"]["name"] == "shared-cluster"
    control = summary["control"]
    assert control["scenario"]["name"] == "idle"
    assert list(control["policies"]) == list(summary["policies"]) == POLICIES.split(",")
    assert set(control["comparison"]) == set(summary["comparison"]) == {"cache-load", "netkv:static"}
    assert control["ablation"]["target"] == "netkv"
    assert "scenario: shared-cluster" in printed and "scenario: idle" in printed
    assert "on 'shared-cluster' and on the control 'idle'" in printed
    side = printed[printed.index("on the control 'idle'"):].splitlines()
    assert side[1].split() == ["netkv", "vs", "shared-cluster", "idle", "(control)"]
    assert [line.split()[0] for line in side[2:4]] == ["cache-load", "netkv:static"]

    # the control is exactly a run of the idle scenario on the same requests
    alone = tmp_path / "idle"
    assert simulate(alone, "--scenario", "idle") == EXIT_OK
    capsys.readouterr()
    idle = json.loads((alone / "summary.json").read_text())
    assert "control" not in idle
    for name, entry in idle["policies"].items():
        for key in ("requests", "ttft_mean_s", "ttft_p99_s", "tier_histogram"):
            assert control["policies"][name][key] == entry[key], (name, key)


def test_control_none_runs_and_prints_no_control(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert simulate(out, "--control", "none") == EXIT_OK
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["scenario"]["name"] == "shared-cluster" and "control" not in summary
    assert "scenario: shared-cluster" in printed and "control:" not in printed and "(control)" not in printed
    assert format_control(summary) == ""


@pytest.mark.parametrize(("extra", "message"), [
    (("--scenario", "idle", "--control", "idle"), "--control idle: the same scenario as --scenario"),
    (("--control", "no-such-control"), "--control no-such-control: unknown scenario"),
])
def test_a_control_that_cannot_apply_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 extra: tuple[str, ...], message: str) -> None:
    out = tmp_path / "run"
    assert simulate(out, *extra) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_live_information_buys_something_in_the_scenario_and_nothing_in_the_control(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """What the main job is for: NetKV on live telemetry beats the same greedy on the static oracle
    under the shared cluster's storage bursts and flap, and ties it on the quiet fabric."""
    out = tmp_path / "run"
    assert main(["simulate", "--max-requests", "600", "--no-tune", "--no-progress", "--policies",
                 "netkv:static,netkv", "--out", str(out)]) == EXIT_OK
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["comparison"]["netkv:static"]["ttft_mean_pct"] < -1.0
    assert math.isclose(summary["control"]["comparison"]["netkv:static"]["ttft_mean_pct"], 0.0, abs_tol=0.5)
