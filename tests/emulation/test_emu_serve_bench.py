"""`netkv serve-bench` on the real fabric (root): smg and the NetKV router in front of HTTP workers
in the emulated hosts, TTFT at an OpenAI client; a decode worker killed mid-run; Ctrl-C; nothing
left behind."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from topology.model import FatTree

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.emulation
NETKV = str(ROOT / "scripts" / "netkv")
SMALL = ["--set", "topology.pods=2"]
"""Two pods (32 GPUs, 24 workers): every router's workers start faster; the protocol is the same."""


def _ours() -> list[str]:
    out = subprocess.run(["pgrep", "-af", r"hosts\.http_worker|smg launch|controller/run\.py|"
                          r"netkv-prometheus-|scripts\.netkv oracle serve"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def _assert_nothing_left() -> None:
    from topology import cleanup

    left = cleanup.leftovers([FatTree()], cleanup.read_state())
    assert not left.bridges and not left.links, left
    assert not [n for n in os.listdir("/sys/class/net") if n.startswith("nkvm")], "management veths left"
    assert not _ours(), _ours()
    assert not list(Path(tempfile.gettempdir()).glob("netkv-serve-*")), "run folder left in the temp dir"
    state = cleanup.read_state()
    assert state is None or not cleanup.owner_alive(state)


def _no_foreign_fabric() -> None:
    from topology import cleanup

    state = cleanup.read_state()
    if state and cleanup.owner_alive(state):
        pytest.skip(f"a fabric is already running (owner pid {state['owner_pid']})")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_every_router_serves_every_request_on_one_fabric(tmp_path: Path) -> None:
    """--compare: smg (twice) and the NetKV router (three rules) in turn; every request streamed
    its tokens to the client through each, with its pair from the workers' records."""
    _no_foreign_fabric()
    out = tmp_path / "sb"
    res = subprocess.run([NETKV, "serve-bench", "--compare", "--max-requests", "6", "--no-progress", *SMALL,
                          "--out", str(out), "--ofp-port", "16695", "--rest-port", "18095"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["router"] for s in summary["routers"]] == [
        "smg:cache_aware/power_of_two", "smg:round_robin/round_robin", "netkv-router:cache-load",
        "netkv-router:topology-affinity", "netkv-router:netkv"]
    for s in summary["routers"]:
        assert s["backend"] == "serve-bench" and s["errors"] == 0 and s["requests"] == 6, s
        assert s["router_overhead_s"]["n"] == 6 and s["simulate_same_decisions_by_tier"], s
        slug = s["router"].replace(":", "-").replace("/", "-")
        rows = _rows(out / f"{slug}-requests.csv")
        assert len(rows) == 6 and all(r["prefill"] and r["decode"] and float(r["client_ttft_s"]) > 0 for r in rows)
        assert all(int(r["tokens"]) == int(r["output_tokens"]) for r in rows)
    assert summary["routers"][0]["router_version"] not in (None, "netkv-router")  # smg's own version
    assert (out / "smg-cache_aware-power_of_two-smg.log").exists() and (out / "serve_bench.png").exists()
    assert b"smg_" in (out / "smg-cache_aware-power_of_two-smg-metrics.txt").read_bytes()
    assert "router" in res.stdout and "vs first" in res.stdout
    _assert_nothing_left()


def test_a_decode_worker_killed_mid_run_is_routed_around_and_back(tmp_path: Path) -> None:
    """The NetKV router with a decode worker killed 2 s in and restarted 4 s later: the router
    takes it out, every client request is accounted for (served or a counted error), the worker
    comes back into the rotation."""
    from scheduler.model.cluster import assign_roles
    from scheduler.model.config import build_config

    _no_foreign_fabric()
    cfg = build_config(overrides=["topology.pods=2"])
    tree = FatTree(cfg.topology)
    c = cfg.cluster
    victim = tree.gpu_name(int(assign_roles(tree, c.placement, c.prefill_fraction, c.reserved_servers_per_pod)[1][0]))
    out = tmp_path / "fault"
    res = subprocess.run([NETKV, "serve-bench", "--router", "netkv", "--policy", "cache-load",
                          "--max-requests", "40", "--fault", f"decode:{victim}@2+4", "--no-progress", *SMALL,
                          "--out", str(out), "--ofp-port", "16696", "--rest-port", "18096"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    s = json.loads((out / "summary.json").read_text())
    f = s["fault"]
    assert f["host"] == victim and f["router_marked_down_after_s"] is not None, f
    assert f["restart_to_healthy_s"] is not None and f["router_marked_up_after_restart_s"] is not None, f
    rows = _rows(out / "requests.csv")
    assert len(rows) == 40
    failed = [r for r in rows if r["error"] or not r["client_ttft_s"]]
    assert len(failed) == s["errors"] == f["client_errors"]
    _assert_nothing_left()


def test_ctrl_c_mid_replay_leaves_nothing_behind(tmp_path: Path) -> None:
    _no_foreign_fabric()
    out = tmp_path / "sb"
    proc = subprocess.Popen([NETKV, "serve-bench", "--router", "smg", "--max-requests", "60", "--no-progress",
                             "--out", str(out), "--ofp-port", "16697", "--rest-port", "18097"],
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
        time.sleep(2.0)
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(10)
    assert rc == 130, "".join(lines)[-3000:]
    assert not out.exists()
    _assert_nothing_left()
