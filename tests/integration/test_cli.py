"""The `netkv` command line (scripts/netkv -> scripts/netkv.py), run as a user runs it."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NETKV = ROOT / "scripts" / "netkv"
POLICIES = ["round-robin", "least-loaded", "cache-load", "topology-affinity", "netkv:static", "netkv",
            "netkv:perfect"]
REQUIRED_KEYS = ["requests", "ttft_mean_s", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "slo_attainment",
                 "tbt_mean_ms", "tbt_p99_ms", "transfer_mean_s", "kv_bytes_moved", "tier_histogram",
                 "decision_us_p50", "decision_us_p99"]
PLOTS = ["ttft_cdf.png", "ttft_bars.png", "slo_attainment.png", "transfer_by_tier.png"]
TIMING_FIELDS = {"decision_us_p50", "decision_us_p99", "wall_s"}
N = 40


def netkv(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(NETKV), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def simulate_args(out: Path, *extra: str) -> list[str]:
    return ["simulate", "--max-requests", str(N), "--no-progress", "--out", str(out), *extra]


def run_concurrently(jobs: dict[str, list[str]], timeout: float = 300) -> dict[str, subprocess.CompletedProcess]:
    """Run the independent `netkv` invocations a few at a time (one per core): interpreter
    start-up dominates the short ones, so this keeps the module fast on a 2-core machine."""
    width = max(2, os.cpu_count() or 2)

    def one(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([str(NETKV), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    with ThreadPoolExecutor(max_workers=width) as pool:
        futures = {k: pool.submit(one, args) for k, args in jobs.items()}
        return {k: f.result() for k, f in futures.items()}


def policies_without_timing(summary: dict) -> dict:
    return {name: {k: v for k, v in p.items() if k not in TIMING_FIELDS} for name, p in summary["policies"].items()}


def csv_without_timing(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k != "decision_us"} for row in csv.DictReader(fh)]


GOOD = {"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}


def _line(**changes) -> str:
    rec = dict(GOOD, **changes)
    for k, v in list(rec.items()):
        if v is None:
            del rec[k]
    return json.dumps(rec)


MALFORMED = {  # id -> (third line of the trace, word the message must contain)
    "bad-json": ('{"timestamp": 1000, "input_length": 600,', "JSON"),
    "missing-field": (_line(timestamp=1000, output_length=None), "output_length"),
    "negative-length": (_line(timestamp=1000, input_length=-600), "input_length"),
    "unsorted": (_line(timestamp=100), "timestamp"),  # line 2 is at 500 ms
}
BAD_INPUT = {  # id -> (arguments, word the message must contain)
    "policy": (("--policies", "netkv,bogus-policy"), "bogus-policy"),
    "scenario": (("--scenario", "no-such-scenario"), "no-such-scenario"),
    "set-field": (("--set", "topology.bogus_field=1"), "bogus_field"),
    "set-value": (("--set", "topology.pods=0"), "pods"),
    "missing-trace": (("--trace", "/nonexistent/nope.jsonl"), "nope.jsonl"),
    "max-requests-0": (("--max-requests", "0"), "max-requests"),
    "weight-untunable": (("--weight", "round-robin=1"), "round-robin"),
    "no-prefill-instances": (("--set", "cluster.prefill_fraction=0"), "prefill_fraction"),
    "oracle-on-blind-policy": (("--policies", "cache-load:perfect"), "does not use the network cost oracle"),
    "oracle-unknown": (("--policies", "netkv:psychic"), "psychic"),
    "streaming": (("--set", "timing.kv_streaming=sideways"), "timing.kv_streaming"),
    "reserved": (("--set", "cluster.reserved_servers_per_pod=4"), "reserved_servers_per_pod"),
    "weight-negative": (("--weight", "netkv=-1"), "finite number >= 0"),
    "weight-ignored": (("--policies", "cache-load", "--weight", "netkv=0.1"), "would be ignored"),
    "rate-scale": (("--rate-scale", "0"), "--rate-scale"),
    "context-scale": (("--context-scale", "-2"), "--context-scale"),
    "slo-definition": (("--set", "slo.definition=vibes"), "slo.definition"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every simulate invocation of this module, run concurrently; id -> (result, out dir, extra)."""
    base = tmp_path_factory.mktemp("cli")
    jobs, outs, extra = {}, {}, {}

    def add(key, *args):
        outs[key] = base / key
        jobs[key] = simulate_args(outs[key], *args)

    add("a", "--no-tune", "--scenario", "hotspot")
    add("b", "--no-tune", "--scenario", "hotspot")
    add("tuned", "--policies", "cache-load,netkv", "--set", "tuning.tune_requests=30")
    trace = base / "t.jsonl"
    trace.write_text("\n".join(json.dumps({"timestamp": 250 * i, "input_length": 1600 + 10 * i, "output_length": 20,
                                           "hash_ids": [0, 100 + 3 * i, 101 + 3 * i, 102 + 3 * i]})
                               for i in range(12)) + "\n")
    extra["trace"] = trace
    add("trace", "--no-tune", "--trace", str(trace), "--policies", "netkv", "--set", "tuning.tune_requests=2")
    add("oracle", "--no-tune", "--policies", "netkv,netkv:static", "--oracle", "inflight", "--scenario", "decode-flap")
    cut = base / "cut.toml"  # a decode instance cut off for good: its requests can never finish
    cut.write_text('description = "cut"\n[[event]]\nkind = "link"\nlink = "p0t1<->p0t1s0g0"\nstate = "down"\n')
    extra["cut"] = cut
    add("cut", "--no-tune", "--policies", "round-robin", "--scenario", str(cut))
    short = base / "short.jsonl"  # 12 requests: too short to hold 500 out for tuning
    short.write_text(trace.read_text())
    extra["short"] = short
    add("short", "--trace", str(short), "--policies", "cache-load")
    add("short-ok", "--trace", str(short), "--policies", "cache-load", "--allow-overlapping-tuning",
        "--max-requests", "100")
    late = base / "late.toml"
    late.write_text('description = "late"\n[[event]]\nkind = "flow"\nat = 1e9\nsrc = "p0t1s1g0"\ndst = "p1t1s1g0"\n')
    add("late", "--no-tune", "--policies", "cache-load", "--scenario", str(late))
    jobs["unwritable"] = simulate_args(Path("/proc/netkv-nope"), "--no-tune")
    outs["unwritable"] = Path("/proc/netkv-nope")
    for key, (bad_line, _) in MALFORMED.items():
        bad = base / f"{key}.jsonl"
        bad.write_text("\n".join([_line(), _line(timestamp=500, hash_ids=[1, 3]), bad_line,
                                  _line(timestamp=2000)]) + "\n")
        extra[key] = bad
        add(key, "--no-tune", "--trace", str(bad))
    for key, (args, _) in BAD_INPUT.items():
        add(key, "--no-tune", *args)
    kept = base / "kept"
    kept.mkdir()
    (kept / "keep.txt").write_text("mine")
    outs["kept"] = kept
    jobs["kept"] = simulate_args(kept, "--no-tune")
    results = run_concurrently(jobs)
    return {k: (results[k], outs[k], extra.get(k)) for k in jobs}


