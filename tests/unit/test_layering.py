"""One definition each for what the fabric, controller, calibration and scheduler used to write
twice, and topology free of controller/scheduler imports (no root: nothing is built)."""
from __future__ import annotations

import argparse
import ast
import inspect
import socket
from pathlib import Path

import numpy as np
import pytest

from controller.settings import DEFAULT_OFP_PORT, DEFAULT_POLL_INTERVAL_S, DEFAULT_REST_PORT
from topology.emulated import emulated_mbit, kind_rates_mbit
from topology.model import FatTree, FatTreeConfig

ROOT = Path(__file__).resolve().parents[2]
SMALL = FatTreeConfig(pods=2, tors_per_pod=1, servers_per_tor=2, gpus_per_server=2, aggs_per_pod=2, cores=2)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "topology").glob("*.py")), ids=lambda p: p.name)
def test_topology_imports_neither_controller_nor_scheduler(path):
    bad = {m for m in _imports(path) if m.split(".")[0] in ("controller", "scheduler")}
    assert not bad, f"{path.name} imports {sorted(bad)}: topology is the bottom layer"


def test_controller_settings_import_no_topology():
    assert not {m for m in _imports(ROOT / "controller" / "settings.py") if m.startswith("topology")}


# --------------------------------------------------------------------------- the rate formula
@pytest.mark.parametrize("cfg", [FatTreeConfig(), SMALL])
@pytest.mark.parametrize("scale,time_scale", [(2.5e-5, 1.0), (2.5e-5, 2.0), (1e-5, 3.0), (5e-5, 1.0)])
def test_fabric_shapes_the_rates_calibration_and_emulable_expect(cfg, scale, time_scale):
    """The orchestrator builds the fabric at scale / time_scale; calibration, the emulability check
    and the background senders compute the same rates from (scale, time_scale) via one formula."""
    pytest.importorskip("mininet", reason="the Mininet topology (pure data) needs the mininet package")
    from scheduler.emulate.calibration import emulated_rates_mbit
    from scheduler.emulate.emulable import _emulated_capacity_mbit
    from scheduler.emulate.scenario_exec import background_rate_mbit
    from topology.mininet_topo import FatTreeTopo, link_capacity_bps

    tree = FatTree(cfg)
    shaped = FatTreeTopo(tree=tree, scale=scale / time_scale).rates_mbit
    expected = emulated_rates_mbit(tree, scale, time_scale)
    assert shaped == pytest.approx(expected, rel=1e-12)
    assert expected == kind_rates_mbit(tree, scale, time_scale)

    class Exp:
        pass

    exp = Exp()
    exp.tree = tree
    cap = _emulated_capacity_mbit(exp, scale, time_scale)
    assert list(cap[:-1]) == [expected[tree.link_kind(i)] for i in range(tree.n_links)] and cap[-1] == np.inf
    bps = link_capacity_bps(tree, scale / time_scale)
    assert all(bps[tree.link_name(i)] == pytest.approx(shaped[tree.link_kind(i)] * 1e6, rel=1e-12)
               for i in range(tree.n_links))
    for gbit in (1.0, 100.0, 400.0):
        assert background_rate_mbit(gbit, scale, time_scale) == emulated_mbit(gbit, scale, time_scale)


def test_emulated_mbit_is_real_rate_times_scale_over_time_scale():
    assert emulated_mbit(400.0, 2.5e-5) == pytest.approx(10.0)
    assert emulated_mbit(3600.0, 2.5e-5, 4.0) == pytest.approx(22.5)
    capped = kind_rates_mbit(FatTree(), 1e-4, 4.0, nvlink_cap_mbit=200.0)
    assert capped["nvlink"] == pytest.approx(50.0) and capped["nic"] == pytest.approx(10.0)


# --------------------------------------------------------------------------- tc arguments
def test_tc_argv_lists_are_the_shell_commands_the_interfaces_run():
    pytest.importorskip("mininet", reason="topology.mininet_topo imports the mininet package")
    from scheduler.emulate.scenario_exec import rate_argv, up_argvs
    from topology.mininet_topo import htb_argvs, htb_commands, htb_shape, leaf_argv, leaf_command

    for kind in ("nvlink", "nic", "tor_agg", "agg_core"):
        for mbit in (0.1, 5.0, 90.0, 1000.0):
            argvs = htb_argvs("p0t0-eth1", mbit, htb_shape(kind))
            assert htb_commands("p0t0-eth1", mbit, htb_shape(kind)) == [" ".join(a) for a in argvs]
            assert [a.split() for a in htb_commands("p0t0-eth1", mbit, htb_shape(kind))] == argvs  # no spaces inside
            assert rate_argv("p0t0-eth1", mbit, htb_shape(kind)) == argvs[1]
            assert leaf_command("x", mbit) == " ".join(leaf_argv("x", mbit)) and argvs[2] == leaf_argv("p0t0-eth1", mbit)
            assert up_argvs("x", mbit)[1] == leaf_argv("x", mbit, verb="add")


