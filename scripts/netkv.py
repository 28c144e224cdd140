"""netkv: command-line entry point of the NetKV testbed.

Subcommands: simulate, scenarios, constants, bench, sweep, report, staleness, plot, compare (and
fabric / emulate where those modules are present). Library code raises specific exceptions; this file turns them into messages
and exit codes: 0 ok, 1 run failed, 2 bad input, 130 interrupted.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

from scheduler.paths import DOCS_DIR, RESULTS_DIR

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
    p.add_argument("--rate-scale", type=float, default=1.0, metavar="K",
                   help="arrival rate x K: the trace's timestamps divided by K, order and prefix sharing kept "
                        "(default: %(default)s)")
    p.add_argument("--context-scale", type=float, default=1.0, metavar="K",
                   help="prompt lengths x K with the prefix-sharing structure kept, capped at the model's "
                        "context window (model.max_context_tokens; default: %(default)s)")
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
    p.add_argument("--allow-overlapping-tuning", action="store_true",
                   help="accept a trace too short to hold a tuning slice apart from the evaluated window (the "
                        "weights are then tuned on requests that are also evaluated; the results say so)")
    p.add_argument("--target", default=None, metavar="POLICY",
                   help="the policy compared against every other one (comparison lines, highlighted in the "
                        "figures; one of --policies; default: netkv)")
    p.add_argument("--out", metavar="DIR", help="result folder (default: results/<timestamp>-<backend>-<scenario>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_format_option(p: argparse.ArgumentParser) -> None:
    """``--format``: the file format of a command's figures."""
    from scheduler.report import FIGURE_FORMATS

    p.add_argument("--format", choices=FIGURE_FORMATS, default="png",
                   help="figure file format (default: %(default)s)")


def prepare_from_args(args: argparse.Namespace):
    from scheduler.config import build_config
    from scheduler.experiment import prepare

    overrides = list(args.overrides or [])
    if getattr(args, "oracle", None):
        overrides.append(f"oracle.kind={args.oracle}")
    cfg = build_config(args.model, args.gpu, overrides)
    weights = _parse_params(args.weight, "--weight")
    check_target(args)
    exp, info = prepare(cfg, args.trace, args.scenario, args.policies, args.max_requests, args.seed,
                        _parse_params(args.scenario_param, "--scenario-param"), not args.no_tune, weights,
                        args.rate_scale, args.context_scale)
    tuning = info["tuning_slice"]
    if not tuning["disjoint_from_evaluation"] and exp.tune and any(c.tuned_param for c in exp.policies):
        if not getattr(args, "allow_overlapping_tuning", False):
            raise UsageError(f"the trace ({info['source']}) is too short to hold its last "
                             f"{exp.cfg.tuning.tune_requests} requests out for tuning: the weights would be tuned on "
                             f"the requests that are evaluated. Use a longer trace, fewer tuning requests "
                             f"(--set tuning.tune_requests=N), --no-tune or --weight, or accept it with "
                             f"--allow-overlapping-tuning")
        print("WARNING: weights tuned on requests that are also evaluated (--allow-overlapping-tuning)", file=sys.stderr)
    skipped, skipped_tune = info["skipped_too_long"], tuning["skipped_too_long"]
    if skipped or skipped_tune:
        c = exp.cfg
        ids = ", ".join(map(str, info["skipped_too_long_req_ids"]))
        print(f"WARNING: {skipped} evaluated request(s) (e.g. {ids or 'none'}) and {skipped_tune} of the tuning slice "
              f"skipped: their KV (prompt + output tokens) exceeds a decode instance's "
              f"{info['decode_kv_capacity_tokens']}-token KV capacity (model '{c.model.name}', cluster.tp={c.cluster.tp} "
              f"x '{c.gpu.name}'), so no decode instance could ever hold them; a larger cluster.tp holds more "
              f"(summary.json: config.trace.skipped_too_long)", file=sys.stderr)
    if args.max_requests and info["evaluated"]["count"] + skipped < args.max_requests:
        print(f"note: --max-requests {args.max_requests}: the trace has {info['evaluated']['count']} requests to "
              f"evaluate (after {tuning['requests']} held out for tuning)", file=sys.stderr)
    late = exp.scenario.late_events(exp.horizon_s, exp.run_s)
    if late:
        print(f"WARNING: scenario '{exp.scenario.name}': event(s) {', '.join(f'[{i}] at {t:g} s' for i, t in late)} "
              f"start at or after {exp.horizon_s:.0f} s, when the run's last request has long arrived: they never run",
              file=sys.stderr)
    return exp, info


