"""netkv: command-line entry point of the NetKV testbed.

Subcommands: simulate, scenarios, constants, bench, staleness (and fabric / emulate where those
modules are present). Library code raises specific exceptions; this file turns them into messages
and exit codes: 0 ok, 1 run failed, 2 bad input, 130 interrupted.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad command-line input (exit code 2)."""


def _parse_params(items: list[str] | None, flag: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} {item!r}: expected NAME=VALUE")
        try:
            out[key.strip()] = float(raw)
        except ValueError:
            raise UsageError(f"{flag} {item!r}: value must be a number") from None
    return out


def add_experiment_options(p: argparse.ArgumentParser) -> None:
    """Options common to every experiment command (simulate, emulate, staleness)."""
    from scheduler.policies import DEFAULT_POLICIES

    p.add_argument("--trace", metavar="PATH", help="Mooncake JSONL trace (default: embedded synthetic generator)")
    p.add_argument("--policies", default=",".join(DEFAULT_POLICIES), metavar="A,B,C",
                   help="comma-separated policies (default: %(default)s)")
    p.add_argument("--scenario", default="idle", metavar="NAME|FILE",
                   help="built-in congestion scenario name or a scenario TOML file (default: %(default)s; "
                        "see `netkv scenarios`)")
    p.add_argument("--scenario-param", action="append", metavar="NAME=VALUE",
                   help="override a scenario parameter, e.g. period=1.0 (repeatable)")
    p.add_argument("--max-requests", type=int, metavar="N", help="evaluate the first N requests of the trace")
    p.add_argument("--seed", type=int, default=0, help="one seed for all randomness (default: %(default)s)")
    p.add_argument("--model", default="llama-3-8b", help="model preset (default: %(default)s; see `netkv constants`)")
    p.add_argument("--gpu", default=None, help="GPU preset (default: per model, h100-sxm for 8B)")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", dest="overrides",
                   help="override any model constant, e.g. topology.nic_gbit_s=200 (repeatable; list: netkv constants)")
    p.add_argument("--oracle", choices=("static", "telemetry", "inflight", "perfect"), default=None,
                   help="network cost oracle of oracle-consuming policies given without one (netkv; "
                        "netkv:static etc. keep theirs); shorthand for --set oracle.kind=KIND (default: telemetry)")
    p.add_argument("--weight", action="append", metavar="POLICY=W",
                   help="fix a policy's load weight instead of tuning it, e.g. netkv=0.1")
    p.add_argument("--no-tune", action="store_true", help="skip the grid search; use default or --weight values")
    p.add_argument("--out", metavar="DIR", help="result folder (default: results/<timestamp>-<backend>-<scenario>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def prepare_from_args(args: argparse.Namespace):
    from scheduler.config import build_config
    from scheduler.experiment import prepare

    overrides = list(args.overrides or [])
    if getattr(args, "oracle", None):
        overrides.append(f"oracle.kind={args.oracle}")
    cfg = build_config(args.model, args.gpu, overrides)
    weights = _parse_params(args.weight, "--weight")
    return prepare(cfg, args.trace, args.scenario, args.policies, args.max_requests, args.seed,
                   _parse_params(args.scenario_param, "--scenario-param"), not args.no_tune, weights)


def default_out(backend: str, scenario: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = Path(scenario).stem if scenario.endswith(".toml") else scenario
    return ROOT / "results" / f"{stamp}-{backend}-{name}"


def check_out(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"--out {path}: exists and is not empty; choose a new folder")


def build_summary(backend: str, exp, info: dict, policies: dict, extra: dict | None = None) -> dict:
    from scheduler.cluster import Cluster

    config = exp.cfg.to_dict()
    config["topology_derived"] = exp.tree.describe()
    config["cluster_derived"] = Cluster(exp.cfg, exp.tree).describe()
    config["scenario"] = {"name": exp.scenario.name, "source": exp.scenario.source, "params": exp.scenario.params}
    config["trace"] = info
    config["seed"] = exp.seed
    config["policies"] = [c.name for c in exp.policies]
    summary = {"backend": backend, "config": config, "policies": policies}
    if extra:
        summary.update(extra)
    return summary


def cmd_simulate(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else default_out("simulate", args.scenario)
    check_out(out)
    exp, info = prepare_from_args(args)
    from scheduler.experiment import run_simulation
    from scheduler.metrics import ablation, compare
    from scheduler.report import format_table, write_results

    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    log(f"simulate: {len(exp.requests)} requests from {info['source']}, scenario '{exp.scenario.name}', "
        f"{exp.tree.n_gpus} GPUs, policies {', '.join(c.name for c in exp.policies)}")
    policies, records = run_simulation(exp, progress=not args.no_progress, log=log)
    summary = build_summary("simulate", exp, info, policies, {"comparison": compare(policies),
                                                              "ablation": ablation(policies)})
    path = write_results(out, summary, records, exp.slo())
    print(format_table(summary))
    print(f"\nresults: {path}")
    return EXIT_OK


def cmd_scenarios(args: argparse.Namespace) -> int:
    from scheduler.scenario import list_builtin

    rows = list_builtin()
    width = max(len(n) for n, _ in rows)
    for name, desc in rows:
        print(f"{name:<{width}}  {desc}")
    print("\nUse --scenario NAME or --scenario path/to/file.toml; parameters with --scenario-param NAME=VALUE.")
    return EXIT_OK


def cmd_constants(args: argparse.Namespace) -> int:
    from scheduler.config import GPU_PRESETS, MODEL_PRESETS, describe_constants

    rows = describe_constants()
    if args.json:
        print(json.dumps([{"name": n, "default": d, "help": h} for n, d, h in rows], indent=2))
        return EXIT_OK
    for name, default, help_ in rows:
        print(f"{name:<38} {default:<22} {help_}")
    print(f"\nmodel presets (--model): {', '.join(MODEL_PRESETS)}")
    print(f"GPU presets (--gpu): {', '.join(GPU_PRESETS)}")
    print("override any of these with --set SECTION.FIELD=VALUE")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from scheduler.bench import run_bench

    figures = run_bench(trace=args.trace, quick=args.quick, log=lambda m: print(m, file=sys.stderr))
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        from scheduler.bench import format_bench
        print(format_bench(figures))
    return EXIT_OK


def cmd_staleness(args: argparse.Namespace) -> int:
    from scheduler.staleness import run_staleness

    out = Path(args.out) if args.out else default_out("staleness", args.scenario)
    check_out(out)
    exp, info = prepare_from_args(args)
    values = [float(x) for x in args.values.split(",") if x.strip()]
    if not values or any(v < 0 for v in values):
        raise UsageError(f"--values {args.values!r}: expected non-negative seconds, e.g. 0,1,5")
    path, text = run_staleness(exp, info, values, out, progress=not args.no_progress,
                               log=lambda m: print(m, file=sys.stderr))
    print(text)
    print(f"\nresults: {path}")
    return EXIT_OK


OPTIONAL_COMMANDS = ("scripts.cmd_fabric", "scripts.cmd_emulate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="netkv", description="NetKV testbed: network-aware KV-cache scheduling "
                                     "for disaggregated LLM inference, simulated and emulated.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("simulate", help="flow-level simulation of every policy (no root needed)")
    add_experiment_options(p)
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("scenarios", help="list built-in congestion scenarios")
    p.set_defaults(func=cmd_scenarios)
    p = sub.add_parser("constants", help="list every model constant with its default and source")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_constants)
    p = sub.add_parser("bench", help="scheduler decision latency and simulator speed")
    p.add_argument("--json", action="store_true", help="print figures as JSON")
    p.add_argument("--trace", metavar="PATH", help="trace for the simulator-speed figure (default: the "
                   "Mooncake conversation trace when present, else a synthetic one of the same size)")
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("staleness", help="sweep telemetry staleness for netkv: TTFT and tier-ranking robustness")
    add_experiment_options(p)
    p.set_defaults(policies="netkv", scenario="bursty")
    p.add_argument("--values", default="0,0.5,1,2,5,10,30", help="staleness values, s (default: %(default)s)")
    p.set_defaults(func=cmd_staleness)
    for mod in OPTIONAL_COMMANDS:
        try:
            importlib.import_module(mod).register(sub)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
    return parser


def main(argv: list[str] | None = None) -> int:
    from scheduler.config import ConfigError
    from scheduler.oracle import UnknownOracleError
    from scheduler.policies import UnknownPolicyError
    from scheduler.simulator import UnfinishedRequestsError
    from scheduler.report import ResultsExistError
    from scheduler.scenario import ScenarioError
    from scheduler.trace import TraceError
    from topology.cleanup import StopSignal
    from topology.model import TopologyError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UsageError, ConfigError, UnknownPolicyError, UnknownOracleError, ScenarioError, TraceError,
            TopologyError, ResultsExistError) as exc:
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
