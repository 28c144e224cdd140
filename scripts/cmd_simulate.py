"""`netkv simulate`: every policy on the flow-level simulator, written as a result folder."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scripts.cli_common import (
    EXIT_OK,
    add_command,
    add_experiment_options,
    add_format_option,
    build_summary,
    check_out,
    check_target,
    default_out,
    prepare_from_args,
    scenario_files,
)

COMMAND_HELP: dict[str, tuple[str, list[str]]] = {
    "simulate": ("Flow-level simulation of every policy on the same trace, scenario and cluster, with the\n"
                 "tuned baselines and the ablation (no root needed). Writes a result folder.",
                 ["netkv simulate", "netkv simulate --trace ../shared/data/mooncake/conversation_trace.jsonl "
                  "--scenario decode-flap --out results/run1",
                  "netkv simulate --policies cache-load,netkv:static,netkv --set topology.nic_gbit_s=200 --no-tune"]),
}
"""Per subcommand: a description and examples for its --help (defaults are shown per option)."""


def register(sub) -> None:
    """Add ``simulate`` to the ``netkv`` subparsers ``sub``."""
    p = add_command(sub, "simulate", *COMMAND_HELP["simulate"],
                    help="flow-level simulation of every policy (no root needed)")
    add_experiment_options(p)
    add_format_option(p)
    p.set_defaults(func=cmd_simulate)


def link_policy(exp, target: str) -> str:
    """The policy whose run records the per-link utilisation heat map: the comparison target when
    it runs, else the first policy."""
    names = [c.name for c in exp.policies]
    return target if target in names else names[0]


def cmd_simulate(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else default_out("simulate", args.scenario)
    check_out(out)
    exp, info = prepare_from_args(args)
    from scheduler.results import oracle_error_plot
    from scheduler.results.files import LINK_CSV, write_results
    from scheduler.results.heatmap import LinkSeries
    from scheduler.results.metrics import ablation, compare
    from scheduler.results.plotting import experiment_caption
    from scheduler.results.tables import format_table
    from scheduler.results.timeline import scenario_spans
    from scheduler.study.experiment import LinkRecording, run_simulation

    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    log(f"simulate: {len(exp.requests)} requests from {info['source']}, scenario '{exp.scenario.name}', "
        f"{exp.tree.n_gpus} GPUs, policies {', '.join(c.name for c in exp.policies)}")
    if info.get("prompts_capped_at_context_window"):
        log(f"note: --context-scale {info['context_scale']:g}: {info['prompts_capped_at_context_window']} prompts "
            f"capped at the model's {exp.cfg.model.max_context_tokens}-token context window")
    target = check_target(args)
    recording = LinkRecording(link_policy(exp, target))
    oracle_rows: dict = {}
    policies, records = run_simulation(exp, progress=not args.no_progress, log=log, links=recording,
                                       oracle_rows=oracle_rows)
    spans = scenario_spans(exp.actions(), exp.horizon_s, exp.scenario.events, exp.tree.link_name)
    source = f"simulated telemetry of {recording.policy}, a poll every {exp.cfg.oracle.poll_interval_s:g} s"
    links = LinkSeries(recording.times_s, recording.link_names, recording.utilisation, source)
    summary = build_summary("simulate", exp, info, policies, {
        "comparison_target": target, "comparison": compare(policies, target), "ablation": ablation(policies),
        "scenario_spans": [{"start_s": a, "end_s": b, "label": label} for a, b, label in spans],
        "link_utilisation": {"policy": recording.policy, "source": source, "file": LINK_CSV}}, args)
    path = write_results(out, summary, records, exp.slo(), {**scenario_files(exp), **oracle_error_plot.result_files(
                             oracle_rows, experiment_caption(summary), target, args.format)},
                         target, fmt=args.format, spans=spans, links=links)
    print(format_table(summary, target))
    print(f"\nresults: {path}")
    return EXIT_OK
