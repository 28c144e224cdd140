"""The sweep engine (scheduler/study/sweep.py), `netkv sweep` and `netkv staleness` end to end."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from scheduler.model.config import ConfigError
from scheduler.model.scenario import ScenarioError
from scheduler.study import sweep as sw

ROOT = Path(__file__).resolve().parents[2]
NETKV = ROOT / "scripts" / "netkv"


def netkv(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(NETKV), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_interval_arithmetic_on_a_hand_case():
    # three seeds 1, 2, 3: mean 2, sample sd 1, t(0.975, 2) = 4.303 -> half-width 4.303 / sqrt(3)
    mean, hw = sw.mean_ci([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0) and hw == pytest.approx(4.303 / 3 ** 0.5)
    assert sw.mean_ci([5.0])[0] == 5.0 and sw.mean_ci([5.0])[1] != sw.mean_ci([5.0])[1]  # NaN
    assert sw.t975(12) == pytest.approx(2.228 + (2.131 - 2.228) * 2 / 5)
    assert sw.t975(100) == 1.96


@pytest.mark.parametrize("text,match", [("", "comma-separated"), ("1,a", "not a number"), ("1,1", "repeated"),
                                        ("1,inf", "finite")])
def test_values_are_parsed_strictly(text, match):
    with pytest.raises(sw.SweepError, match=match):
        sw.parse_values(text)


def test_categorical_values_and_seeds():
    assert sw.parse_values("by-rack,mixed") == ["by-rack", "mixed"]
    assert sw.parse_values("0.5, 2") == [0.5, 2.0]
    assert sw.parse_seeds("0,3") == [0, 3]
    for bad in ("", "a", "1,1", "-1"):
        with pytest.raises(sw.SweepError, match="--seeds"):
            sw.parse_seeds(bad)


@pytest.mark.parametrize("param,values,err,match", [
    ("bogus", [1.0], sw.SweepError, "expected rate-scale"),
    ("topology.bogus_field", [1.0], ConfigError, "bogus_field"),
    ("topology.pods", [0.0], ConfigError, "pods"),
    ("scenario.nope", [1.0], ScenarioError, "nope"),
    ("rate-scale", [0.0], ValueError, "--rate-scale"),
    ("cluster.placement", ["by-rack", "sideways"], ConfigError, "sideways"),
])
def test_every_value_is_validated_before_work(param, values, err, match):
    s = sw.Sweep(param, values, [0], sw.Base(scenario="decode-flap", max_requests=20))
    with pytest.raises(err, match=match):
        sw.validate(s)


def test_trace_windows_as_seeds(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join(json.dumps({"timestamp": 1000 * i, "input_length": 900, "output_length": 5,
                                           "hash_ids": [i * 10, i * 10 + 1]}) for i in range(30)) + "\n")
    base = sw.Base(trace=str(trace), max_requests=10, policies="cache-load", tune=False)
    s = sw.Sweep("rate-scale", [1.0], [0, 1], sw.Base(**{**base.__dict__, "overrides": ("tuning.tune_requests=5",)}))
    sw.validate(s)
    exp0, _ = sw.prepare_point(s, sw.Point(1.0, 0))
    exp1, _ = sw.prepare_point(s, sw.Point(1.0, 1))
    assert [r.req_id for r in exp0.requests] == list(range(10))
    assert [r.req_id for r in exp1.requests] == list(range(10, 20))
    assert exp1.requests[0].arrival_s == 0.0  # rebased
    with pytest.raises(ConfigError, match=r"window 3 .* beyond"):
        sw.validate(sw.Sweep("rate-scale", [1.0], [0, 3], s.base))


def test_tiny_sweep_end_to_end(tmp_path):
    out = tmp_path / "sw"
    res = netkv("sweep", "--param", "topology.nic_gbit_s", "--values", "100,400", "--seeds", "0,1",
                "--max-requests", "60", "--policies", "cache-load,netkv", "--scenario", "decode-flap",
                "--set", "tuning.tune_requests=40", "--no-progress", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert {p.name for p in out.iterdir()} == {"summary.json", "sweep.csv", "sweep.txt", "sweep.png"}
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 2 * 2 * 2
    assert {(r["value"], r["seed"], r["policy"]) for r in rows} == {
        (v, s, p) for v in ("100", "400") for s in ("0", "1") for p in ("cache-load", "netkv")}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"].startswith("netkv sweep --param topology.nic_gbit_s")
    assert summary["kind"] == "sweep"
    assert summary["provenance"]["argv"][:3] == ["sweep", "--param", "topology.nic_gbit_s"]
    agg = summary["aggregate"]
    assert len(agg["vs"]["cache-load"]["ttft_mean_pct"]) == 2
    # the aggregate is the mean of the rows
    mean = sum(float(r["ttft_mean_s"]) for r in rows if r["value"] == "100" and r["policy"] == "netkv") / 2
    assert agg["policies"]["netkv"]["ttft_mean_s"][0][0] == pytest.approx(mean, rel=1e-5)
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "vs cache-load" in res.stdout


def test_staleness_study_end_to_end(tmp_path):
    out = tmp_path / "st"
    res = netkv("staleness", "--values", "0,2", "--max-requests", "80", "--set", "tuning.tune_requests=40",
                "--no-progress", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert {"staleness.txt", "staleness.png", "sweep.csv", "summary.json"} <= {p.name for p in out.iterdir()}
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    net = [r for r in rows if r["policy"] == "netkv"]
    assert next(float(r["same_tier_fraction"]) for r in net) == 1.0  # no staleness: agrees with itself
    assert all(r["regret_ms"] != "" for r in net)
    assert {r["policy"] for r in rows} == {"netkv", "netkv:perfect", "cache-load"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "staleness"
    assert summary["provenance"]["command"].startswith("netkv staleness --values 0,2")
    res = netkv("staleness", "--policies", "round-robin", "--out", str(tmp_path / "no"))
    assert res.returncode == 2 and "reads telemetry" in res.stderr and not (tmp_path / "no").exists()


def test_ctrl_c_leaves_no_partial_folder(tmp_path):
    out = tmp_path / "cut"
    proc = subprocess.Popen([str(NETKV), "sweep", "--param", "rate-scale", "--values", "1,2,3,4", "--seeds", "0,1",
                             "--max-requests", "1500", "--no-progress", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    time.sleep(6.0)  # setup done, points running in the pool
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; nothing was written" in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cut")]


def test_tiny_report_end_to_end_and_reproducible(tmp_path):
    args = ["report", "--quick", "--max-requests", "30", "--scenarios", "idle,decode-flap", "--set",
            "tuning.tune_requests=20", "--no-progress"]
    a, b = tmp_path / "a" / "results.md", tmp_path / "b" / "results.md"
    for out in (a, b):
        res = netkv(*args, "--out", str(out), timeout=600)
        assert res.returncode == 0, res.stderr
    text = a.read_text()
    figures = sorted(p.name for p in (a.parent / "results").iterdir())
    names = ("load", "context", "context-mixed", "bandwidth", "period", "staleness")
    assert figures == sorted(f"{k}.png" for k in names)
    for name in figures:  # every figure is in the markdown, next to the command that made it
        assert f"](results/{name})" in text
        block = text.split(f"](results/{name})")[0].rsplit("###", 1)[1]
        assert "`netkv sweep --param" in block or "`netkv staleness" in block
    assert "| decode-flap |" in text and "Where NetKV does not help" in text and "-21.2%" in text
    strip = lambda t: "\n".join(line for line in t.splitlines() if not line.startswith("Generated by"))  # noqa: E731
    assert strip(text) == strip(b.read_text())  # the simulator reproduces every figure
    assert (a.parent / "results" / "load.png").read_bytes()[:4] == b"\x89PNG"
