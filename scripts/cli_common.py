"""What the `netkv` subcommands share: exit codes, usage errors, the experiment options and their
checks, and the result folders' names and checks."""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from scheduler.model.config import ORACLE_KINDS
from scheduler.paths import RESULTS_DIR

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad command-line input (exit code 2)."""


def log(msg: str) -> None:
    """A command's progress and notes: on stderr, so stdout holds only its results."""
    print(msg, file=sys.stderr)


def parse_params(items: list[str] | None, flag: str) -> dict[str, float]:
    """``NAME=VALUE`` items of a repeatable option as numbers; ``UsageError`` naming ``flag``."""
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


def add_command(sub, name: str, description: str, examples: Sequence[str], **kwargs) -> argparse.ArgumentParser:
    """A subparser ``name`` whose --help shows ``description`` and the ``examples`` (one command a
    line); ``kwargs`` go to ``add_parser`` (``help``: its line in ``netkv --help``)."""
    return sub.add_parser(name, description=description, epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def add_experiment_options(p: argparse.ArgumentParser, scenario_help: str | None = None) -> None:
    """Options common to every experiment command (simulate, emulate, staleness). ``--scenario``
    defaults to ``idle``; a command with ``scenario_help`` (the text after the option's own) leaves
    it None and resolves its default itself."""
    from scheduler.policies import DEFAULT_POLICIES

    p.add_argument("--trace", metavar="PATH", help="Mooncake JSONL trace (default: embedded synthetic generator)")
    p.add_argument("--policies", default=",".join(DEFAULT_POLICIES), metavar="A,B,C",
                   help="comma-separated policies (default: %(default)s)")
    p.add_argument("--policy-module", action="append", metavar="FILE[:CLASS]", dest="policy_modules",
                   help="a Python file of @register-ed policies (or FILE:CLASS, that class) to load first, so "
                        "--policies can name them (repeatable; docs/EXTENDING.md); copied into the result folder")
    p.add_argument("--scenario", default=None if scenario_help else "idle", metavar="NAME|FILE",
                   help="built-in congestion scenario name or a scenario TOML file ("
                        + (scenario_help or "default: %(default)s") + "; see `netkv scenarios`)")
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
    p.add_argument("--oracle", choices=ORACLE_KINDS, default=None,
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
    from scheduler.results.plotting import FIGURE_FORMATS

    p.add_argument("--format", choices=FIGURE_FORMATS, default="png",
                   help="figure file format (default: %(default)s)")


def load_policy_modules(args: argparse.Namespace) -> list:
    """Load every ``--policy-module`` file (their policies join the registry); the loaded files."""
    from scheduler.policies import load_policy_file

    return [load_policy_file(f) for f in getattr(args, "policy_modules", None) or []]


def prepare_from_args(args: argparse.Namespace):
    """The experiment of the common options (:func:`add_experiment_options`), validated, with
    warnings on stderr for what the run will not do as asked; (experiment, trace info)."""
    from scheduler.model.config import build_config
    from scheduler.study.experiment import prepare

    policy_files = load_policy_modules(args)
    overrides = list(args.overrides or [])
    if getattr(args, "oracle", None):
        overrides.append(f"oracle.kind={args.oracle}")
    cfg = build_config(args.model, args.gpu, overrides)
    weights = parse_params(args.weight, "--weight")
    exp, info = prepare(cfg, args.trace, args.scenario, args.policies, args.max_requests, args.seed,
                        parse_params(args.scenario_param, "--scenario-param"), not args.no_tune, weights,
                        args.rate_scale, args.context_scale)
    exp.policy_files = policy_files
    tuning = info["tuning_slice"]
    if not tuning["disjoint_from_evaluation"] and exp.tune and any(c.tuned_param for c in exp.policies):
        if not getattr(args, "allow_overlapping_tuning", False):
            raise UsageError(f"the trace ({info['source']}) is too short to hold its last "
                             f"{exp.cfg.tuning.tune_requests} requests out for tuning: the weights would be tuned on "
                             f"the requests that are evaluated. Use a longer trace, fewer tuning requests "
                             f"(--set tuning.tune_requests=N), --no-tune or --weight, or accept it with "
                             f"--allow-overlapping-tuning")
        log("WARNING: weights tuned on requests that are also evaluated (--allow-overlapping-tuning)")
    skipped, skipped_tune = info["skipped_too_long"], tuning["skipped_too_long"]
    if skipped or skipped_tune:
        c = exp.cfg
        ids = ", ".join(map(str, info["skipped_too_long_req_ids"]))
        print(f"WARNING: {skipped} evaluated request(s) (e.g. {ids or 'none'}) and {skipped_tune} of the tuning slice "
              f"skipped: their KV (prompt + output tokens) exceeds a decode instance's "
              f"{info['decode_kv_capacity_tokens']}-token KV capacity (model '{c.model.name}', "
              f"cluster.tp={c.cluster.tp} "
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
    """``results/<timestamp>-<backend>-<scenario>``: a command's default result folder."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = Path(scenario).stem if scenario.endswith(".toml") else scenario
    return RESULTS_DIR / f"{stamp}-{backend}-{name}"


def check_out(path: Path, existing_ok: bool = False) -> None:
    """``--out`` names a folder the command can create: not an existing file, new or empty (or,
    with ``existing_ok``, any existing folder), inside a folder it may write in. Checked before any
    work; a ``UsageError`` naming ``--out`` and the path otherwise."""
    try:
        if path.exists() and not path.is_dir():
            raise UsageError(f"--out {path}: exists and is not a folder; choose a new folder")
        if path.is_dir() and not existing_ok and any(path.iterdir()):
            raise UsageError(f"--out {path}: exists and is not empty; choose a new folder")
        parent = path.resolve().parent
        existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot look at it: {exc.strerror or exc}") from None
    if existing is None or not existing.is_dir():
        raise UsageError(f"--out {path}: {existing} is not a folder")
    if existing_ok and path.is_dir():
        existing = path  # written into, file by file
    try:  # what the result writer will do: a hidden sibling folder, renamed at the end
        probe = tempfile.mkdtemp(prefix=".netkv-write-check-", dir=existing)
        os.rmdir(probe)
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot create a folder in {existing}: {exc.strerror or exc}") from None


def out_folder(args: argparse.Namespace, kind: str) -> Path:
    """The result folder of a command writing one: ``--out``, else :func:`default_out` of ``kind``
    and the scenario; checked (:func:`check_out`) before any work."""
    out = Path(args.out) if args.out else default_out(kind, args.scenario)
    check_out(out)
    return out


def emulation_scale(args: argparse.Namespace) -> float:
    """``--scale`` (default: the Mininet topology's), with ``--time-scale``, checked > 0 (either may
    be None where the command derives it: ``emulate``)."""
    if args.time_scale is not None and not args.time_scale > 0:
        raise UsageError(f"--time-scale must be > 0, got {args.time_scale}")
    if args.scale is not None:
        if not args.scale > 0:
            raise UsageError(f"--scale must be > 0, got {args.scale}")
        return float(args.scale)
    try:
        from topology.mininet_topo import DEFAULT_SCALE  # the mininet package, not root
    except ImportError as exc:
        raise UsageError(f"Mininet is not installed ({exc}); run: sudo scripts/setup.sh --emulation") from None
    return DEFAULT_SCALE


def check_root(why: str) -> None:
    """The emulator's commands build a fabric: a ``UsageError`` saying ``why`` unless root."""
    if os.geteuid() != 0:
        raise UsageError(f"needs root: {why}; run it with sudo")


def provenance(args: argparse.Namespace) -> dict:
    """summary.json's ``provenance`` of this invocation (command line, commit, start time)."""
    from scheduler.results.provenance import collect

    return collect(getattr(args, "argv", None), getattr(args, "started", None))