# ----------------------------------------------------------------------------- simulate
def test_simulate_writes_summary_csv_and_plots(runs):
    res, out, _ = runs["a"]
    assert res.returncode == 0, res.stderr
    assert str(out) in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "simulate"
    assert list(summary["policies"]) == POLICIES
    for name, pol in summary["policies"].items():
        for key in REQUIRED_KEYS:
            assert key in pol, f"{name} lacks {key}"
        assert pol["requests"] == N
        assert len(pol["tier_histogram"]) == 4 and sum(pol["tier_histogram"]) <= N
        assert 0.0 <= pol["slo_attainment"] <= 1.0
        assert pol["ttft_p50_s"] <= pol["ttft_p90_s"] <= pol["ttft_p99_s"]
        assert pol["ttft_mean_s"] > 0 and pol["kv_bytes_moved"] > 0
    assert summary["config"]["scenario"]["name"] == "hotspot"
    assert summary["config"]["topology"]["nic_gbit_s"] == 400.0
    with open(out / "requests.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == N * len(POLICIES)
    assert {r["policy"] for r in rows} == set(POLICIES)
    for name in PLOTS + ["oracle_error.png"]:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, name
    # the oracle consumers' prices against their transfers' times (scheduler/decision/oracle_error.py)
    priced = {n for n, p in summary["policies"].items() if "oracle_error" in p}
    assert priced == {"netkv:static", "netkv", "netkv:perfect"}
    with open(out / "oracle_error.csv", newline="") as fh:
        assert {r["policy"] for r in csv.DictReader(fh)} == priced


def test_identical_runs_identical_results(runs):
    (res_a, out_a, _), (res_b, out_b, _) = runs["a"], runs["b"]
    assert res_a.returncode == 0, res_a.stderr
    assert res_b.returncode == 0, res_b.stderr
    a = json.loads((out_a / "summary.json").read_text())
    b = json.loads((out_b / "summary.json").read_text())
    assert policies_without_timing(a) == policies_without_timing(b)
    assert csv_without_timing(out_a / "requests.csv") == csv_without_timing(out_b / "requests.csv")


def test_simulate_with_tuning(runs):
    res, out, _ = runs["tuned"]
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["policies"]) == ["cache-load", "netkv"]
    for name, grid in (("cache-load", "cache_load_weights"), ("netkv", "netkv_weights_s")):
        pol = summary["policies"][name]
        table = pol["tuning"]
        assert [row["weight"] for row in table] == list(summary["config"]["tuning"][grid])
        # lowest mean TTFT among the weights whose mean TBT is within the tolerance of the best
        tol = summary["config"]["tuning"]["tbt_tolerance_ms"]
        ok = [r for r in table if r["tbt_mean_ms"] <= min(x["tbt_mean_ms"] for x in table) + tol]
        best = min(ok, key=lambda row: (row["ttft_mean_s"], row["weight"]))
        assert pol["params"][{"cache-load": "load_weight", "netkv": "load_weight_s"}[name]] == best["weight"]
        assert f"tuned {name}" in res.stderr
    assert summary["config"]["trace"]["tuning_slice"] == {"requests": 30, "disjoint_from_evaluation": True,
                                                          "skipped_too_long": 0}


