"""`netkv staleness --backend emulate`: the staleness study on the live fabric (root), per scenario,
beside the simulator's (:mod:`scheduler.emulate.staleness`); one result folder for all scenarios."""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from pathlib import Path

from scripts.cli_common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, UsageError, prepare_from_args, provenance


def _values(args: argparse.Namespace) -> list[float]:
    from scheduler.emulate.staleness import QUICK_VALUES
    from scheduler.study import sweep as sw

    if args.quick:
        return list(QUICK_VALUES)
    values = sw.parse_values(args.values)
    if not values or not all(isinstance(v, float) and v >= 0 for v in values):
        raise UsageError(f"--values {args.values!r}: expected non-negative seconds, e.g. 0,1,5")
    return sorted(values)


def run_emulated(args: argparse.Namespace, out: Path) -> int:
    from controller.settings import DEFAULT_OFP_PORT, DEFAULT_REST_PORT
    from scheduler.emulate import staleness as st
    from scheduler.emulate.emulable import EmulationUnsupportedError, check_emulable
    from scheduler.results.files import dumps_json, write_files
    from scheduler.study.staleness import studied_policy

    if args.seeds not in ("0", str(args.seed)):
        raise UsageError("--seeds: the emulated study replays one window (use --seed)")
    if not args.time_scale > 0 or (args.scale is not None and not args.scale > 0):
        raise UsageError(f"--scale and --time-scale must be > 0, got {args.scale}, {args.time_scale}")
    values = _values(args)
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
    try:
        from topology.mininet_topo import DEFAULT_SCALE
    except ImportError as exc:
        print(f"netkv staleness: Mininet is not installed ({exc}); run: sudo scripts/setup.sh --emulation",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    scale = args.scale or DEFAULT_SCALE
    exps = []
    for name in scenarios:  # every scenario checked before anything is built
        params = [f"{k}={v:g}" for k, v in st.QUICK_SCENARIO_PARAMS.get(name, {}).items()] if args.quick \
            else args.scenario_param
        ns = argparse.Namespace(**{**vars(args), "scenario": name, "scenario_param": params,
                                   "policies": f"{target},{st.REFERENCE}"})
        exp, _ = prepare_from_args(ns)
        try:
            check_emulable(exp, scale, args.time_scale)
        except EmulationUnsupportedError as exc:
            print(f"netkv staleness: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        exps.append(exp)
    if os.geteuid() != 0:
        print("netkv staleness: --backend emulate needs root (it builds the Mininet fabric); run it with sudo",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    from scheduler.emulate.replay import EmulationError
    from topology.errors import FabricError

    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    log(f"staleness: {len(exps)} scenario(s) x {len(values)} values on the fabric, {len(exps[0].requests)} "
        f"requests each, {args.repeats} replay(s) of each value (~"
        f"{sum(e.requests[-1].arrival_s for e in exps) * (len(values) * args.repeats + 1) * args.time_scale / 60:.0f} "
        f"min of replay)")
    results = []
    try:
        for exp in exps:
            results.append(st.run_scenario(exp, target, values, scale, args.time_scale,
                                           args.ofp_port or DEFAULT_OFP_PORT, args.rest_port or DEFAULT_REST_PORT,
                                           not args.no_progress, log, args.repeats))
    except (EmulationError, FabricError) as exc:
        print(f"netkv staleness: failed: {exc}; nothing was written", file=sys.stderr)
        return EXIT_FAILED
    command = "netkv " + " ".join(args.argv)
    texts = [st.table_text(r["scenario"], target, r["rows"], r["trend"], r["scenario_params"]) for r in results]
    buf = io.StringIO()
    fields = ["scenario", *results[0]["rows"][0].keys()]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in results:
        for row in r["rows"]:
            w.writerow({"scenario": r["scenario"], **row})
    files: dict[str, bytes] = {}
    for r in results:
        files[f"requests-{r['scenario']}.csv"] = st.records_csv(r.pop("records"))
    summary = {"kind": "staleness", "backend": "emulate", "provenance": provenance(args), "command": command,
               "param": "oracle.staleness_s", "policy": target, "values": values, "scale": scale,
               "time_scale": args.time_scale, "repeats": args.repeats, "scenarios": results}
    files.update({"summary.json": dumps_json(summary).encode(), "staleness.csv": buf.getvalue().encode(),
                  "staleness.txt": ("\n\n".join(texts) + "\n").encode()})
    for r in results:
        files[f"staleness-{r['scenario']}.png"] = st.plot(r["scenario"], target, r["rows"], command, r["scenario_params"])
    path = write_files(out, files)
    print("\n\n".join(texts))
    print(f"\nresults: {path}")
    return EXIT_OK
