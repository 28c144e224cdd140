"""`netkv simulate`: every policy on the flow-level simulator, written as a result folder."""
from __future__ import annotations

import argparse

from scheduler.model.scenario import CONTROL_SCENARIO, MAIN_JOB_SCENARIO
from scripts.cli_common import (
    EXIT_OK,
    UsageError,
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
                 "tuned baselines and the ablation (no root needed). Writes a result folder.\n"
                 f"Without --scenario it runs the main job: scenario {MAIN_JOB_SCENARIO} (a shared cluster's tenant "
                 "load,\nstorage bursts and a link flap), then the same requests on the control "
                 f"'{CONTROL_SCENARIO}' beside it.",
                 ["netkv simulate", "netkv simulate --control none",
                  "netkv simulate --scenario decode-flap --control idle",
                  "netkv simulate --trace ../shared/data/mooncake/conversation_trace.jsonl "
                  "--scenario decode-flap --out results/run1",
                  "netkv simulate --policies cache-load,netkv:static,netkv --set topology.nic_gbit_s=200 --no-tune"]),
}
"""Per subcommand: a description and examples for its --help (defaults are shown per option)."""


def register(sub) -> None:
    """Add ``simulate`` to the ``netkv`` subparsers ``sub``."""
    p = add_command(sub, "simulate", *COMMAND_HELP["simulate"],
                    help="flow-level simulation of every policy (no root needed)")
    add_experiment_options(p, scenario_help=f"default: {MAIN_JOB_SCENARIO}, the main job")
    p.add_argument("--control", default=None, metavar="NAME|FILE|none",
                   help="also run the same requests and policies on this control scenario (its own parameter "
                        "defaults; the run is tuned again under it) and report both; 'none' runs no control "
                        f"(default: {CONTROL_SCENARIO} without --scenario, none with it)")
    add_format_option(p)
    p.set_defaults(func=cmd_simulate)


def link_policy(exp, target: str) -> str:
    """The policy whose run records the per-link utilisation heat map: the comparison target when
    it runs, else the first policy."""
    names = [c.name for c in exp.policies]
    return target if target in names else names[0]


def control_scenario(args: argparse.Namespace) -> str | None:
    """Resolve the main job's defaults in ``args``: ``--scenario`` (unset: :data:`MAIN_JOB_SCENARIO`)
    and the control scenario to run beside it (``--control``; unset: :data:`CONTROL_SCENARIO` for the
    main job, none for a scenario given); None for no control. A control that is the scenario itself
    compares nothing and is refused."""
    main_job = args.scenario is None
    if main_job:
        args.scenario = MAIN_JOB_SCENARIO
    control = args.control if args.control is not None else (CONTROL_SCENARIO if main_job else "none")
    if control == "none":
        return None
    if control == args.scenario:
        raise UsageError(f"--control {control}: the same scenario as --scenario, nothing to compare; "
                         f"use another control or --control none")
    return control


def cmd_simulate(args: argparse.Namespace) -> int:
    from scheduler.model.scenario import ScenarioError
    from scheduler.results.heatmap import LinkSeries
    from scheduler.results.summary import control_section, write_experiment
    from scheduler.results.tables import format_control, format_table
    from scheduler.study.experiment import LinkRecording, control_experiment, run_simulation

    control = control_scenario(args)
    out = out_folder(args, "simulate")
    target = check_target(args)
    exp, info = prepare_from_args(args)
    try:
        control_exp = control_experiment(exp, control) if control is not None else None
    except ScenarioError as exc:
        raise UsageError(f"--control {control}: {exc}") from None
    log(f"simulate: {len(exp.requests)} requests from {info['source']}, scenario '{exp.scenario.name}', "
        f"{exp.tree.n_gpus} GPUs, policies {', '.join(c.name for c in exp.policies)}")
    if info.get("prompts_capped_at_context_window"):
        log(f"note: --context-scale {info['context_scale']:g}: {info['prompts_capped_at_context_window']} prompts "
            f"capped at the model's {exp.cfg.model.max_context_tokens}-token context window")
    recording = LinkRecording(link_policy(exp, target))
    oracle_rows: dict = {}
    policies, records = run_simulation(exp, progress=not args.no_progress, log=log, links=recording,
                                       oracle_rows=oracle_rows)
    sections = None
    if control_exp is not None:
        log(f"control: the same {len(exp.requests)} requests on scenario '{control_exp.scenario.name}'")
        control_policies, _ = run_simulation(control_exp, progress=not args.no_progress, log=log)
        sections = {"control": control_section(control_exp.scenario, control_policies, target)}
    source = f"simulated telemetry of {recording.policy}, a poll every {exp.cfg.oracle.poll_interval_s:g} s"
    links = LinkSeries(recording.times_s, recording.link_names, recording.utilisation, source)
    path, summary = write_experiment(out, "simulate", exp, info, policies, records, target=target,
                                     provenance=provenance(args), fmt=args.format, links=links,
                                     link_policy=recording.policy, oracle_rows=oracle_rows, sections=sections)
    print(format_table(summary, target))
    if control_exp is not None:
        print(format_control(summary, target))
    print(f"\nresults: {path}")
    return EXIT_OK
