"""`netkv plot` and `netkv compare` (scheduler/results/replot.py), event spans and link utilisation in
simulate's result folder, on tiny runs through the command line's ``main``."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scheduler.model.config import build_config
from scheduler.results import files as resultfiles
from scheduler.results import plotting
from scheduler.results.replot import ResultFolderError, load_folder, read_link_series, read_records
from scheduler.study.experiment import LinkRecording, prepare, run_simulation
from scripts.netkv import EXIT_BAD_INPUT, EXIT_OK, main
from topology.model import FatTree

N = 30
TIMED = """name = "timed-flow"
description = "one greedy flow into a decode GPU from 5 s to 9 s, then that NIC at half capacity"
[[event]]
kind = "flow"
at = 5.0
duration = 4.0
src = "p0t1s1g0"
dst = "p0t1s0g0"
[[event]]
kind = "link"
at = 3.0
duration = 2.5
link = "p0t1<->p0t1s0g0"
factor = 0.5
"""
"""A scenario with a timed flow and a timed link change (the by-rack layout: p0t1s0 decodes,
p0t1s1 is a reserved server)."""
POLICIES = "cache-load,netkv"


def simulate(out: Path, *extra: str) -> Path:
    args = ["simulate", "--max-requests", str(N), "--no-tune", "--no-progress", "--policies", POLICIES,
            "--out", str(out), *extra]
    assert main(args) == EXIT_OK
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny result folders of different scenarios: ``timed`` (PNG) and ``idle`` (PDF)."""
    root = tmp_path_factory.mktemp("runs")
    scenario = root / "timed-flow.toml"
    scenario.write_text(TIMED)
    return {"timed": simulate(root / "timed", "--scenario", str(scenario)),
            "idle": simulate(root / "idle", "--scenario", "idle", "--format", "pdf")}


def png_text(path: Path) -> dict[str, str]:
    with Image.open(path) as im:
        return dict(im.text)


# -- what simulate writes ------------------------------------------------------------------------
@pytest.mark.slow
def test_simulate_stores_the_scenario_spans(folders: dict[str, Path]) -> None:
    summary = json.loads((folders["timed"] / "summary.json").read_text())
    spans = summary["scenario_spans"]
    assert [(s["start_s"], s["end_s"]) for s in spans] == [(3.0, 5.5), (5.0, 9.0)]
    assert spans[0]["label"] == "link p0t1<->p0t1s0g0 at 50 % capacity"
    assert spans[1]["label"].startswith("e0 flow, 1 flow greedy | p0t1s1g0 -> p0t1s0g0")
    idle = json.loads((folders["idle"] / "summary.json").read_text())
    assert idle["scenario_spans"] == []


def test_simulate_figures_name_the_experiment(folders: dict[str, Path]) -> None:
    timed, idle = folders["timed"], folders["idle"]
    for name in plotting.figure_names("png", links=True):
        meta = png_text(timed / name)
        assert meta["Title"], name
        caption = meta["Description"]
        for part in ("scenario timed-flow", "trace synthetic(seed=0) (30 requests)", "model llama-3-8b",
                     "NIC 400 Gbit/s", "placement by-rack", "oracle telemetry"):
            assert part in caption, (name, part)
    for name in plotting.figure_names("pdf", links=True):
        data = (idle / name).read_bytes()
        assert data.startswith(b"%PDF") and b"scenario idle" in data, name
    assert not list(idle.glob("*.png"))


def test_simulate_records_link_utilisation_of_the_target(folders: dict[str, Path]) -> None:
    summary = json.loads((folders["timed"] / "summary.json").read_text())
    assert summary["link_utilisation"]["policy"] == "netkv"
    series = read_link_series(folders["timed"] / resultfiles.LINK_CSV)
    poll = summary["config"]["oracle"]["poll_interval_s"]
    assert len(series.link_names) == FatTree(build_config().topology).n_links
    assert np.allclose(np.diff(series.times_s), poll)
    assert series.times_s[0] == pytest.approx(poll)
    # the timed flow saturates the decode GPU's NIC from 5 s to 9 s, and only then
    col = series.link_names.index("p0t1->p0t1s0g0")
    busy = series.utilisation[:, col]
    during = (series.times_s > 5.5) & (series.times_s < 8.5)
    assert busy[during].min() > 0.99
    assert busy[series.times_s > 9.5].max() < 0.9


