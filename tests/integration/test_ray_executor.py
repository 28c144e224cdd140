"""`--executor ray` (scheduler/study/executor.py): a sweep on a local Ray instance gives the local
pool's results, and Ctrl-C leaves no result folder. Skipped without Ray (an optional extra)."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.same_results import compare

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ["sweep", "--param", "rate-scale", "--values", "1,2", "--seeds", "0", "--max-requests", "200", "--no-tune",
         "--jobs", "2", "--no-progress"]
ON_TEST_RAY = ("import sys, ray; ray.init(num_cpus=2, include_dashboard=False)\n"
               "from scripts.netkv import main\n"
               "rc = main(sys.argv[1:])\n"
               "assert ray.is_initialized(), 'the executor shut down a Ray instance it did not start'\n"
               "ray.shutdown()\n"
               "sys.exit(rc)\n")
"""The CLI run in a process that started its own local Ray instance (two CPUs) first."""

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="Ray is not installed (an optional extra): scripts/setup.sh --ray")


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def test_a_sweep_on_ray_gives_the_local_pools_results(tmp_path):
    local = run([sys.executable, "-m", "scripts.netkv", *SWEEP, "--out", str(tmp_path / "local")])
    assert local.returncode == 0, local.stderr
    on_ray = run([sys.executable, "-c", ON_TEST_RAY, *SWEEP, "--executor", "ray", "--out", str(tmp_path / "ray")])
    assert on_ray.returncode == 0, on_ray.stderr
    assert compare(tmp_path / "local", tmp_path / "ray") == []
    assert (tmp_path / "ray" / "sweep.png").is_file()


def test_ctrl_c_on_ray_leaves_no_partial_folder(tmp_path):
    out = tmp_path / "cut"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "scripts.netkv", "sweep", "--param", "rate-scale", "--values",
                             "1,2,3,4", "--seeds", "0,1", "--max-requests", "1500", "--jobs", "2", "--executor", "ray",
                             "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # wait until the Ray instance is up and the points are submitted
        seen.append(line)
        if "Started a local Ray instance" in line:
            break
    time.sleep(2.0)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, err = proc.communicate(timeout=120)
    err = "".join(seen) + err
    assert proc.returncode == 130, err
    assert "interrupted; nothing was written" in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cut")]
