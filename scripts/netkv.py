"""netkv: command-line entry point of the NetKV testbed.

Subcommands: simulate, scenarios, constants, bench, sweep, report, staleness, plot, compare (and
fabric / emulate where those modules are present), one ``scripts/cmd_*.py`` module per group, each
with a ``register(subparsers)``; what they share is in ``scripts/cli_common.py``. Library code
raises specific exceptions; this file turns them into messages and exit codes: 0 ok, 1 run failed,
2 bad input, 130 interrupted.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import sys

from scripts import cmd_folders, cmd_info, cmd_simulate, cmd_sweeps
from scripts.cli_common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK

COMMANDS = (cmd_simulate, cmd_info, cmd_sweeps, cmd_folders)
"""The subcommand modules, in the order ``netkv --help`` lists them."""
OPTIONAL_COMMANDS = ("scripts.cmd_fabric", "scripts.cmd_emulate", "scripts.cmd_oracle", "scripts.cmd_router")
"""Subcommand modules registered when present (the emulator's)."""


def build_parser() -> argparse.ArgumentParser:
    """The ``netkv`` argument parser: every subcommand of :data:`COMMANDS`, then the optional ones."""
    from scheduler.results.provenance import version

    parser = argparse.ArgumentParser(prog="netkv", description="NetKV testbed: network-aware KV-cache scheduling "
                                     "for disaggregated LLM inference, simulated and emulated.")
    parser.add_argument("--version", action="version", version=f"netkv {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    for mod in OPTIONAL_COMMANDS:
        try:
            importlib.import_module(mod).register(sub)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
    return parser


ERRORS: tuple[tuple[str, str, int], ...] = (
    ("scripts.cli_common", "UsageError", EXIT_BAD_INPUT),
    ("scheduler.model.config", "ConfigError", EXIT_BAD_INPUT),
    ("scheduler.policies", "UnknownPolicyError", EXIT_BAD_INPUT),
    ("scheduler.decision.oracle", "UnknownOracleError", EXIT_BAD_INPUT),
    ("scheduler.model.scenario_events", "ScenarioError", EXIT_BAD_INPUT),
    ("scheduler.model.trace", "TraceError", EXIT_BAD_INPUT),
    ("scheduler.model.transform", "TransformError", EXIT_BAD_INPUT),
    ("topology.model", "TopologyError", EXIT_BAD_INPUT),
    ("scheduler.results.files", "ResultsExistError", EXIT_BAD_INPUT),
    ("scheduler.results.replot", "ResultFolderError", EXIT_BAD_INPUT),
    ("scheduler.study.sweep", "SweepError", EXIT_BAD_INPUT),
    ("scheduler.study.staleness", "StalenessError", EXIT_BAD_INPUT),
    ("scheduler.study.report", "ReportError", EXIT_BAD_INPUT),
    ("scheduler.emulate.emulable", "EmulationUnsupportedError", EXIT_BAD_INPUT),
    ("scheduler.emulate.faults", "FaultSpecError", EXIT_BAD_INPUT),
    ("topology.mininet_topo", "EmulationScaleError", EXIT_BAD_INPUT),
    ("scheduler.sim.simulator", "UnfinishedRequestsError", EXIT_FAILED),
    ("scheduler.emulate.replay", "EmulationError", EXIT_FAILED),
    ("topology.errors", "FabricError", EXIT_FAILED),
)
"""Library exception (module, class) -> exit code: 2 bad input (``error:``), 1 the run failed
(``failed:``). A class is looked up only when its module is loaded (otherwise nothing can have
raised it), so the emulator's modules are not imported for a simulator run."""


def exit_code(exc: BaseException) -> int | None:
    """The exit code :data:`ERRORS` gives ``exc``, or None when it is not one of them."""
    for module, name, code in ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return code
    return None


def main(argv: list[str] | None = None) -> int:
    """Run ``netkv`` on ``argv`` (default: the command line); returns the exit code."""
    from topology.cleanup import StopSignal

    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.started = dt.datetime.now(dt.UTC)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `netkv constants | head`: the reader left; leave quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print(f"\nnetkv {args.command}: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except StopSignal as exc:
        print(f"\nnetkv {args.command}: stopped by {exc.signame}; nothing was written", file=sys.stderr)
        return 128 + exc.signum  # exc.code: the exit status a shell reports for that signal
    except Exception as exc:
        code = exit_code(exc)
        if code is None:
            raise
        if code == EXIT_BAD_INPUT:
            print(f"netkv {args.command}: error: {exc}", file=sys.stderr)
        else:
            print(f"netkv {args.command}: failed: {exc}; nothing was written", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