def test_simulate_with_trace_file(runs):
    res, out, trace = runs["trace"]
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policies"]["netkv"]["requests"] == 10  # 12 minus the 2 held out for tuning
    assert summary["config"]["trace"]["source"] == str(trace.resolve())


def test_oracle_option_and_ablation_block(runs):
    res, out, _ = runs["oracle"]
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["oracle"]["kind"] == "inflight"
    assert summary["policies"]["netkv"]["params"]["oracle"] == "inflight"  # --oracle: the default oracle
    assert summary["policies"]["netkv:static"]["params"]["oracle"] == "static"  # a spec keeps its own
    abl = summary["ablation"]
    assert abl["target"] == "netkv" and list(abl["vs"]) == ["netkv:static"]
    assert "ablation, netkv (live telemetry) mean TTFT:" in res.stdout


def test_default_run_has_the_ablation(runs):
    _res, out, _ = runs["a"]
    summary = json.loads((out / "summary.json").read_text())
    vs = summary["ablation"]["vs"]
    assert list(vs) == ["netkv:static", "netkv:perfect", "topology-affinity", "cache-load"]
    for name, row in vs.items():
        base = summary["policies"][name]["ttft_mean_s"]
        live = summary["policies"]["netkv"]["ttft_mean_s"]
        assert row["ttft_mean_pct"] == pytest.approx(100 * (live - base) / base)
    assert summary["config"]["cluster_derived"]["layout"]["p0t1s1"] == "RRRR"


def test_a_request_that_can_never_finish_fails_clearly(runs):
    res, out, _ = runs["cut"]
    assert res.returncode == 1, res.stderr
    assert "can never finish under round-robin" in res.stderr
    assert "p0t1->p0t1s0g0 (down, no other path)" in res.stderr
    assert "nothing was written" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


def test_short_trace_tuning_needs_consent(runs):
    res, out, _ = runs["short"]
    assert res.returncode == 2 and "too short to hold its last 500" in res.stderr and not out.exists()
    res, out, _ = runs["short-ok"]
    assert res.returncode == 0, res.stderr
    assert "WARNING: weights tuned on requests that are also evaluated" in res.stderr
    assert "--max-requests 100: the trace has 12 requests to evaluate" in res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["trace"]["tuning_slice"]["disjoint_from_evaluation"] is False


