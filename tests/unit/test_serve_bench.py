"""serve-bench's parts that need no fabric: management addresses, the workers' fabric addressing,
the fault spec, joining the client's timings to the workers' records, and the CLI's refusals."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hosts.http_worker import FabricAddresses
from scheduler.model.config import build_config
from scheduler.router.client_bench import Timing
from topology.management import ManagementError, mgmt_addresses
from topology.model import FatTree
from topology.wiring import nic_ip, nvlink_ip

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("gpu", "subnet", "want"), [
    (0, "100.64.0.0/16", ("100.64.0.1", "100.64.0.2")),
    (1, "100.64.0.0/16", ("100.64.0.5", "100.64.0.6")),
    (64, "100.64.0.0/16", ("100.64.1.1", "100.64.1.2")),
    (16383, "100.64.0.0/16", ("100.64.255.253", "100.64.255.254")),
])
def test_management_addresses_are_one_point_to_point_slash30_per_gpu(gpu, subnet, want):
    assert mgmt_addresses(gpu, subnet) == want


def test_management_subnet_too_small_is_refused_naming_it():
    with pytest.raises(ManagementError, match=r"10\.9\.0\.0/28"):
        mgmt_addresses(4, "10.9.0.0/28")


@pytest.fixture(scope="module")
def fabric():
    cfg = build_config()
    tree = FatTree(cfg.topology)
    return FabricAddresses(cfg, {"100.64.0.2": 0, "100.64.0.6": 1, "100.64.0.10": tree.gpt * 4}), tree


def test_a_decode_worker_meets_its_prefill_over_the_fabric(fabric):
    """Same server: both ways over NVLink; another rack: both ways over the NICs; an address that
    is no worker of the bench: used as given."""
    addr, tree = fabric
    assert tree.tier(0, 1) == 0 and tree.tier(tree.gpt * 4, 0) > 0
    assert addr.route(1, "100.64.0.2") == (nvlink_ip(tree, 0), nvlink_ip(tree, 1))
    far = tree.gpt * 4
    assert addr.route(far, "100.64.0.2") == (nic_ip(tree, 0), nic_ip(tree, far))
    assert addr.route(far, "127.0.0.1") is None


def test_fabric_map_errors_name_the_file_and_host(tmp_path):
    cfg = build_config()
    bad = tmp_path / "map.json"
    bad.write_text(json.dumps({"hosts": {"100.64.0.2": 10**6}}))
    with pytest.raises(ValueError, match=r"map\.json.*100\.64\.0\.2|100\.64\.0\.2"):
        FabricAddresses.load(cfg, bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match=r"map\.json"):
        FabricAddresses.load(cfg, bad)


def _serve_bench():
    pytest.importorskip("mininet", reason="serve-bench lives with the emulator")
    from scheduler.emulate import serve_bench
    return serve_bench


@pytest.mark.parametrize(("text", "want"), [
    ("decode:p1t0s0g0@10", ("p1t0s0g0", 10.0, 5.0)),
    ("decode:p1t0s0g0@2.5+8", ("p1t0s0g0", 2.5, 8.0)),
])
def test_fault_spec(text, want):
    f = _serve_bench().WorkerFault.parse(text)
    assert (f.host, f.at_s, f.down_s) == want


@pytest.mark.parametrize("text", ["prefill:p0@1", "decode:p1t0s0g0", "decode:h@x", "decode:h@1+0", "decode:h@-1"])
def test_bad_fault_specs_are_refused_naming_the_option(text):
    with pytest.raises(ValueError, match="--fault"):
        _serve_bench().WorkerFault.parse(text)


def test_join_matches_records_by_prompt_in_send_order_and_computes_overhead():
    """Two requests with the same prompt are matched first-to-first; a request no worker saw keeps
    its client timing and no pair."""
    sb = _serve_bench()
    from scheduler.study.experiment import prepare

    exp, _ = prepare(build_config(), None, "idle", "round-robin", 3, 0, {}, False, {}, 1.0, 1.0)
    t = [Timing(0, "aa", 10, 2, 0.0, t_send=100.0, chunk_times=[100.5, 100.6]),
         Timing(1, "aa", 10, 2, 0.0, t_send=101.0, chunk_times=[101.8]),
         Timing(2, "bb", 10, 2, 0.0, t_send=102.0, error="APIConnectionError: boom")]
    tree = exp.tree
    recs = [{"role": "prefill", "prompt": "aa", "worker": tree.gpu_name(0), "t_arrival": 100.01,
             "t_send_start": 100.2, "t_send_end": 100.3, "bytes": 5, "cached_tokens": 0},
            {"role": "decode", "prompt": "aa", "worker": tree.gpu_name(1), "t_arrival": 100.02, "t_first": 100.4,
             "t_first_sent": 100.45},
            {"role": "prefill", "prompt": "aa", "worker": tree.gpu_name(2), "t_arrival": 101.01,
             "t_send_start": 101.2, "t_send_end": 101.25, "bytes": 5, "cached_tokens": 0},
            {"role": "decode", "prompt": "aa", "worker": tree.gpu_name(tree.gpt * 4), "t_arrival": 101.02,
             "t_first": 101.5}]
    rows = sb.join_records(exp, t, recs)
    assert [r["prefill"] for r in rows] == [tree.gpu_name(0), tree.gpu_name(2), None]
    assert rows[0]["tier"] == 0 and rows[1]["tier"] == tree.tier(2, tree.gpt * 4)
    # the workers' TTFT ends when the decode worker handed the first token to its stream
    assert rows[0]["worker_ttft_s"] == pytest.approx(0.44) and rows[0]["client_ttft_s"] == pytest.approx(0.5)
    assert rows[0]["overhead_s"] == pytest.approx(0.06) and rows[0]["worker_emit_lag_s"] == pytest.approx(0.05)
    assert rows[0]["transfer_s"] == pytest.approx(0.1)
    assert rows[1]["worker_ttft_s"] == pytest.approx(0.49) and rows[1]["worker_emit_lag_s"] is None
    assert rows[2]["client_ttft_s"] is None and rows[2]["error"].startswith("APIConnectionError")


@pytest.mark.parametrize(("args", "needle"), [
    (["--smg-policies", "cache_aware"], "--smg-policies expects PREFILL,DECODE"),
    (["--smg-policies", "cache_aware,nope"], "--smg-policies expects PREFILL,DECODE"),
    (["--fault", "decode:nohost@1"], "--fault decode:nohost: not a decode instance"),
    (["--fault", "decode:x"], "expected decode:HOST@T[+D]"),
    (["--compare", "--fault", "FIRST_DECODE@1"], "--fault and --compare"),
    (["--set", "topology.kind=rail"], "rail"),
    (["--scrape-interval", "5"], "--scrape-interval applies to --telemetry prometheus"),
])
def test_serve_bench_refuses_bad_input_before_building_anything(tmp_path, args, needle):
    pytest.importorskip("mininet", reason="serve-bench lives with the emulator")
    from scheduler.model.cluster import assign_roles
    from topology import cleanup

    cfg = build_config()
    tree = FatTree(cfg.topology)
    c = cfg.cluster
    decode = assign_roles(tree, c.placement, c.prefill_fraction, c.reserved_servers_per_pod)[1]
    args = [f"decode:{tree.gpu_name(int(decode[0]))}@1" if a == "FIRST_DECODE@1" else a for a in args]
    out = tmp_path / "sb"
    before = cleanup.read_state()
    res = subprocess.run([sys.executable, "-m", "scripts.netkv", "serve-bench", "--max-requests", "5",
                          "--no-progress", "--out", str(out), *args],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 2, res.stderr[-2000:]
    assert needle in res.stderr, res.stderr[-2000:]
    assert not out.exists() and cleanup.read_state() == before and "serve-bench: fabric" not in res.stderr


@pytest.mark.parametrize(("text", "want"), [
    ("http://10.0.0.1:30000@8998", ("http://10.0.0.1:30000", 8998, None)),
    ("p0t0s0g0=http://100.64.0.2:30000@8998", ("http://100.64.0.2:30000", 8998, "p0t0s0g0")),
    ("p0t0s0g0=http://100.64.0.2:30000", ("http://100.64.0.2:30000", None, "p0t0s0g0")),
])
def test_router_prefill_spec_takes_an_optional_host_name(text, want):
    from scripts.cmd_router import prefill_spec

    assert prefill_spec(text) == want


@pytest.mark.parametrize("text", ["10.0.0.1:30000", "p=http://h:1@0", "p=http://h:1@x"])
def test_router_prefill_spec_refuses_bad_specs(text):
    import argparse

    from scripts.cmd_router import prefill_spec

    with pytest.raises(argparse.ArgumentTypeError):
        prefill_spec(text)


def test_router_process_command_names_every_worker_and_refuses_a_priced_rule_without_names():
    from scheduler.router.netkv_router import NetKVRouterProcess

    r = NetKVRouterProcess([("http://a:1", 8998)], ["http://b:2"], "netkv",
                           names={"http://a:1": "p0t0s0g0", "http://b:2": "p0t1s0g0"}, oracle_url="http://o:3")
    cmd = r.command()
    assert cmd[cmd.index("--prefill") + 1] == "p0t0s0g0=http://a:1@8998"
    assert cmd[cmd.index("--decode") + 1] == "p0t1s0g0=http://b:2"
    assert cmd[cmd.index("--oracle") + 1] == "http://o:3"
    with pytest.raises(ValueError, match="host name"):
        NetKVRouterProcess([("http://a:1", 8998)], ["http://b:2"], "netkv", names={}, oracle_url="http://o:3")