# --------------------------------------------------------------------------- controller settings
def test_one_default_for_the_controller_ports_and_poll_interval():
    """Every launcher and both backends take their defaults from controller.settings."""
    from controller import run
    from controller.client import DEFAULT_URL
    from controller.telemetry import LinkTelemetry
    from scheduler.model.config import build_config
    from scripts import cmd_fabric

    assert (DEFAULT_OFP_PORT, DEFAULT_REST_PORT, DEFAULT_POLL_INTERVAL_S) == (6653, 8080, 0.5)
    assert run.ControllerConfig().poll_interval_s == DEFAULT_POLL_INTERVAL_S
    args = run.build_parser().parse_args([])
    assert (args.ofp_port, args.rest_port) == (DEFAULT_OFP_PORT, DEFAULT_REST_PORT)
    assert f"http://127.0.0.1:{DEFAULT_REST_PORT}/netkv/telemetry" == DEFAULT_URL
    assert LinkTelemetry(FatTree(SMALL)).poll_interval_s == DEFAULT_POLL_INTERVAL_S
    assert build_config().oracle.poll_interval_s == DEFAULT_POLL_INTERVAL_S
    parser = argparse.ArgumentParser()
    cmd_fabric.register(parser.add_subparsers())
    up = parser.parse_args(["fabric", "up"])
    assert (up.ofp_port, up.rest_port, up.poll_interval) == (DEFAULT_OFP_PORT, DEFAULT_REST_PORT,
                                                             DEFAULT_POLL_INTERVAL_S)


def test_emulate_defaults_match_the_controller_settings():
    pytest.importorskip("mininet", reason="the orchestrator imports the Mininet topology")
    from scheduler.emulate.orchestrator import run_emulation
    from scripts import cmd_emulate

    params = inspect.signature(run_emulation).parameters
    assert (params["ofp_port"].default, params["rest_port"].default) == (DEFAULT_OFP_PORT, DEFAULT_REST_PORT)
    parser = argparse.ArgumentParser()
    cmd_emulate.register(parser.add_subparsers())
    action = {a.dest: a.default for sub in parser._subparsers._group_actions for p in sub.choices.values()
              for a in p._actions}
    assert (action["ofp_port"], action["rest_port"]) == (DEFAULT_OFP_PORT, DEFAULT_REST_PORT)


def test_cleanup_finds_the_controller_by_the_module_it_runs():
    from controller.process import CONTROLLER_MODULE
    from topology.cleanup import CONTROLLER_MARK

    assert f"-m {CONTROLLER_MODULE}" == CONTROLLER_MARK


def test_controller_process_ports_state_and_refusal():
    from controller.process import ControllerError, ControllerProcess
    from topology.errors import FabricError

    ctl = ControllerProcess(rest_port=18123, poll_interval_s=0.25)
    assert ctl.pid is None and ctl.state() == {
        "rest_port": 18123, "rest_url": "http://127.0.0.1:18123",
        "telemetry_url": "http://127.0.0.1:18123/netkv/telemetry", "poll_interval_s": 0.25}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(FabricError, match=f"TCP port {busy} on 127.0.0.1 is in use"):
            ctl.check_ports(busy)
    with pytest.raises(ControllerError, match="not running"):
        ctl.wait_ready()
    ctl.stop()  # never started: nothing to do
    assert ctl.log_tail() == "(no controller log)"


# --------------------------------------------------------------------------- one error class
def test_one_unknown_link_error():
    from controller import telemetry as controller_telemetry
    from scheduler.decision import telemetry as scheduler_telemetry
    from topology.errors import UnknownLinkError

    assert controller_telemetry.UnknownLinkError is scheduler_telemetry.UnknownLinkError is UnknownLinkError
    assert issubclass(UnknownLinkError, KeyError) and issubclass(UnknownLinkError, ValueError)
    assert str(UnknownLinkError("unknown directed link 'x'")) == "unknown directed link 'x'"


# --------------------------------------------------------------------------- host settings
def test_host_setup_commands():
    pytest.importorskip("mininet", reason="topology.host_setup uses the Mininet topology's interface names")
    from topology.host_setup import (
        HOST_RTO_MIN_MS,
        HOST_SLOW_START_AFTER_IDLE,
        HOST_TCP_CONGESTION,
        host_arp_lines,
        host_command,
    )

    tree = FatTree(SMALL)
    lines = host_arp_lines(tree, 0)
    assert len(lines) == tree.n_gpus - 1 + (tree.config.gpus_per_server - 1)
    assert all(line.endswith("nud permanent") for line in lines)
    cmd = host_command("p0t0s0g0", Path("/tmp/x.batch"))
    assert f"tcp_congestion_control={HOST_TCP_CONGESTION}" in cmd
    assert f"tcp_slow_start_after_idle={HOST_SLOW_START_AFTER_IDLE}" in cmd
    assert cmd.count(f"rto_min {HOST_RTO_MIN_MS}ms") == 2 and cmd.endswith("echo netkv-ok")