def test_link_recording_changes_no_result() -> None:
    cfg = build_config(overrides=[])
    exp, _ = prepare(cfg, None, "decode-flap", "cache-load,netkv:static", 60, 0, tune=False)
    _, plain = run_simulation(exp, progress=False, log=lambda m: None)
    recording = LinkRecording("cache-load")
    _, recorded = run_simulation(exp, progress=False, log=lambda m: None, links=recording)

    def strip(recs: dict) -> dict:
        return {n: [dict(vars(r), decision_us=0.0) for r in rs] for n, rs in recs.items()}

    assert strip(plain) == strip(recorded)
    assert recording.utilisation.shape == (recording.times_s.size, exp.tree.n_links)
    assert recording.times_s.size > 10 and recording.utilisation.max() > 0.5  # decode-flap's flows


# -- plot ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_plot_redraws_every_figure_in_place(folders: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "copy"
    shutil.copytree(folders["timed"], src)
    before = {name: png_text(src / name) for name in plotting.figure_names("png", links=True)}
    pixels = {name: np.asarray(Image.open(src / name)) for name in before}
    for name in before:
        (src / name).unlink()
    capsys.readouterr()
    assert main(["plot", str(src)]) == EXIT_OK
    printed = capsys.readouterr().out
    for name, meta in before.items():
        assert png_text(src / name) == meta, name
        assert f"{src / name}: {meta['Title']}" in printed
        again = np.asarray(Image.open(src / name))
        assert again.shape == pixels[name].shape
        # the records come back from requests.csv at microsecond precision: the same figure
        assert np.mean(np.any(again != pixels[name], axis=-1)) < 0.002, name
    assert not [p for p in src.iterdir() if p.name.startswith(".")]  # no temporary left