def test_events_after_the_horizon_are_warned(runs):
    res, _out, _ = runs["late"]
    assert res.returncode == 0, res.stderr
    assert "WARNING: scenario 'late': event(s) [0] at 1e+09 s" in res.stderr and "never run" in res.stderr


def test_unwritable_out_fails_before_any_work(runs):
    res, _, _ = runs["unwritable"]
    assert res.returncode == 2 and "--out /proc/netkv-nope: cannot create a folder" in res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("netkv simulate: error:")  # nothing ran before it


def test_broken_pipe_and_bench_trace_errors():
    res = subprocess.run(f"{NETKV} constants --json | head -1", shell=True, capture_output=True, text=True, cwd=ROOT)
    assert res.stdout.strip() == "[" and "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr
    res = netkv("bench", "--quick", "--trace", "/nonexistent/nope.jsonl")
    assert res.returncode == 2 and "nope.jsonl: no such file" in res.stderr


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("key", list(MALFORMED))
def test_malformed_trace_exits_2_with_file_line_and_no_results(runs, key):
    res, out, trace = runs[key]
    assert res.returncode == 2, res.stderr
    assert f"{trace}:3" in res.stderr
    assert MALFORMED[key][1] in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()




@pytest.mark.parametrize("key", list(BAD_INPUT))
def test_bad_input_exits_2_naming_it(runs, key):
    res, out, _ = runs[key]
    assert res.returncode == 2, res.stderr[-600:]
    assert BAD_INPUT[key][1] in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()


def test_existing_result_folder_is_not_overwritten(runs):
    res, out, _ = runs["kept"]
    assert res.returncode == 2
    assert str(out) in res.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# ----------------------------------------------------------------------------- other commands
def test_scenarios_lists_builtins():
    res = netkv("scenarios")
    assert res.returncode == 0, res.stderr
    names = [line.split()[0] for line in res.stdout.splitlines() if line.strip() and not line.startswith("Use ")]
    for name in ("idle", "background", "hotspot", "bursty"):
        assert name in names


def test_constants_lists_parameters():
    res = netkv("constants")
    assert res.returncode == 0, res.stderr
    assert "topology.nic_gbit_s" in res.stdout
    assert "oracle.staleness_s" in res.stdout
    res = netkv("constants", "--json")
    assert res.returncode == 0
    rows = json.loads(res.stdout)
    assert {"name": "topology.nic_gbit_s", "default": "400.0"}.items() <= next(
        r for r in rows if r["name"] == "topology.nic_gbit_s").items()


def test_bench_quick_json():
    res = netkv("bench", "--quick", "--json", timeout=300)
    assert res.returncode == 0, res.stderr
    figures = json.loads(res.stdout)
    assert "decision_latency" in figures and "simulator" in figures
    for per_policy in figures["decision_latency"].values():
        assert set(per_policy) >= {"cache-load", "topology-affinity", "netkv"}
        for v in per_policy.values():
            assert v["p50_us"] <= v["p99_us"] and v["calls"] > 0
    assert figures["simulator"] and all(s["requests_per_s"] > 0 for s in figures["simulator"])


def test_unknown_command_exits_2():
    res = netkv("frobnicate")
    assert res.returncode == 2
    assert "frobnicate" in res.stderr


def test_result_folder_describes_itself(runs):
    """summary.json says which command, code and versions made it; the scenario is copied beside it."""
    res, out, _ = runs["a"]
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "simulate"
    prov = summary["provenance"]
    assert prov["argv"] == simulate_args(out, "--no-tune", "--scenario", "hotspot")
    assert prov["command"].startswith("netkv simulate ")
    assert prov["started_utc"].endswith("+00:00")
    assert prov["python"].count(".") == 2 and prov["packages"]["numpy"]
    if (ROOT / ".git").exists():
        assert len(prov["commit"]) == 40 and isinstance(prov["dirty"], bool)
    assert (out / "scenario.toml").read_bytes() == (ROOT / "scenarios" / "hotspot.toml").read_bytes()


