"""End-to-end `netkv emulate` on the real fabric (root): result files, and nothing left behind,
also when the run dies mid-replay."""
from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from topology.model import FatTree

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.emulation


def _our_processes() -> list[str]:
    out = subprocess.run(["pgrep", "-af", r"hosts\.agent|hosts\.background|controller/run\.py|"
                          r"netkv-prometheus-|scripts\.netkv oracle serve"],
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def _assert_nothing_left(tree: FatTree) -> None:
    from topology import cleanup

    left = cleanup.leftovers([tree], cleanup.read_state())
    assert not left.bridges, f"bridges left: {left.bridges[:5]}"
    assert not left.links, f"interfaces left: {left.links[:5]}"
    assert not _our_processes(), _our_processes()
    assert not list(Path(tempfile.gettempdir()).glob("netkv-prometheus-*")), "a Prometheus folder was left"
    assert cleanup.read_state() is None or not cleanup.owner_alive(cleanup.read_state())


def _no_foreign_fabric() -> None:
    from topology import cleanup

    state = cleanup.read_state()
    if state and cleanup.owner_alive(state):
        pytest.skip(f"a fabric is already running (owner pid {state['owner_pid']})")


def test_short_emulate_run_writes_every_result_file(tmp_path: Path, goodput_bounds) -> None:
    """The default layout (prefill racks, decode servers, reserved servers as traffic sources),
    decode-flap switching halves mid-replay (flow slots started by signal) and the inflight
    oracle, on the fabric."""
    _no_foreign_fabric()
    out = tmp_path / "emu"
    res = subprocess.run(
        [str(ROOT / "scripts" / "netkv"), "emulate", "--max-requests", "12", "--policies",
         "cache-load,netkv:inflight,netkv", "--scenario", "decode-flap", "--scenario-param", "period=3",
         "--set", "topology.nic_gbit_s=200", "--no-tune",
         "--no-progress", "--out", str(out), "--ofp-port", "16673", "--rest-port", "18091"],
        capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("summary.json", "requests.csv", "calibration.json", "telemetry.csv", "link_utilisation.png",
                 "ttft_cdf.png", "ttft_bars.png", "slo_attainment.png", "transfer_by_tier.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "emulate"
    # no --time-scale / --scale: both derived, with the reason, and the run's figures judged by them
    settings = summary["emulation"]["settings"]
    assert settings["derived_time_scale"] and settings["derived_scale"]
    assert summary["emulation"]["time_scale"] == settings["time_scale"] >= 1
    assert f"emulate: --time-scale {settings['time_scale']:g}: the userspace datapath adds" in res.stderr
    assert isinstance(summary["emulation"]["fidelity_misses"], list)
    assert summary["config"]["cluster_derived"]["reserved_gpus"] == 16
    assert summary["emulation"]["hosts"] == {"agents": 48, "reserved_without_agent": 16}
    for name in ("cache-load", "netkv:inflight", "netkv"):
        p = summary["policies"][name]
        assert p["requests"] == 12 and p["ttft_mean_s"] > 0
        assert p["tier_histogram"][:2] == [0, 0]  # by-rack: prefill racks hold no decode instance
    assert summary["policies"]["netkv:inflight"]["params"]["oracle"] == "inflight"
    # the oracle's price of every transfer against what the agents measured (both backends' file)
    err = summary["policies"]["netkv"]["oracle_error"]
    assert "oracle_error" not in summary["policies"]["cache-load"]
    with (out / "oracle_error.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:6] == ["policy", "req_id", "tier", "kv_bytes", "predicted_s", "measured_s"]
    assert {r["policy"] for r in rows} == {"netkv:inflight", "netkv"}
    # the summary's figures are the file's: one row per netkv transfer, every one priced and timed,
    # and the median relative error is the median of the rows' (the CSV rounds to 6 digits)
    mine = [r for r in rows if r["policy"] == "netkv"]
    assert err["transfers"] == len(mine) > 0
    assert all(float(r["predicted_s"]) > 0 and float(r["measured_s"]) > 0 for r in mine), mine
    rel = statistics.median(float(r["relative_error"]) for r in mine)
    assert err["median_rel_error"] == pytest.approx(rel, rel=1e-5)
    assert (out / "oracle_error.png").is_file()
    # evidence a user needs to trust the numbers: the tiers KV transfers take, calibrated
    cal = summary["calibration"]
    assert set(cal["tiers"]) == {"2", "3"} and set(cal["skipped_tiers"]) == {"0", "1"}
    assert cal["tiers"]["2"]["src"] == "p0t0s0g0" and cal["tiers"]["2"]["dst"] == "p0t1s0g0"
    for tier, t in cal["tiers"].items():
        floor, ceiling = goodput_bounds(tier)
        assert floor <= t["goodput_ratio"] <= ceiling, (tier, t["goodput_samples_mbit_s"])
    fid = summary["fidelity"]
    assert fid["probe"]["replies"] > 0 and "forwarding_saturated" in fid
    assert fid["probe"]["src"] == "p0t0s0g0" and fid["probe"]["dst"] == "p0t0s0g1"  # an idle NVLink
    # 40 Mbit/s x bridges at the default scale undilated; the derived settings scale it
    load = 40.0 * (summary["emulation"]["scale"] / 2.5e-5) / summary["emulation"]["time_scale"]
    assert fid["background_load"]["peak_flows"] == 32
    assert fid["background_load"]["peak_mbit_x_bridges"] == pytest.approx(load, abs=0.01)
    assert set(summary["agreement"]) == {"cache-load", "netkv:inflight"}
    assert set(summary["simulate_reference"]) == {"cache-load", "netkv:inflight", "netkv"}
    assert set(summary["ablation"]["vs"]) == {"cache-load", "netkv:inflight"}
    for t in summary["transfer_agreement"].values():
        assert t["transfers_emulate"] > 0 and t["ratio"] == pytest.approx(t["emulate_ms"] / t["simulate_ms"])
    # the same decisions on both backends: every emulated transfer with a fluid twin
    paired = summary["paired_transfer_agreement"]
    assert set(paired["by_policy"]) == {"cache-load", "netkv:inflight", "netkv"}
    moved = sum(1 for line in (out / "requests.csv").read_text().splitlines()[1:] if int(line.split(",")[10]) > 0)
    assert sum(t["transfers"] for t in paired["by_tier"].values()) == moved
    for t in paired["by_tier"].values():
        assert 0.2 < t["median_ratio"] < 5.0, paired  # twins, not unrelated transfers
    # the calibration's fit, and the oracle error through it
    assert all(t["fit"] and t["fit"]["slope"] > 0 for t in cal["tiers"].values()), cal
    assert set(err["calibrated"]["by_tier"]) <= {"2", "3"} and err["calibrated"]["transfers"] == err["transfers"]
    # telemetry saw decode-flap's halves in turn: the decode NICs of pods 0 and 2, then 1 and 3
    lines = (out / "telemetry.csv").read_text().splitlines()
    assert lines[0] == "policy,time_s,link,utilisation"
    hot: dict[str, list[float]] = {}
    for line in lines[1:]:
        _, t, link, util = line.split(",")  # (t < 0: the fabric before the replay's clock started)
        if float(t) >= 0 and float(util) > 0.8 and "t1->p" in link and link.split("->")[1][4:6] == "s0":
            hot.setdefault(link[:2], []).append(float(t))
    assert set(hot) == {"p0", "p1", "p2", "p3"}, sorted(hot)
    assert min(hot["p1"]) > min(hot["p0"]) + 1.0  # pods 1 and 3 a half period later
    _assert_nothing_left(FatTree())


def test_exception_mid_replay_leaves_nothing_behind(tmp_path: Path) -> None:
    """A replay that dies after a few requests still tears down every bridge, veth and process."""
    _no_foreign_fabric()
    script = """
import sys
from scheduler.model.config import build_config
from scheduler.study.experiment import prepare
from scheduler.emulate import replay
from scheduler.emulate.orchestrator import run_emulation

class Boom(RuntimeError):
    pass

orig = replay.RealtimeReplay.start
def start(self, s, i):
    if i == 4:
        raise Boom("injected failure at request 4")
    return orig(self, s, i)
replay.RealtimeReplay.start = start
exp, _ = prepare(build_config(), None, "background", "cache-load", 10, 0, tune=False)
try:
    run_emulation(exp, ofp_port=16683, rest_port=18092, progress=False, log=lambda m: None, keep_failed_logs=False)
except Boom as exc:
    print("raised:", exc)
    sys.exit(0)
sys.exit("no exception")
"""
    before = set(Path(tempfile.gettempdir()).glob("netkv-emulate-*"))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-1000:] + res.stderr[-3000:]
    assert "injected failure" in res.stdout
    _assert_nothing_left(FatTree())
    assert set(Path(tempfile.gettempdir()).glob("netkv-emulate-*")) <= before, "run folder left in the temp dir"


@pytest.mark.parametrize("sig,group,want_rc", [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143),
                                                (signal.SIGHUP, True, 129)], ids=["ctrl-c", "kill", "hang-up"])
def test_signal_mid_replay_leaves_nothing_behind(tmp_path: Path, sig: int, group: bool, want_rc: int) -> None:
    """Ctrl-C in the terminal (SIGINT to the whole foreground process group), `kill` of netkv alone
    or a dropped SSH session (SIGHUP to the group) during the replay: exit 128 + signal, no result
    folder, no run logs, and every bridge, veth, namespace and process gone."""
    _no_foreign_fabric()
    out = tmp_path / "emu"
    before = set(Path(tempfile.gettempdir()).glob("netkv-emulate-*"))
    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "netkv"), "emulate", "--max-requests", "60", "--policies", "netkv",
         "--time-scale", "1", "--no-tune", "--no-progress", "--out", str(out), "--ofp-port", "16693",
         "--rest-port", "18093"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    replaying = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "replaying" in line:
                replaying.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert replaying.wait(300), "".join(lines)[-3000:]
        time.sleep(2.0)  # a few requests into the replay
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(10)
    text = "".join(lines)
    assert rc == want_rc, text[-3000:]
    assert "nothing was written" in text
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    _assert_nothing_left(FatTree())
    assert set(Path(tempfile.gettempdir()).glob("netkv-emulate-*")) <= before, "run folder left in the temp dir"


def test_link_failure_and_component_faults_mid_replay(tmp_path: Path) -> None:
    """nic-failure (decode GPU p1t1s0g0's link down both ways, then back), the controller killed
    for 3 s and a decode agent killed later in the same replay, for two policies in turn: the run
    completes; the summary has the reroute timings (within two poll intervals), the faults, the
    oracle's static fallback while telemetry was stale and the requests lost with the agent (the
    second policy meets the same fault: the agent was started again); nothing is left behind.
    (One replay for all three: a fabric and its agents take a minute to build on two cores.)"""
    _no_foreign_fabric()
    out = tmp_path / "emu"
    res = subprocess.run(
        [str(ROOT / "scripts" / "netkv"), "emulate", "--max-requests", "40", "--policies", "netkv,cache-load",
         "--scenario", "nic-failure", "--scenario-param", "outage=0.2", "--fault", "controller@7+3",
         "--fault", "agent:p0t1s0g2@3", "--time-scale", "1", "--no-tune", "--no-progress", "--out", str(out),
         "--ofp-port", "16674", "--rest-port", "18092"],
        capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    policies = json.loads((out / "summary.json").read_text())["policies"]
    for name in ("netkv", "cache-load"):
        lost = policies[name]["failed_requests"]
        assert lost["of"] == 40 and policies[name]["requests"] == 40 - lost["count"]
        # the window's most cached decode instance after 3 s (8 of ~30 requests on the simulator, both
        # policies): a front end without health checks keeps sending it requests, which fail
        assert lost["count"] > 0 and all(f["decode"] == "p0t1s0g2" for f in lost["requests"]), lost
        (agent,) = [f for f in policies[name]["faults"] if f["kind"] == "agent"]
        assert agent["error"] is None and 2.5 <= agent["down_at_s"] <= 4.0, agent
    assert "requests failed" in res.stdout and "agent of p0t1s0g2 killed" in res.stdout
    row = policies["netkv"]
    rep = row["reroute"]
    assert [e["down"] for e in rep["events"]] == [True, False] and rep["unseen"] == 0, rep
    assert {e["link"] for e in rep["events"]} == {"p1t1<->p1t1s0g0"}
    assert rep["within_target"] and rep["rerouted_max_s"] <= rep["target_s"], rep
    assert rep["events"][0]["source"] in ("port_status", "port_desc_poll")
    # the transfers the summary says stood still on the failed link are the requests.csv rows that did
    with (out / "requests.csv").open(newline="") as f:
        stalled = [r for r in csv.DictReader(f) if r["policy"] == "netkv" and float(r["stalled_s"]) > 0]
    assert row["failure"]["transfers"] == len(stalled), (row["failure"], stalled)
    if stalled:
        assert row["failure"]["stalled_max_s"] == pytest.approx(max(float(r["stalled_s"]) for r in stalled), abs=1e-3)
    (fault,) = [f for f in row["faults"] if f["kind"] == "controller"]
    assert fault["error"] is None and 6.5 <= fault["down_at_s"] <= 8.0 and fault["ready_at_s"] >= 10.0, fault
    fb = row["telemetry_fallback"]
    assert fb["decisions"] >= 1 and fb["first_s"] >= fault["down_at_s"] + fb["after_age_s"] - 1.0, fb
    assert fb["last_s"] <= fault["ready_at_s"] + 2.0, fb
    assert "WARNING: netkv: telemetry older than" in res.stdout and "fault under netkv: controller killed" in res.stdout
    print(f"\n[measured] nic-failure reroutes {[e['rerouted_after_s'] for e in rep['events']]} s; controller down "
          f"{fault['down_at_s']}-{fault['ready_at_s']} s; {fb['decisions']} decisions priced statically "
          f"{fb['first_s']}-{fb['last_s']} s")
    _assert_nothing_left(FatTree())


def test_staleness_study_on_the_fabric(tmp_path: Path) -> None:
    """`netkv staleness --backend emulate`: one fabric, the window replayed per staleness value with
    a fresh shadow oracle, the simulator's study beside it, one result folder."""
    _no_foreign_fabric()
    out = tmp_path / "st"
    res = subprocess.run(
        [str(ROOT / "scripts" / "netkv"), "staleness", "--backend", "emulate", "--scenario", "decode-flap",
         "--values", "0,2", "--max-requests", "20", "--no-tune", "--no-progress", "--out", str(out),
         "--ofp-port", "16675", "--rest-port", "18093"],
        capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "emulate" and summary["values"] == [0.0, 2.0]
    (sc,) = summary["scenarios"]
    assert set(sc["emulate_policies"]) == {"cache-load", "netkv@0s", "netkv@2s"}
    stale = sc["emulate_policies"]["netkv@2s"]["agreement"]
    assert stale["decisions"] == 20 and 0 <= stale["same_instance_fraction"] <= stale["same_tier_fraction"] <= 1
    assert "agreement" not in sc["emulate_policies"]["netkv@0s"]
    rows = {(r["backend"], r["value"]): r for r in sc["rows"]}
    assert set(rows) == {("emulate", 0.0), ("emulate", 2.0), ("simulate", 0.0), ("simulate", 2.0)}
    assert rows[("simulate", 2.0)]["regret_vs_perfect_ms"] is not None
    # the replays' KV transfers against their fluid twins (the same decisions), per replay
    assert set(sc["paired_transfer_agreement"]["by_policy"]) <= {"cache-load", "netkv@0s", "netkv@2s"}
    assert sc["paired_transfer_agreement"]["by_tier"]
    assert (out / "staleness-decode-flap.png").is_file() and (out / "staleness.csv").is_file()
    assert "regret trend" in res.stdout
    _assert_nothing_left(FatTree())


def test_telemetry_through_prometheus_and_pricing_through_the_oracle_service(tmp_path: Path) -> None:
    """The path a deployment runs: switch counters -> Ryu -> a real Prometheus -> the oracle service
    -> the scheduler, every decision priced over HTTP; its health and the telemetry's age at
    decision in the summary; Prometheus, the service and their folders gone afterwards."""
    _no_foreign_fabric()
    out = tmp_path / "prom"
    res = subprocess.run(
        [str(ROOT / "scripts" / "netkv"), "emulate", "--max-requests", "12", "--policies", "netkv:static,netkv",
         "--scenario", "decode-flap", "--scenario-param", "period=3", "--set", "topology.nic_gbit_s=200",
         "--time-scale", "1", "--no-tune", "--telemetry", "prometheus", "--scrape-interval", "0.5", "--oracle-service",
         "--no-progress", "--out", str(out), "--ofp-port", "16677", "--rest-port", "18095"],
        capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Prometheus at http://127.0.0.1:" in res.stderr and "oracle service at http://127.0.0.1:" in res.stderr
    summary = json.loads((out / "summary.json").read_text())
    path = summary["emulation"]["telemetry_path"]
    assert path["source"] == "prometheus" and path["service"] == "start" and path["rate_window_s"] == 1.25
    assert path["prometheus_alive_at_end"] and path["service_alive_at_end"]
    # every netkv decision went over HTTP, none of them degraded: Prometheus had the counters
    assert path["service_calls"] >= 12 and path["service_degraded_answers"] == 0
    age = path["service_telemetry_age_s"]
    assert 0 < age["p50"] <= age["max"] < 10.0  # a scrape or two old, never stale enough to fall back
    assert summary["policies"]["netkv"]["requests"] == 12
    _assert_nothing_left(FatTree())


def test_staleness_by_scrape_interval_on_the_fabric(tmp_path: Path) -> None:
    """`netkv staleness --backend emulate --telemetry prometheus`: netkv on the controller's REST and
    through a real Prometheus at a scrape interval, the age measured at decision growing with it,
    a fresh shadow on the REST beside the Prometheus-fed oracle, the simulator at the measured age."""
    _no_foreign_fabric()
    out = tmp_path / "scrape"
    res = subprocess.run(
        [str(ROOT / "scripts" / "netkv"), "staleness", "--backend", "emulate", "--telemetry", "prometheus",
         "--scrape-intervals", "2", "--scenario", "decode-flap", "--max-requests", "20", "--no-tune",
         "--no-progress", "--out", str(out), "--ofp-port", "16679", "--rest-port", "18097"],
        capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["param"] == "scrape_interval_s" and summary["values"] == [2.0]
    (sc,) = summary["scenarios"]
    assert set(sc["emulate_policies"]) == {"cache-load", "netkv:static", "netkv@0s", "netkv@2s"}
    ages = {float(k): v for k, v in sc["measured_age_s"].items()}
    assert 0 < ages[0.0] < ages[2.0]  # Prometheus adds its scrape and rate window to the REST's age
    stale = sc["emulate_policies"]["netkv@2s"]["agreement"]
    assert stale["decisions"] == 20 and 0 <= stale["same_instance_fraction"] <= stale["same_tier_fraction"] <= 1
    rows = {(r["backend"], r["value"]): r for r in sc["rows"]}
    assert rows[("simulate", 2.0)]["age_s"] == pytest.approx(round(ages[2.0] - ages[0.0], 2))
    assert all(r["vs_static_pct"] is not None for r in sc["rows"])  # what live telemetry buys over the static oracle
    assert "scrape s" in res.stdout and "regret trend" in res.stdout
    _assert_nothing_left(FatTree())
