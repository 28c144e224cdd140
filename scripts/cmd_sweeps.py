"""`netkv sweep`, `netkv report` and `netkv staleness`: many simulate runs in a process pool (or on Ray)."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from scheduler.paths import DOCS_DIR
from scripts.cli_common import (
    EXIT_OK,
    UsageError,
    add_command,
    add_experiment_options,
    check_root,
    check_target,
    emulation_scale,
    load_policy_modules,
    log,
    out_folder,
    parse_params,
    prepare_from_args,
    provenance,
)

COMMAND_HELP: dict[str, tuple[str, list[str]]] = {
    "sweep": ("Sweep one parameter over values and seeds for chosen policies; points run in parallel;\n"
              "sweep.csv, sweep.png (95% intervals over seeds) and sweep.txt in a new folder.",
              ["netkv sweep --param rate-scale --values 1,4,16 --seeds 0,1,2 --max-requests 3000",
               "netkv sweep --param scenario.period --values 2,10,30 --scenario decode-flap "
               "--trace ../shared/data/mooncake/conversation_trace.jsonl --max-requests 3000 --seeds 0,1,2"]),
    "report": ("Regenerate docs/results.md and its figures from fresh simulator runs (the full report\n"
               "takes 17-42 min on 2 cores, quiet to busy; --quick ~6 min).", ["netkv report --quick", "netkv report"]),
    "staleness": ("How stale may telemetry get: netkv on telemetry of growing age against netkv:perfect and\n"
                  "cache-load, with decision agreement against a fresh oracle and the regret.",
                  ["netkv staleness --scenario decode-flap --values 0,1,5 --max-requests 2000",
                   "sudo netkv staleness --backend emulate --quick   # three scenarios on the live fabric, ~15 min"]),
}
"""Per subcommand: a description and examples for its --help (defaults are shown per option)."""


def register(sub) -> None:
    """Add ``sweep``, ``report`` and ``staleness`` to the ``netkv`` subparsers ``sub``."""
    p = add_command(sub, "sweep", *COMMAND_HELP["sweep"],
                    help="sweep one parameter over values and seeds (95%% intervals), points in parallel")
    add_experiment_options(p)
    p.add_argument("--param", required=True, metavar="NAME",
                   help="rate-scale, context-scale, SECTION.FIELD (any constant) or scenario.NAME")
    p.add_argument("--values", required=True, metavar="A,B,C", help="values of the parameter")
    p.add_argument("--seeds", default="0", metavar="S,T",
                   help="seeds: synthetic traces, or for --trace disjoint windows of --max-requests "
                        "(default: %(default)s)")
    p.add_argument("--jobs", type=int, default=None, help="parallel points (default: one per core)")
    add_executor_option(p)
    p.set_defaults(func=cmd_sweep, policies="cache-load,topology-affinity,netkv:static,netkv")
    p = add_command(sub, "report", *COMMAND_HELP["report"],
                    help="regenerate docs/results.md and its figures from fresh simulator runs")
    p.add_argument("--quick", action="store_true", help="a few-minute version (shorter windows, fewer scenarios)")
    p.add_argument("--out", default=str(DOCS_DIR / "results.md"), metavar="FILE.md|DIR",
                   help="markdown file, its figures in the folder of its name beside it; or a folder, for "
                        "results.md and results/ (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=None, help="parallel runs (default: one per core)")
    add_executor_option(p)
    p.add_argument("--max-requests", type=int, default=None, help="cap every window (a smoke run)")
    p.add_argument("--scenarios", default=None, metavar="A,B", help="restrict the headline matrix")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", dest="overrides",
                   help="override a constant in every run (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_report)
    p = add_command(sub, "staleness", *COMMAND_HELP["staleness"],
                    help="sweep telemetry staleness for netkv: TTFT and tier-ranking robustness")
    add_experiment_options(p)
    p.set_defaults(policies="netkv", scenario="decode-flap")
    p.add_argument("--values", default="0,0.5,1,2,5,10,30", help="staleness values, s (default: %(default)s)")
    p.add_argument("--seeds", default="0", metavar="S,T", help="seeds, as for sweep (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=None, help="parallel points (default: one per core)")
    add_executor_option(p)
    p.add_argument("--backend", choices=("simulate", "emulate"), default="simulate",
                   help="simulate (default), or emulate: every value replayed on the live fabric (root), the "
                        "simulator's study of the same window beside it")
    p.add_argument("--quick", action="store_true",
                   help="with --backend emulate: scenarios decode-flap, rolling (dwell 5 s), hotspot at staleness "
                        "0,2,10 s on 60 requests each, every value replayed twice (~15 min on 2 cores)")
    p.add_argument("--repeats", type=int, default=None, metavar="R",
                   help="with --backend emulate: replay every value R times (interleaved) and judge the regret "
                        "trend against the replays' spread (default 1; 2 with --quick)")
    p.add_argument("--scale", type=float, default=None, metavar="F", help="with --backend emulate: as for emulate")
    p.add_argument("--time-scale", type=float, default=1.0, metavar="K",
                   help="with --backend emulate: as for emulate (default %(default)s)")
    p.add_argument("--telemetry", choices=("ryu", "prometheus"), default="ryu",
                   help="with --backend emulate: prometheus studies staleness as deployed: netkv reads telemetry "
                        "through a real Prometheus at each --scrape-intervals value (against the controller's REST), "
                        "the simulator at the age measured at decision (default %(default)s: --values as added age)")
    p.add_argument("--scrape-intervals", default=None, metavar="S,T",
                   help="with --telemetry prometheus: scrape intervals, s (default 1,5,15; --quick: 1,5)")
    p.add_argument("--ofp-port", type=int, default=None, help="with --backend emulate: controller OpenFlow port")
    p.add_argument("--rest-port", type=int, default=None, help="with --backend emulate: controller REST port")
    p.set_defaults(func=cmd_staleness)


def add_executor_option(p: argparse.ArgumentParser) -> None:
    """``--executor``: where the runs execute (:mod:`scheduler.study.executor`)."""
    p.add_argument("--executor", default="local", metavar="local|ray[=ADDRESS]",
                   help="where the runs execute: local (this machine's process pool), ray (a local Ray instance "
                        "of --jobs CPUs) or ray=ADDRESS (an existing cluster: ray=auto, ray=ray://HEAD:10001); "
                        "Ray is an optional extra: scripts/setup.sh --ray (default: %(default)s)")


def check_executor(args: argparse.Namespace) -> str:
    """``--executor`` checked (well formed, its engine installed) before any work; the spec."""
    from scheduler.study.executor import ExecutorError, check_available, parse_executor

    try:
        check_available(parse_executor(args.executor))
    except ExecutorError as e:
        raise UsageError(str(e)) from None
    return args.executor


def cmd_sweep(args: argparse.Namespace) -> int:
    from scheduler.results.files import dumps_json, write_files
    from scheduler.study import sweep as sw
    from scheduler.study.sweep_plot import plot

    executor = check_executor(args)
    out = out_folder(args, f"sweep-{args.param}")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    target = check_target(args)
    sweep = sw.Sweep(args.param, sw.parse_values(args.values), sw.parse_seeds(args.seeds), sweep_base(args))
    sw.validate(sweep)
    log(f"sweep: {args.param} over {len(sweep.values)} values x {len(sweep.seeds)} seeds, policies {args.policies}, "
        f"scenario '{args.scenario}'")
    results = sw.run(sweep, args.jobs, progress=not args.no_progress, log=log, executor=executor)
    table = sw.rows(sweep, results)
    agg = sw.aggregate(sweep, table, target)
    text = sw.format_table(sweep, agg, target)
    command = "netkv " + " ".join(args.argv)
    from scheduler.results.provenance import collect

    summary = {"kind": "sweep", "backend": "simulate", "provenance": collect(args.argv, args.started),
               "command": command, "comparison_target": target,
               "param": args.param,
               "values": sweep.values, "seeds": sweep.seeds, "base": dataclasses.asdict(sweep.base),
               "aggregate": agg, "points": [{"value": v, "seed": s, "policies": results[(v, s)]}
                                            for v in sweep.values for s in sweep.seeds]}
    files = {"summary.json": dumps_json(summary).encode(), "sweep.csv": sw.csv_bytes(table),
             "sweep.txt": (text + "\n").encode(),
             "sweep.png": plot(sweep, agg, f"{command}", target)}
    path = write_files(out, files)
    print(text)
    print(f"\nresults: {path}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from scheduler.study.report import generate

    executor = check_executor(args)
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    scenarios = [x.strip() for x in args.scenarios.split(",") if x.strip()] if args.scenarios else None
    path = generate(Path(args.out), args.quick, args.jobs, args.max_requests, scenarios, not args.no_progress,
                    log, command="netkv " + " ".join(args.argv),
                    overrides=tuple(args.overrides or ()), executor=executor)
    print(f"report: {path} (figures in {path.parent / path.stem})")
    return EXIT_OK


def cmd_staleness(args: argparse.Namespace) -> int:
    from scheduler.study import sweep as sw
    from scheduler.study.staleness import run_staleness

    executor = check_executor(args)
    out = out_folder(args, "staleness")
    if args.target is not None:
        raise UsageError("--target: staleness always studies netkv (against netkv:perfect and cache-load)")
    if args.backend == "emulate":
        if executor != "local":
            raise UsageError("--executor: the emulated study runs on the live fabric of this machine (use local)")
        return staleness_emulated(args, out)
    if args.quick:
        raise UsageError("--quick is for --backend emulate (the simulator's study takes seconds: choose --values)")
    if args.repeats not in (None, 1):
        raise UsageError("--repeats is for --backend emulate (the simulator is deterministic: use --seeds)")
    values = sw.parse_values(args.values)
    if not all(isinstance(v, float) and v >= 0 for v in values):
        raise UsageError(f"--values {args.values!r}: expected non-negative seconds, e.g. 0,1,5")
    path, text = run_staleness(sweep_base(args), values, sw.parse_seeds(args.seeds), out, args.jobs,
                               progress=not args.no_progress, log=log,
                               command="netkv " + " ".join(args.argv),
                               provenance=provenance(args), executor=executor)
    print(text)
    print(f"\nresults: {path}")
    return EXIT_OK


def staleness_emulated(args: argparse.Namespace, out: Path) -> int:
    """`netkv staleness --backend emulate`: the study on the live fabric (root), per scenario, beside
    the simulator's (:mod:`scheduler.emulate.staleness`); one result folder for all scenarios."""
    from controller.settings import DEFAULT_OFP_PORT, DEFAULT_REST_PORT
    from scheduler.emulate import staleness as st
    from scheduler.emulate.emulable import check_emulable
    from scheduler.study import sweep as sw
    from scheduler.study.staleness import studied_policy

    if args.seeds not in ("0", str(args.seed)):
        raise UsageError("--seeds: the emulated study replays one window (use --seed)")
    scrape = args.telemetry == "prometheus"
    if args.scrape_intervals is not None and not scrape:
        raise UsageError("--scrape-intervals applies to --telemetry prometheus")
    if scrape:
        spec = args.scrape_intervals or (",".join(f"{v:g}" for v in st.QUICK_SCRAPE_INTERVALS) if args.quick
                                         else "1,5,15")
        values = sw.parse_values(spec)
        if not values or not all(isinstance(v, float) and v > 0 for v in values):
            raise UsageError(f"--scrape-intervals {spec!r}: expected positive seconds, e.g. 1,5,15")
        values = sorted(values)
    elif args.quick:
        values = list(st.QUICK_VALUES)
    else:
        values = sw.parse_values(args.values)
        if not values or not all(isinstance(v, float) and v >= 0 for v in values):
            raise UsageError(f"--values {args.values!r}: expected non-negative seconds, e.g. 0,1,5")
        values = sorted(values)
    if args.repeats is None:
        args.repeats = st.QUICK_REPEATS if args.quick else 1
    if args.repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {args.repeats}")
    target = studied_policy(args.policies)
    if args.quick and args.scenario_param:
        raise UsageError("--quick runs its own scenarios and parameters (scheduler/emulate/staleness.py: "
                         "QUICK_SCENARIO_PARAMS); drop --scenario-param, or study one --scenario without --quick")
    scenarios = list(st.QUICK_SCENARIOS) if args.quick else [args.scenario]
    if args.quick and args.max_requests is None:
        args.max_requests = st.QUICK_REQUESTS
    if args.max_requests is None:
        raise UsageError("--max-requests: the emulated study replays in real time; give a window (e.g. 60)")
    scale = emulation_scale(args)
    exps = []
    for name in scenarios:  # every scenario checked before anything is built
        params = [f"{k}={v:g}" for k, v in st.QUICK_SCENARIO_PARAMS.get(name, {}).items()] if args.quick \
            else args.scenario_param
        ns = argparse.Namespace(**{**vars(args), "scenario": name, "scenario_param": params,
                                   "policies": f"{target},{st.REFERENCE}"})
        exp, _ = prepare_from_args(ns)
        check_emulable(exp, scale, args.time_scale)
        exps.append(exp)
    check_root("--backend emulate builds the Mininet fabric")
    results = st.run_study(exps, target, values, scale, args.time_scale, args.ofp_port or DEFAULT_OFP_PORT,
                           args.rest_port or DEFAULT_REST_PORT, not args.no_progress, log, args.repeats,
                           scrape=scrape)
    path, text = st.write_study(out, results, target, values, scale, args.time_scale, args.repeats,
                                "netkv " + " ".join(args.argv), provenance(args))
    print(text)
    print(f"\nresults: {path}")
    return EXIT_OK


def sweep_base(args: argparse.Namespace, policies: str | None = None):
    """The experiment every point of a sweep shares (:class:`scheduler.study.sweep.Base`) from the
    common experiment options."""
    from scheduler.study.sweep import Base

    load_policy_modules(args)
    overrides = list(args.overrides or [])
    if getattr(args, "oracle", None):
        overrides.append(f"oracle.kind={args.oracle}")
    return Base(model=args.model, gpu=args.gpu, overrides=tuple(overrides), trace=args.trace, scenario=args.scenario,
                scenario_params=tuple(parse_params(args.scenario_param, "--scenario-param").items()),
                policies=policies or args.policies, max_requests=args.max_requests, tune=not args.no_tune,
                weights=tuple(parse_params(args.weight, "--weight").items()), rate_scale=args.rate_scale,
                context_scale=args.context_scale)