def test_version_flag():
    res = netkv("--version", timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("netkv "), res.stderr


def test_target_picks_the_comparison_and_must_be_a_policy(tmp_path):
    out = tmp_path / "t"
    res = netkv(*simulate_args(out, "--no-tune", "--policies", "cache-load,netkv,round-robin",
                               "--target", "cache-load"))
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["comparison_target"] == "cache-load"
    assert set(summary["comparison"]) == {"netkv", "round-robin"}
    assert "cache-load vs round-robin: mean TTFT" in res.stdout
    assert summary["ablation"]["target"] == "netkv"  # the ablation is about netkv's oracle, whatever the target
    bad = tmp_path / "bad"
    res = netkv(*simulate_args(bad, "--no-tune", "--policies", "cache-load,netkv", "--target", "bogus"))
    assert res.returncode == 2 and "--target 'bogus' is not one of --policies" in res.stderr
    assert "Traceback" not in res.stderr and not bad.exists()


@pytest.mark.parametrize("args, message", [
    (("--set", "topology.pods=0"), "'pods' must be >= 1"),
    (("--set", "oracle.kind=static"), "the fabric takes topology.* constants only"),
    (("--topology", '{"podz": 2}'), "unknown field(s) ['podz']"),
    (("--topology", "notjson"), "not JSON"),
])
def test_fabric_up_bad_topology_refused_before_anything(args, message):
    """`fabric up` takes --set topology.X=V like the experiment commands; bad input exits 2 before
    any root check or fabric work."""
    res = netkv("fabric", "up", *args, timeout=60)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr


def test_emulated_staleness_quick_refuses_scenario_params(tmp_path):
    """--quick studies its own scenarios with their own parameters: a --scenario-param meant for
    one of them is refused by name (exit 2, nothing built or written) instead of silently dropped."""
    pytest.importorskip("mininet", reason="the emulated study's module imports the Mininet topology")
    out = tmp_path / "st"
    res = netkv("staleness", "--backend", "emulate", "--quick", "--scenario-param", "dwell=5", "--out", str(out),
                timeout=60)
    assert res.returncode == 2, res.stderr
    assert "--scenario-param" in res.stderr and "QUICK_SCENARIO_PARAMS" in res.stderr
    assert "Traceback" not in res.stderr and not out.exists()


POLICY_FILE = '''
from scheduler.decision.context import Decision
from scheduler.policies import Policy, register
from scheduler.policies.cache_load import best_prefill


@register
class NearestThenLoad(Policy):
    name = "nearest-test"
    description = "nearest decode tier, then load"
    tuned_param = "load_weight"
    default_weight = 1.0
    grid = (0.0, 1.0)

    def choose(self, ctx):
        p = best_prefill(ctx, ctx.turn)
        return Decision(p, int((ctx.cluster.decode_tiers(p) + self.weight * ctx.decode_load).argmin()))
'''


def test_policy_module_adds_a_tuned_policy_from_one_file(tmp_path):
    """`--policy-module FILE`: a policy written in one file outside the repository is resolved,
    tuned on its own grid, compared, recorded (path, hash) and copied into the result folder."""
    f = tmp_path / "nearest.py"
    f.write_text(POLICY_FILE)
    out = tmp_path / "run"
    res = netkv(*simulate_args(out, "--policy-module", str(f), "--policies", "cache-load,nearest-test",
                               "--target", "nearest-test", "--set", "tuning.tune_requests=60"))
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [row["weight"] for row in summary["policies"]["nearest-test"]["tuning"]] == [0.0, 1.0]
    assert summary["comparison_target"] == "nearest-test" and "cache-load" in summary["comparison"]
    (mod,) = summary["config"]["policy_modules"]
    assert mod["policies"] == ["nearest-test"] and mod["path"] == str(f.resolve()) and len(mod["sha256"]) == 64
    assert (out / "policy-nearest.py").read_text() == POLICY_FILE


def test_policy_module_file_colon_class_registers_an_undecorated_class(tmp_path):
    f = tmp_path / "plain.py"
    f.write_text(POLICY_FILE.replace("@register\n", ""))
    out = tmp_path / "run"
    res = netkv(*simulate_args(out, "--policy-module", f"{f}:NearestThenLoad", "--policies", "cache-load,nearest-test",
                               "--no-tune"))
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policies"]["nearest-test"]["params"] == {"load_weight": 1.0}
    assert summary["config"]["policy_modules"][0]["policies"] == ["nearest-test"]


ABSTRACT_POLICY = "from scheduler.policies import Policy\n\nclass Half(Policy):\n    name = 'half'\n"


@pytest.mark.parametrize("text,suffix,needle", [
    ("from scheduler.policies import register\n\nclass X(:\n", "", "line 3"),
    ("x = 1\n", "", "registers no new policy"),
    ("raise RuntimeError('boom')\n", "", "importing it failed: RuntimeError: boom"),
    (None, "", "no such file"),
    ("x = 1\n", ":Missing", "defines no Policy subclass 'Missing'"),
    (ABSTRACT_POLICY, ":Half", "does not implement choose(ctx)"),
    (POLICY_FILE.replace("nearest-test", "netkv").replace("@register\n", ""), ":NearestThenLoad", "is taken"),
])
def test_policy_module_errors_name_the_file(tmp_path, text, suffix, needle):
    f = tmp_path / "bad_policy.py"
    if text is not None:
        f.write_text(text)
    out = tmp_path / "run"
    res = netkv(*simulate_args(out, "--policy-module", f"{f}{suffix}", "--policies", "cache-load"))
    assert res.returncode == 2, res.stderr
    assert f"--policy-module {f}{suffix}" in res.stderr and needle in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not out.exists()


# ----------------------------------------------------------------------------- --out forms
def test_check_out_accepts_new_or_empty_folders_and_names_what_it_refuses(tmp_path):
    from scripts.cli_common import UsageError, check_out

    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "file").write_text("x")
    check_out(tmp_path / "empty")
    check_out(tmp_path / "new" / "deeper")
    check_out(tmp_path / "full", existing_ok=True)  # plot --out: figures written into it
    for out, why in [(tmp_path / "full", "exists and is not empty"), (tmp_path / "file", "is not a folder"),
                     (tmp_path / "file" / "sub", "is not a folder"), (Path("/proc/netkv-nope"), "cannot create"),
                     (tmp_path / "file", "is not a folder")]:
        with pytest.raises(UsageError, match=f"--out {out}: .*{why}"):
            check_out(out, existing_ok=out.name == "file")


