"""`netkv simulate`: every policy on the flow-level simulator, written as a result folder."""
from __future__ import annotations

import argparse

from scripts.cli_common import (
    EXIT_OK,
    add_command,
    add_experiment_options,
    add_format_option,
    check_target,
    log,
    out_folder,
    prepare_from_args,
    provenance,
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
    from scheduler.results.heatmap import LinkSeries
    from scheduler.results.summary import write_experiment
    from scheduler.results.tables import format_table
    from scheduler.study.experiment import LinkRecording, run_simulation

    out = out_folder(args, "simulate")
    target = check_target(args)
    exp, info = prepare_from_args(args)
    log(f"simulate: {len(exp.requests)} requests from {info['source']}, scenario '{exp.scenario.name}', "
        f"{exp.tree.n_gpus} GPUs, policies {', '.join(c.name for c in exp.policies)}")
    if info.get("prompts_capped_at_context_window"):
        log(f"note: --context-scale {info['context_scale']:g}: {info['prompts_capped_at_context_window']} prompts "
            f"capped at the model's {exp.cfg.model.max_context_tokens}-token context window")
    recording = LinkRecording(link_policy(exp, target))
    oracle_rows: dict = {}
    policies, records = run_simulation(exp, progress=not args.no_progress, log=log, links=recording,
                                       oracle_rows=oracle_rows)
    source = f"simulated telemetry of {recording.policy}, a poll every {exp.cfg.oracle.poll_interval_s:g} s"
    links = LinkSeries(recording.times_s, recording.link_names, recording.utilisation, source)
    path, summary = write_experiment(out, "simulate", exp, info, policies, records, target=target,
                                     provenance=provenance(args), fmt=args.format, links=links,
                                     link_policy=recording.policy, oracle_rows=oracle_rows)
    print(format_table(summary, target))
    print(f"\nresults: {path}")
    return EXIT_OK