def test_plot_other_format_into_another_folder(folders: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "figs"
    assert main(["plot", str(folders["timed"]), "--format", "svg", "--out", str(out)]) == EXIT_OK
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([*plotting.figure_names("svg", links=True), resultfiles.LINK_CSV])
    text = (out / "ttft_over_time.svg").read_text()
    assert "<dc:title>TTFT over time per policy, with the scenario's events</dc:title>" in text
    assert "scenario timed-flow" in text
    assert not list(folders["timed"].glob("*.svg"))


def test_read_records_round_trip(folders: dict[str, Path]) -> None:
    records = read_records(folders["timed"] / "requests.csv")
    assert list(records) == POLICIES.split(",")
    summary = json.loads((folders["timed"] / "summary.json").read_text())
    for name, recs in records.items():
        assert len(recs) == N
        assert isinstance(recs[0].req_id, int) and isinstance(recs[0].ttft_s, float)
        mean = np.mean([r.ttft_s for r in recs])
        assert mean == pytest.approx(summary["policies"][name]["ttft_mean_s"], abs=1e-6)


def _bad_copy(src: Path, dst: Path, line: int, column: str, value: str) -> Path:
    shutil.copytree(src, dst)
    with (dst / "requests.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    rows[line - 1][rows[0].index(column)] = value
    with (dst / "requests.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return dst


def test_plot_malformed_csv_is_a_clear_error(folders: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    bad = _bad_copy(folders["timed"], tmp_path / "bad", 7, "ttft_s", "fast")
    before = {p.name: p.stat().st_mtime_ns for p in bad.iterdir()}
    assert main(["plot", str(bad)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"{bad / 'requests.csv'}: line 7: column ttft_s: 'fast' is not a number" in err
    assert {p.name: p.stat().st_mtime_ns for p in bad.iterdir()} == before  # nothing rewritten
    short = tmp_path / "short.csv"
    lines = (folders["timed"] / "requests.csv").read_text().splitlines()
    short.write_text("\n".join([*lines[:4], "netkv,1,2", *lines[4:]]) + "\n")
    with pytest.raises(ResultFolderError, match=r"short.csv: line 5: 3 fields, the header has 20"):
        read_records(short)


@pytest.mark.parametrize("remove, message", [("summary.json", "summary.json: missing"),
                                             ("requests.csv", "requests.csv: missing")])
def test_plot_incomplete_folder(folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
                                remove: str, message: str) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(folders["idle"], broken)
    (broken / remove).unlink()
    assert main(["plot", str(broken)]) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nowhere")]) == EXIT_BAD_INPUT
    assert "no such result folder" in capsys.readouterr().err


def test_load_folder_rejects_a_sweep_summary(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text(json.dumps({"kind": "sweep"}))
    with pytest.raises(ResultFolderError, match="no 'policies' section"):
        load_folder(tmp_path)
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(ResultFolderError, match="not valid JSON"):
        load_folder(tmp_path)


# -- compare -------------------------------------------------------------------------------------
def test_compare_two_scenarios(folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cmp"
    capsys.readouterr()
    assert main(["compare", str(folders["idle"]), str(folders["timed"]), "--out", str(out)]) == EXIT_OK
    printed = capsys.readouterr().out
    a = json.loads((folders["idle"] / "summary.json").read_text())["policies"]
    b = json.loads((folders["timed"] / "summary.json").read_text())["policies"]
    cmp = json.loads((out / "compare.json").read_text())
    assert list(cmp["policies"]) == ["cache-load", "netkv"]
    assert cmp["kind"] == "compare" and cmp["provenance"]["argv"][0] == "compare"
    for name in ("cache-load", "netkv"):
        m = cmp["policies"][name]["ttft_mean_s"]
        assert m["a"] == pytest.approx(a[name]["ttft_mean_s"]) and m["b"] == pytest.approx(b[name]["ttft_mean_s"])
        assert m["delta"] == pytest.approx(b[name]["ttft_mean_s"] - a[name]["ttft_mean_s"])
        assert m["delta_pct"] == pytest.approx(100 * m["delta"] / a[name]["ttft_mean_s"])
        slo = cmp["policies"][name]["slo_attainment"]
        assert slo["delta"] == pytest.approx(100 * (b[name]["slo_attainment"] - a[name]["slo_attainment"]))
        row = next(line for line in printed.splitlines() if line.startswith(name))
        assert f"{m['a']:.3f}" in row and f"{m['b']:.3f}" in row and f"{m['delta']:+.3f} s" in row
    assert "scenario idle" in cmp["a"]["experiment"] and "scenario timed-flow" in cmp["b"]["experiment"]
    assert sorted(p.name for p in out.iterdir()) == ["compare.json", "compare.txt", "ttft_cdf_compare.png"]
    caption = png_text(out / "ttft_cdf_compare.png")["Description"]
    assert "A (solid), idle: simulate | scenario idle" in caption
    assert "B (dashed), timed: simulate | scenario timed-flow" in caption
    assert (out / "compare.txt").read_text() in printed


def test_compare_errors(folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", str(folders["idle"]), str(tmp_path / "missing"), "--out", str(out)]) == EXIT_BAD_INPUT
    assert "missing: no such result folder" in capsys.readouterr().err
    other = tmp_path / "other"
    shutil.copytree(folders["idle"], other)
    summary = json.loads((other / "summary.json").read_text())
    summary["policies"] = {"round-robin": summary["policies"]["netkv"]}
    (other / "summary.json").write_text(json.dumps(summary))
    assert main(["compare", str(folders["idle"]), str(other), "--out", str(out)]) == EXIT_BAD_INPUT
    assert "no policy in common" in capsys.readouterr().err
    assert not out.exists()