def test_every_out_is_checked_before_any_work(tmp_path):
    """An --out naming an existing file is refused by every command that writes one, exit 2 with
    --out and the path, before anything runs (the report's markdown and figure folder included)."""
    taken = tmp_path / "taken"
    taken.write_text("x")
    (tmp_path / "figs.md").write_text("x")
    (tmp_path / "figs").write_text("x")
    jobs = {
        "simulate": simulate_args(taken),
        "sweep": ["sweep", "--param", "rate-scale", "--values", "1", "--max-requests", "5", "--out", str(taken)],
        "staleness": ["staleness", "--values", "0", "--max-requests", "5", "--out", str(taken)],
        "staleness-emulate": ["staleness", "--backend", "emulate", "--max-requests", "5", "--out", str(taken)],
        "report": ["report", "--quick", "--out", str(taken)],
        "report-figures": ["report", "--quick", "--out", str(tmp_path / "figs.md")],
        "plot": ["plot", str(tmp_path / "none"), "--out", str(taken)],
        "compare": ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(taken)],
    }
    results = run_concurrently(jobs)
    # emulate without the wrapper, whose setup --emulation would look after Open vSwitch first
    results["emulate"] = subprocess.run([sys.executable, "-m", "scripts.netkv", "emulate", "--out", str(taken)],
                                        capture_output=True, text=True, timeout=120, cwd=ROOT)
    for name, res in results.items():
        assert res.returncode == 2, (name, res.stderr[-600:])
        assert res.stderr.startswith(f"netkv {name.split('-')[0]}: error: --out {tmp_path}"), (name, res.stderr[-600:])
        assert "not a folder" in res.stderr and res.stderr.count("\n") == 1, (name, res.stderr[-600:])
