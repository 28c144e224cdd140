"""The package boundaries (an import scan of every module, top-level and function-level imports
alike, ``TYPE_CHECKING`` ones included), and one definition each for what the fabric, controller,
calibration and scheduler used to write twice (no root: nothing is built)."""
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


FIRST_PARTY = ("topology", "controller", "hosts", "scheduler", "scripts")
"""The repository's top-level packages: the boundaries below restrict imports of these only."""


def _is_module(dotted: str) -> bool:
    """Whether ``dotted`` names a module or package of the repository (not a name inside one)."""
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """Every module the file ``path`` imports (see :func:`_scan`)."""
    return _scan(path.read_text(), path.relative_to(ROOT).parent.parts)


def _scan(source: str, package: tuple[str, ...]) -> set[str]:
    """Every module ``source`` (a module of ``package``) imports, wherever the statement sits
    (module level, inside a function, under ``if TYPE_CHECKING``). ``from pkg import mod`` counts
    as ``pkg.mod`` when ``mod`` is a module of the repository; relative imports are resolved."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join((*package[:len(package) - node.level + 1], *([node.module] if node.module else [])))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                names.add(sub if _is_module(sub) else base)
    return names


def _modules(*packages: str) -> list[Path]:
    """Every .py file under the given repository folders."""
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def _first_party(path: Path) -> set[str]:
    return {m for m in _imports(path) if m.split(".")[0] in FIRST_PARTY}


def _within(module: str, allowed: tuple[str, ...]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


def _ids(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", _modules("topology"), ids=_ids)
def test_topology_imports_neither_controller_nor_scheduler(path):
    bad = {m for m in _imports(path) if m.split(".")[0] in ("controller", "scheduler")}
    assert not bad, f"{path.name} imports {sorted(bad)}: topology is the bottom layer"


def test_controller_settings_import_no_topology():
    assert not {m for m in _imports(ROOT / "controller" / "settings.py") if m.startswith("topology")}


def test_controller_settings_import_nothing_of_the_repository():
    """scheduler.model.config takes the poll interval's default from it: it must stay a leaf."""
    assert not _first_party(ROOT / "controller" / "settings.py")


# What each scheduler sub-package may import from the repository, bottom layer first. A module of
# the package may import anything of its own package; the lists name the others.
LAYERS: dict[str, tuple[str, ...]] = {
    # requests, cluster state, timing, caches, scenarios: the model every layer above reads.
    # controller.settings is the one default of the telemetry poll interval (a leaf, checked above).
    "scheduler/model": ("scheduler.model", "scheduler.paths", "topology", "controller.settings"),
    # oracles, telemetry, ranking and the dispatcher both backends share: no backend, no figures.
    "scheduler/decision": ("scheduler.model", "scheduler.decision", "scheduler.policies", "topology"),
    # one policy per file: decides on the model through the decision context.
    "scheduler/policies": ("scheduler.model", "scheduler.decision", "scheduler.policies"),
    # the flow-level backend.
    "scheduler/sim": ("scheduler.model", "scheduler.decision", "scheduler.policies", "scheduler.sim",
                      "scheduler.progress", "topology"),
    # the oracle as an HTTP service: the decision layer behind an API, fed by the controller's
    # telemetry (its REST client, Prometheus' query API); no backend, no study.
    "scheduler/service": ("scheduler.model", "scheduler.decision", "scheduler.service", "topology",
                          "controller.client", "controller.promql", "controller.prometheus_server"),
    # routers in front of HTTP workers: the worker protocol (hosts.worker_api), the model's prompts
    # and traces, and the oracle service; no backend.
    "scheduler/router": ("scheduler.model", "scheduler.decision", "scheduler.policies", "scheduler.service",
                         "scheduler.router", "scheduler.paths", "hosts", "topology", "controller"),
}


@pytest.mark.parametrize(("path", "allowed"), [pytest.param(p, allowed, id=_ids(p))
                                               for pkg, allowed in LAYERS.items() for p in _modules(pkg)])
def test_scheduler_layers_import_only_the_layers_below(path, allowed):
    bad = sorted(m for m in _first_party(path) if not _within(m, allowed))
    assert not bad, f"{_ids(path)} imports {bad}; its package may import only {list(allowed)}"


@pytest.mark.parametrize("path", _modules("scheduler/results"), ids=_ids)
def test_results_import_no_study_simulator_or_emulator(path):
    """A result folder is read back (netkv plot, compare, report) without running anything."""
    bad = sorted(m for m in _first_party(path)
                 if _within(m, ("scheduler.study", "scheduler.sim", "scheduler.emulate")))
    assert not bad, f"{_ids(path)} imports {bad}: results only write and read result folders"


@pytest.mark.parametrize("path", _modules("hosts"), ids=_ids)
def test_hosts_take_only_the_model_from_the_scheduler(path):
    """The agents run the instance compute model inside emulated hosts, nothing else of scheduler/."""
    bad = sorted(m for m in _first_party(path)
                 if m.split(".")[0] == "scheduler" and not _within(m, ("scheduler.model",)))
    assert not bad, f"{_ids(path)} imports {bad}: hosts/ may import scheduler.model only"


@pytest.mark.parametrize("path", [p for p in _modules("topology", "controller", "hosts", "scheduler")
                                  if not _within(".".join(p.relative_to(ROOT).parts[:2]), ("scheduler.emulate",))],
                         ids=_ids)
def test_only_the_cli_drives_the_emulator(path):
    """scheduler.emulate needs root and Mininet: only it and scripts/ may import it."""
    bad = sorted(m for m in _first_party(path) if _within(m, ("scheduler.emulate",)))
    assert not bad, f"{_ids(path)} imports {bad}: only scheduler/emulate/ and scripts/ may"


def test_the_import_scan_sees_function_level_relative_and_type_only_imports():
    """The boundaries rest on the scan: imports inside functions and under TYPE_CHECKING count,
    ``from pkg import module`` names the module, relative imports resolve."""
    code = ("from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from scheduler.sim.network import FlowNetwork\n"
            "def f():\n    import scheduler.emulate.replay\n    from scheduler import progress\n"
            "from . import cache\nfrom .timing import TimingModel\nfrom ..decision.oracle import NetworkOracle\n")
    assert _scan(code, ("scheduler", "model")) == {
        "typing", "scheduler.sim.network", "scheduler.emulate.replay", "scheduler.progress",
        "scheduler.model.cache", "scheduler.model.timing", "scheduler.decision.oracle"}
    assert _within("scheduler.model.cache", ("scheduler.model",))
    assert not _within("scheduler.modelx", ("scheduler.model",))


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
            assert leaf_command("x", mbit) == " ".join(leaf_argv("x", mbit))
            assert argvs[2] == leaf_argv("p0t0-eth1", mbit)
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
