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
from scripts.cli_common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError

COMMANDS = (cmd_simulate, cmd_info, cmd_sweeps, cmd_folders)
"""The subcommand modules, in the order ``netkv --help`` lists them."""
OPTIONAL_COMMANDS = ("scripts.cmd_fabric", "scripts.cmd_emulate", "scripts.cmd_oracle")
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


def main(argv: list[str] | None = None) -> int:
    """Run ``netkv`` on ``argv`` (default: the command line); returns the exit code."""
    from scheduler.decision.oracle import UnknownOracleError
    from scheduler.model.config import ConfigError
    from scheduler.model.scenario import ScenarioError
    from scheduler.model.trace import TraceError
    from scheduler.model.transform import TransformError
    from scheduler.policies import UnknownPolicyError
    from scheduler.results.files import ResultsExistError
    from scheduler.results.replot import ResultFolderError
    from scheduler.sim.simulator import UnfinishedRequestsError
    from scheduler.study.report import ReportError
    from scheduler.study.staleness import StalenessError
    from scheduler.study.sweep import SweepError
    from topology.cleanup import StopSignal
    from topology.model import TopologyError

    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.started = dt.datetime.now(dt.UTC)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `netkv constants | head`: the reader left; leave quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (UsageError, ConfigError, UnknownPolicyError, UnknownOracleError, ScenarioError, TraceError,
            TopologyError, ResultsExistError, TransformError, SweepError, StalenessError,
            ReportError, ResultFolderError) as exc:
        print(f"netkv {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except UnfinishedRequestsError as exc:
        print(f"netkv {args.command}: failed: {exc}; nothing was written", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"\nnetkv {args.command}: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except StopSignal as exc:
        print(f"\nnetkv {args.command}: stopped by {exc.signame}; nothing was written", file=sys.stderr)
        return int(exc.code)


if __name__ == "__main__":
    sys.exit(main())
