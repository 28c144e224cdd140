"""`netkv scenarios`, `netkv constants` and `netkv bench`: what the testbed has, and how fast it is."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scripts.cli_common import EXIT_OK, UsageError, add_command

COMMAND_HELP: dict[str, tuple[str, list[str]]] = {
    "scenarios": ("List the built-in congestion scenarios with the mechanism each one tests.", ["netkv scenarios"]),
    "constants": ("List every model constant (SECTION.FIELD), its default and its source; override any with\n"
                  "--set SECTION.FIELD=VALUE.", ["netkv constants", "netkv constants --json | head"]),
    "bench": ("Scheduler decision latency at |D| = 32, 256, 4096 and simulator speed on the full trace;\n"
              "with --scale, the simulator's cost at 1,024-16,384 GPUs; figures printed, not asserted.",
              ["netkv bench", "netkv bench --quick --json", "netkv bench --scale --scale-gpus 1024,4096"]),
}
"""Per subcommand: a description and examples for its --help (defaults are shown per option)."""


def register(sub) -> None:
    """Add ``scenarios``, ``constants`` and ``bench`` to the ``netkv`` subparsers ``sub``."""
    p = add_command(sub, "scenarios", *COMMAND_HELP["scenarios"], help="list built-in congestion scenarios")
    p.set_defaults(func=cmd_scenarios)
    p = add_command(sub, "constants", *COMMAND_HELP["constants"],
                    help="list every model constant with its default and source")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=cmd_constants)
    p = add_command(sub, "bench", *COMMAND_HELP["bench"], help="scheduler decision latency and simulator speed")
    p.add_argument("--json", action="store_true", help="print figures as JSON")
    p.add_argument("--trace", metavar="PATH", help="trace for the simulator-speed figure (default: the "
                   "Mooncake conversation trace when present, else a synthetic one of the same size)")
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    p.add_argument("--service", action="store_true",
                   help="instead: the oracle service's /v1/cost latency and throughput at |D| = 32 for 1, 16 and 64 "
                        "clients, 30 s each, closed and open loop (`netkv oracle bench` has every option)")
    p.add_argument("--executors", action="store_true",
                   help="instead: the wall time of one sweep on the local process pool and on a local Ray instance "
                        "(the engine's overhead on one machine; needs scripts/setup.sh --ray)")
    p.add_argument("--scale", action="store_true",
                   help="instead: the simulator at 1,024, 4,096 and 16,384 GPUs with the default per-GPU load, each "
                        "size and policy in its own process: wall time, peak memory, decision p99 (docs/scale.md)")
    p.add_argument("--scale-gpus", metavar="N,N,...", help="with --scale: the fabric sizes (multiples of 16 GPUs; "
                   "default 1024,4096,16384)")
    p.add_argument("--scale-requests", metavar="N,N,...", help="with --scale: requests of every size (default: one "
                   "pass of the trace, and 100000 at the largest size)")
    p.add_argument("--scale-policies", metavar="SPEC,SPEC,...", help="with --scale: policy specs (default "
                   "cache-load,netkv)")
    p.set_defaults(func=cmd_bench)


def cmd_scenarios(args: argparse.Namespace) -> int:
    from scheduler.model.scenario import list_builtin

    rows = list_builtin()
    width = max(len(n) for n, _ in rows)
    for name, desc in rows:
        print(f"{name:<{width}}  {desc}")
    print("\nUse --scenario NAME or --scenario path/to/file.toml; parameters with --scenario-param NAME=VALUE.")
    return EXIT_OK


def cmd_constants(args: argparse.Namespace) -> int:
    from scheduler.model.config import DEFAULT_TP, GPU_PRESETS, MODEL_PRESETS, describe_constants

    rows = describe_constants()
    if args.json:
        print(json.dumps([{"name": n, "default": d, "help": h} for n, d, h in rows], indent=2))
        return EXIT_OK
    for name, default, help_ in rows:
        print(f"{name:<38} {default:<22} {help_}")
    print(f"\nmodel presets (--model): {', '.join(MODEL_PRESETS)}")
    print(f"GPU presets (--gpu): {', '.join(GPU_PRESETS)}")
    print("cluster.tp by preset: " + ", ".join(f"{m} on {g} {tp}" for (m, g), tp in DEFAULT_TP.items())
          + ", every other pair 1")
    print("override any of these with --set SECTION.FIELD=VALUE")
    return EXIT_OK


def _int_list(option: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{option} takes comma-separated whole numbers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise UsageError(f"{option} takes numbers >= 1, got {text!r}")
    return values


def cmd_bench_scale(args: argparse.Namespace) -> int:
    """`netkv bench --scale`: the simulator's cost at thousands of GPUs."""
    from scheduler.study.bench import (
        CONVERSATION_TRACE,
        SCALE_GPUS,
        SCALE_POLICIES,
        format_scale,
        run_scale,
        scale_plans,
    )

    if args.service or args.executors:
        raise UsageError("--scale takes no --service or --executors")
    if args.trace and not Path(args.trace).is_file():
        raise UsageError(f"--trace {args.trace}: no such file")
    if not args.trace and not CONVERSATION_TRACE.is_file():
        raise UsageError(f"--scale replays the Mooncake conversation trace, not found at {CONVERSATION_TRACE}; "
                         f"pass --trace PATH")
    gpus = _int_list("--scale-gpus", args.scale_gpus) if args.scale_gpus else SCALE_GPUS
    if any(g % 16 for g in gpus):
        raise UsageError(f"--scale-gpus {args.scale_gpus}: every size must be a multiple of 16 GPUs (one pod)")
    requests = _int_list("--scale-requests", args.scale_requests) if args.scale_requests else None
    policies = tuple(args.scale_policies.split(",")) if args.scale_policies else SCALE_POLICIES
    plans = scale_plans(gpus, requests, policies, args.trace)
    figures = run_scale(plans, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(figures, indent=2) if args.json else format_scale(figures))
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from scheduler.study.bench import run_bench

    if args.scale or args.scale_gpus or args.scale_requests or args.scale_policies:
        if not args.scale:
            raise UsageError("--scale-gpus, --scale-requests and --scale-policies go with --scale")
        return cmd_bench_scale(args)

    if args.executors:
        from scheduler.study.bench import executor_overhead
        from scheduler.study.executor import ExecutorError

        if args.trace or args.service:
            raise UsageError("--executors takes no --trace or --service")
        try:
            figures = executor_overhead(quick=args.quick, log=lambda m: print(m, file=sys.stderr))
        except ExecutorError as e:
            raise UsageError(str(e)) from None
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            print(f"one sweep of {figures['points']} points x {figures['requests']} requests on {figures['jobs']} "
                  f"CPUs: local pool {figures['local_s']:.1f} s, Ray local instance {figures['ray_s']:.1f} s "
                  f"(startup included; +{figures['ray_s'] - figures['local_s']:.1f} s)")
        return EXIT_OK

    if args.service:
        from scheduler.service.bench import run_service_bench

        if args.trace or args.json:
            raise UsageError("--service takes no --trace or --json (see `netkv oracle bench` for its options)")
        run_service_bench((1, 16, 64), 10.0 if args.quick else 30.0, 32)
        return EXIT_OK

    if args.trace and not Path(args.trace).is_file():
        raise UsageError(f"--trace {args.trace}: no such file")
    figures = run_bench(trace=args.trace, quick=args.quick, log=lambda m: print(m, file=sys.stderr))
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        from scheduler.study.bench import format_bench
        print(format_bench(figures))
    return EXIT_OK