def check_target(args: argparse.Namespace) -> str:
    """The comparison target: ``--target`` (which must name one of ``--policies``, as typed,
    oracle suffix included) or netkv."""
    names = [x.strip() for x in (args.policies or "").split(",") if x.strip()]
    target = getattr(args, "target", None)
    if target is not None and target not in names:
        raise UsageError(f"--target {target!r} is not one of --policies ({', '.join(names)})")
    return target or "netkv"


def default_out(backend: str, scenario: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = Path(scenario).stem if scenario.endswith(".toml") else scenario
    return RESULTS_DIR / f"{stamp}-{backend}-{name}"


def check_out(path: Path) -> None:
    """The result folder must be new (or empty) and creatable: checked before any work."""
    try:
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UsageError(f"--out {path}: exists and is not empty; choose a new folder")
        parent = path.resolve().parent
        existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot look at it: {exc.strerror or exc}") from None
    if existing is None or not existing.is_dir():
        raise UsageError(f"--out {path}: {existing} is not a folder")
    try:  # what the result writer will do: a hidden sibling folder, renamed at the end
        probe = tempfile.mkdtemp(prefix=".netkv-write-check-", dir=existing)
        os.rmdir(probe)
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot create a folder in {existing}: {exc.strerror or exc}") from None


def build_summary(backend: str, exp, info: dict, policies: dict, extra: dict | None = None,
                  args: argparse.Namespace | None = None) -> dict:
    """summary.json: ``backend``, ``provenance`` (command, commit, time, versions), ``config``
    (every constant, derived topology and roles, scenario, trace, seed) and ``policies``."""
    from scheduler.cluster import Cluster
    from scheduler.provenance import collect

    config = exp.cfg.to_dict()
    config["topology_derived"] = exp.tree.describe()
    config["cluster_derived"] = Cluster(exp.cfg, exp.tree).describe()
    config["scenario"] = {"name": exp.scenario.name, "source": exp.scenario.source, "params": exp.scenario.params}
    config["trace"] = info
    config["seed"] = exp.seed
    config["policies"] = [c.name for c in exp.policies]
    summary = {"kind": backend, "backend": backend,
               "provenance": collect(getattr(args, "argv", None), getattr(args, "started", None)),
               "config": config, "policies": policies}
    if extra:
        summary.update(extra)
    return summary


def scenario_files(exp) -> dict[str, bytes]:
    """The scenario file as it was loaded, for the result folder (``scenario.toml``)."""
    return {"scenario.toml": exp.scenario.text.encode()} if exp.scenario.text else {}


def link_policy(exp, target: str) -> str:
    """The policy whose run records the per-link utilisation heat map: the comparison target when
    it runs, else the first policy."""
    names = [c.name for c in exp.policies]
    return target if target in names else names[0]


def cmd_simulate(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else default_out("simulate", args.scenario)
    check_out(out)
    exp, info = prepare_from_args(args)
    from scheduler.experiment import LinkRecording, run_simulation
    from scheduler.metrics import ablation, compare
    from scheduler.report import LINK_CSV, LinkSeries, format_table, scenario_spans, write_results

    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    log(f"simulate: {len(exp.requests)} requests from {info['source']}, scenario '{exp.scenario.name}', "
        f"{exp.tree.n_gpus} GPUs, policies {', '.join(c.name for c in exp.policies)}")
    if info.get("prompts_capped_at_context_window"):
        log(f"note: --context-scale {info['context_scale']:g}: {info['prompts_capped_at_context_window']} prompts "
            f"capped at the model's {exp.cfg.model.max_context_tokens}-token context window")
    target = check_target(args)
    recording = LinkRecording(link_policy(exp, target))
    policies, records = run_simulation(exp, progress=not args.no_progress, log=log, links=recording)
    spans = scenario_spans(exp.actions(), exp.horizon_s, exp.scenario.events, exp.tree.link_name)
    source = f"simulated telemetry of {recording.policy}, a poll every {exp.cfg.oracle.poll_interval_s:g} s"
    links = LinkSeries(recording.times_s, recording.link_names, recording.utilisation, source)
    summary = build_summary("simulate", exp, info, policies, {
        "comparison_target": target, "comparison": compare(policies, target), "ablation": ablation(policies),
        "scenario_spans": [{"start_s": a, "end_s": b, "label": label} for a, b, label in spans],
        "link_utilisation": {"policy": recording.policy, "source": source, "file": LINK_CSV}}, args)
    path = write_results(out, summary, records, exp.slo(), scenario_files(exp), target, fmt=args.format,
                         spans=spans, links=links)
    print(format_table(summary, target))
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
    from scheduler.config import DEFAULT_TP, GPU_PRESETS, MODEL_PRESETS, describe_constants

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


def cmd_bench(args: argparse.Namespace) -> int:
    from scheduler.bench import run_bench

    if args.trace and not Path(args.trace).is_file():
        raise UsageError(f"--trace {args.trace}: no such file")
    figures = run_bench(trace=args.trace, quick=args.quick, log=lambda m: print(m, file=sys.stderr))
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        from scheduler.bench import format_bench
        print(format_bench(figures))
    return EXIT_OK


def cmd_staleness(args: argparse.Namespace) -> int:
    from scheduler import sweep as sw
    from scheduler.staleness import run_staleness

    out = Path(args.out) if args.out else default_out("staleness", args.scenario)
    check_out(out)
    if args.target is not None:
        raise UsageError("--target: staleness always studies netkv (against netkv:perfect and cache-load)")
    values = sw.parse_values(args.values)
    if not all(isinstance(v, float) and v >= 0 for v in values):
        raise UsageError(f"--values {args.values!r}: expected non-negative seconds, e.g. 0,1,5")
    path, text = run_staleness(_sweep_base(args), values, sw.parse_seeds(args.seeds), out, args.jobs,
                               progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr),
                               command="netkv " + " ".join(args.argv),
                               provenance=_provenance(args))
    print(text)
    print(f"\nresults: {path}")
    return EXIT_OK


def _sweep_base(args: argparse.Namespace, policies: str | None = None):
    from scheduler.sweep import Base

    overrides = list(args.overrides or [])
    if getattr(args, "oracle", None):
        overrides.append(f"oracle.kind={args.oracle}")
    return Base(model=args.model, gpu=args.gpu, overrides=tuple(overrides), trace=args.trace, scenario=args.scenario,
                scenario_params=tuple(_parse_params(args.scenario_param, "--scenario-param").items()),
                policies=policies or args.policies, max_requests=args.max_requests, tune=not args.no_tune,
                weights=tuple(_parse_params(args.weight, "--weight").items()), rate_scale=args.rate_scale,
                context_scale=args.context_scale)


def cmd_sweep(args: argparse.Namespace) -> int:
    from scheduler import sweep as sw
    from scheduler.report import dumps_json, write_files

    out = Path(args.out) if args.out else default_out(f"sweep-{args.param}", args.scenario)
    check_out(out)
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    target = check_target(args)
    sweep = sw.Sweep(args.param, sw.parse_values(args.values), sw.parse_seeds(args.seeds), _sweep_base(args))
    sw.validate(sweep)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    log(f"sweep: {args.param} over {len(sweep.values)} values x {len(sweep.seeds)} seeds, policies {args.policies}, "
        f"scenario '{args.scenario}'")
    results = sw.run(sweep, args.jobs, progress=not args.no_progress, log=log)
    table = sw.rows(sweep, results)
    agg = sw.aggregate(sweep, table, target)
    text = sw.format_table(sweep, agg, target)
    command = "netkv " + " ".join(args.argv)
    from scheduler.provenance import collect

    summary = {"kind": "sweep", "backend": "simulate", "provenance": collect(args.argv, args.started),
               "command": command, "comparison_target": target,
               "param": args.param,
               "values": sweep.values, "seeds": sweep.seeds, "base": dataclasses.asdict(sweep.base),
               "aggregate": agg, "points": [{"value": v, "seed": s, "policies": results[(v, s)]}
                                            for v in sweep.values for s in sweep.seeds]}
    files = {"summary.json": dumps_json(summary).encode(), "sweep.csv": sw.csv_bytes(table),
             "sweep.txt": (text + "\n").encode(),
             "sweep.png": sw.plot(sweep, agg, f"{command}", target)}
    path = write_files(out, files)
    print(text)
    print(f"\nresults: {path}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from scheduler.results import generate

    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    scenarios = [x.strip() for x in args.scenarios.split(",") if x.strip()] if args.scenarios else None
    path = generate(Path(args.out), args.quick, args.jobs, args.max_requests, scenarios, not args.no_progress,
                    lambda m: print(m, file=sys.stderr), command="netkv " + " ".join(args.argv),
                    overrides=tuple(args.overrides or ()))
    print(f"report: {path} (figures in {path.parent / path.stem})")
    return EXIT_OK


def cmd_plot(args: argparse.Namespace) -> int:
    from scheduler.replot import replot

    dest, texts = replot(Path(args.dir), args.format, Path(args.out) if args.out else None)
    for name, text in texts.items():
        print(f"{dest / name}: {text.title}")
    return EXIT_OK


def _provenance(args: argparse.Namespace) -> dict:
    from scheduler.provenance import collect

    return collect(getattr(args, "argv", None), getattr(args, "started", None))


def cmd_compare(args: argparse.Namespace) -> int:
    from scheduler.replot import default_compare_out, run_compare

    out = Path(args.out) if args.out else default_compare_out(RESULTS_DIR)
    check_out(out)
    path, text, _ = run_compare(Path(args.dir_a), Path(args.dir_b), out, args.format, _provenance(args))
    print(text)
    print(f"results: {path}")
    return EXIT_OK


PLOT_EPILOG = """examples:
  netkv simulate --scenario decode-flap --max-requests 300 --out results/flap
  netkv plot results/flap --format pdf               # PDF figures beside the PNGs
  netkv plot results/flap --format svg --out figs    # SVG figures into figs/"""
COMPARE_EPILOG = """examples:
  netkv simulate --scenario idle --max-requests 300 --out results/idle
  netkv simulate --scenario decode-flap --max-requests 300 --out results/flap
  netkv compare results/idle results/flap --out results/idle-vs-flap"""

OPTIONAL_COMMANDS = ("scripts.cmd_fabric", "scripts.cmd_emulate")


COMMAND_HELP: dict[str, tuple[str, list[str]]] = {
    "simulate": ("Flow-level simulation of every policy on the same trace, scenario and cluster, with the\n"
                 "tuned baselines and the ablation (no root needed). Writes a result folder.",
                 ["netkv simulate", "netkv simulate --trace ../shared/data/mooncake/conversation_trace.jsonl "
                  "--scenario decode-flap --out results/run1",
                  "netkv simulate --policies cache-load,netkv:static,netkv --set topology.nic_gbit_s=200 --no-tune"]),
    "scenarios": ("List the built-in congestion scenarios with the mechanism each one tests.", ["netkv scenarios"]),
    "constants": ("List every model constant (SECTION.FIELD), its default and its source; override any with\n"
                  "--set SECTION.FIELD=VALUE.", ["netkv constants", "netkv constants --json | head"]),
    "bench": ("Scheduler decision latency at |D| = 32, 256, 4096 and simulator speed on the full trace;\n"
              "figures printed, not asserted.", ["netkv bench", "netkv bench --quick --json"]),
    "sweep": ("Sweep one parameter over values and seeds for chosen policies; points run in parallel;\n"
              "sweep.csv, sweep.png (95% intervals over seeds) and sweep.txt in a new folder.",
              ["netkv sweep --param rate-scale --values 1,4,16 --seeds 0,1,2 --max-requests 3000",
               "netkv sweep --param scenario.period --values 2,10,30 --scenario decode-flap "
               "--trace ../shared/data/mooncake/conversation_trace.jsonl --max-requests 3000 --seeds 0,1,2"]),
    "report": ("Regenerate docs/results.md and its figures from fresh simulator runs (the full report\n"
               "takes ~40 min on 2 cores, --quick ~6 min).", ["netkv report --quick", "netkv report"]),
    "staleness": ("How stale may telemetry get: netkv on telemetry of growing age against netkv:perfect and\n"
                  "cache-load, with decision agreement against a fresh oracle and the regret.",
                  ["netkv staleness --scenario decode-flap --values 0,1,5 --max-requests 2000"]),
}
"""Per subcommand: a description and examples for its --help (defaults are shown per option)."""


def _sub(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """A subparser with its description and examples from :data:`COMMAND_HELP`."""
    description, examples = COMMAND_HELP[name]
    return sub.add_parser(name, description=description, epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from scheduler.provenance import version

    parser = argparse.ArgumentParser(prog="netkv", description="NetKV testbed: network-aware KV-cache scheduling "
                                     "for disaggregated LLM inference, simulated and emulated.")
    parser.add_argument("--version", action="version", version=f"netkv {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = _sub(sub, "simulate", help="flow-level simulation of every policy (no root needed)")
    add_experiment_options(p)
    add_format_option(p)
    p.set_defaults(func=cmd_simulate)
    p = _sub(sub, "scenarios", help="list built-in congestion scenarios")
    p.set_defaults(func=cmd_scenarios)
    p = _sub(sub, "constants", help="list every model constant with its default and source")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=cmd_constants)
    p = _sub(sub, "bench", help="scheduler decision latency and simulator speed")
    p.add_argument("--json", action="store_true", help="print figures as JSON")
    p.add_argument("--trace", metavar="PATH", help="trace for the simulator-speed figure (default: the "
                   "Mooncake conversation trace when present, else a synthetic one of the same size)")
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    p.set_defaults(func=cmd_bench)
    p = _sub(sub, "sweep", help="sweep one parameter over values and seeds (95%% intervals), points in parallel")
    add_experiment_options(p)
    p.add_argument("--param", required=True, metavar="NAME",
                   help="rate-scale, context-scale, SECTION.FIELD (any constant) or scenario.NAME")
    p.add_argument("--values", required=True, metavar="A,B,C", help="values of the parameter")
    p.add_argument("--seeds", default="0", metavar="S,T",
                   help="seeds: synthetic traces, or for --trace disjoint windows of --max-requests (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=None, help="parallel points (default: one per core)")
    p.set_defaults(func=cmd_sweep, policies="cache-load,topology-affinity,netkv:static,netkv")
    p = _sub(sub, "report", help="regenerate docs/results.md and its figures from fresh simulator runs")
    p.add_argument("--quick", action="store_true", help="a few-minute version (shorter windows, fewer scenarios)")
    p.add_argument("--out", default=str(DOCS_DIR / "results.md"), help="markdown file (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=None, help="parallel runs (default: one per core)")
    p.add_argument("--max-requests", type=int, default=None, help="cap every window (a smoke run)")
    p.add_argument("--scenarios", default=None, metavar="A,B", help="restrict the headline matrix")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", dest="overrides",
                   help="override a constant in every run (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_report)
    p = _sub(sub, "staleness", help="sweep telemetry staleness for netkv: TTFT and tier-ranking robustness")
    add_experiment_options(p)
    p.set_defaults(policies="netkv", scenario="decode-flap")
    p.add_argument("--values", default="0,0.5,1,2,5,10,30", help="staleness values, s (default: %(default)s)")
    p.add_argument("--seeds", default="0", metavar="S,T", help="seeds, as for sweep (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=None, help="parallel points (default: one per core)")
    p.set_defaults(func=cmd_staleness)
    p = sub.add_parser("plot", help="redraw every figure of a simulate/emulate result folder",
                       description="Redraw every figure of a simulate or emulate result folder from its\n"
                                   "summary.json and requests.csv (and link_utilisation.csv), in any format;\n"
                                   "by default into the folder itself, each figure replaced by a rename.",
                       epilog=PLOT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="result folder")
    add_format_option(p)
    p.add_argument("--out", metavar="DIR2", help="write the figures here instead (created if missing)")
    p.set_defaults(func=cmd_plot)
    p = sub.add_parser("compare", help="compare two result folders: per-policy changes and an overlaid TTFT CDF",
                       description="Compare two simulate/emulate result folders (any scenarios): for every\n"
                                   "policy present in both, mean TTFT, p99 TTFT, SLO attainment and mean TBT\n"
                                   "of A and B and the change B - A, absolute and in %. Writes compare.json,\n"
                                   "compare.txt and an overlaid TTFT CDF (A solid, B dashed) as a new folder.",
                       epilog=COMPARE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir_a", metavar="DIR_A", help="result folder A (the reference)")
    p.add_argument("dir_b", metavar="DIR_B", help="result folder B")
    p.add_argument("--out", metavar="DIR", help="new folder for the comparison (default: results/<timestamp>-compare)")
    add_format_option(p)
    p.set_defaults(func=cmd_compare)
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
    from scheduler.results import ReportError
    from scheduler.staleness import StalenessError
    from scheduler.sweep import SweepError
    from scheduler.replot import ResultFolderError
    from scheduler.report import ResultsExistError
    from scheduler.scenario import ScenarioError
    from scheduler.trace import TraceError
    from scheduler.transform import TransformError
    from topology.cleanup import StopSignal
    from topology.model import TopologyError

    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.started = dt.datetime.now(dt.timezone.utc)
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
