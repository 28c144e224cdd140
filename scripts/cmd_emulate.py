"""`netkv emulate`: the experiment on the packet-level Mininet + Open vSwitch + Ryu fabric."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from controller.settings import DEFAULT_OFP_PORT, DEFAULT_REST_PORT

EMULATE_DEFAULT_REQUESTS = 100
"""Default trace window of `emulate` (replayed in real time per policy: ~35 s each at 3.4 req/s),
so a default run of the four default policies stays within five minutes."""
EMULATE_DEFAULT_POLICIES = ("cache-load", "topology-affinity", "netkv:static", "netkv")
"""Default `--policies` of `emulate`: the ablation that runs on a real fabric (the network-blind
tuned baseline, llm-d's static topology scorer, NetKV on the static oracle, NetKV on live
telemetry); `netkv:perfect` needs the simulator's ground truth, and each policy costs a real-time
replay, so four keep `sudo make demo` within five minutes."""
TRANSFER_RATIO_NOTE = 1.5
"""A tier whose KV transfers took more than this multiple of the simulator's mean during the runs
(at least 10 transfers) gets a note: the calibration shows the idle fabric, this the loaded one.
The old hotspot demo (mixed placement) read x3.2-4.6 on NVLink, the forwarding thread's doing; the
decode-flap demo (by-rack) reads tier 2 x0.84-1.15 and tier 3 x1.44-1.66 with an unchanged probe
RTT: medians at the fluid share (hot decode NICs x5.2 of line rate, fluid x5.0), and a tail of
transfers that met drop-tail losses and retransmission timeouts (tier 3 hot: mean x10)."""
PROBE_RISE_NOTE = 1.5
"""The note blames the forwarding thread when the idle-path probe's median RTT during the runs was
at least this multiple of its idle median (the saturation verdict itself needs x3, scheduler.emulate.fidelity)."""


def reroute_lines(policy: str, row: dict) -> list[str]:
    """What the output says of a replay's link failures: the reroute timings, the transfers that
    met a failure, and a WARNING when a failure went unseen or the routes came late."""
    rep = row.get("reroute")
    if not rep:
        return []
    fail = row.get("failure") or {}
    sources = sorted({e["source"] for e in rep["events"] if e["source"]})
    worst = rep["rerouted_max_s"]
    out = [f"link failures under {policy}: {len(rep['events'])} link change(s), every switch on the new routes "
           f"within {'-' if worst is None else f'{1e3 * worst:.0f} ms'} (target {1e3 * rep['target_s']:.0f} ms; seen "
           f"by {', '.join(sources) or 'nothing'}); {fail.get('transfers', 0)} KV transfer(s) met a failure"
           + (f", standing still {fail['stalled_mean_s']:.2f} s on average" if fail.get("transfers") else "")]
    if rep["unseen"]:
        out.append(f"WARNING: {policy}: the controller never reported {rep['unseen']} of the link changes: routes and "
                   "telemetry did not follow them (controller.log in the run folder)")
    elif not rep["within_target"]:
        out.append(f"WARNING: {policy}: rerouting took {'-' if worst is None else f'{worst:.2f} s'}, over the "
                   f"{rep['target_s']:.2f} s target (two poll intervals)")
    return out


def serving_hosts(exp) -> dict[str, str]:
    """GPU host name -> "prefill" / "decode" for every instance of the placement (each runs an agent)."""
    from scheduler.model.cluster import assign_roles

    c = exp.cfg.cluster
    prefill, decode, _ = assign_roles(exp.tree, c.placement, c.prefill_fraction, c.reserved_servers_per_pod)
    return {**{exp.tree.gpu_name(int(g)): "prefill" for g in prefill},
            **{exp.tree.gpu_name(int(g)): "decode" for g in decode}}


def fault_lines(policy: str, row: dict) -> list[str]:
    """What the output says of a replay's injected faults and of its oracle's static fallback."""
    out = []
    for ev in row.get("faults") or []:
        if ev.get("error"):
            out.append(f"WARNING: {policy}: fault {ev['kind']}@{ev['planned_at_s']:g} failed: {ev['error']}")
        elif ev["kind"] == "agent":
            out.append(f"fault under {policy}: agent of {ev['host']} killed at {ev['down_at_s']:.1f} s")
        elif ev.get("down_at_s") is not None:
            back = ev.get("ready_at_s")
            out.append(f"fault under {policy}: controller killed at {ev['down_at_s']:.1f} s, back with every switch's "
                       f"routes at {'-' if back is None else f'{back:.1f}'} s (flows kept forwarding: fail-mode secure)")
    lost = row.get("failed_requests")
    if lost and lost["count"]:
        why = "; ".join(f"{n} {reason}" for reason, n in sorted(lost["by_reason"].items()))
        out.append(f"WARNING: {policy}: {lost['count']} of {lost['of']} requests failed ({why}); the figures above are "
                   f"the other {lost['of'] - lost['count']}'s")
    fb = row.get("telemetry_fallback")
    if fb:
        out.append(f"WARNING: {policy}: telemetry older than {fb['after_age_s']:g} s (controller down?): {fb['decisions']} "
                   f"decision(s) priced by the static oracle in {fb['spells']} spell(s), {fb['first_s']:.1f}-"
                   f"{fb['last_s']:.1f} s")
    return out


def register(sub) -> None:
    from scripts.cli_common import add_experiment_options, add_format_option

    p = sub.add_parser(
        "emulate", help="packet-level emulation on Mininet + Open vSwitch + Ryu (root)",
        description="Packet-level replay of the same experiment on the emulated fat-tree (Mininet hosts, Open vSwitch\n"
                    "bridges, HTB-shaped links, Ryu controller, agents streaming KV bytes over TCP), with the\n"
                    "simulator's run of the same window as the reference. Needs root; refuses what the fabric\n"
                    "cannot execute faithfully (perfect oracle, one-way link failures, layer-wise streaming) before\n"
                    "building anything.",
        epilog="examples:\n  sudo netkv emulate --scenario decode-flap --set topology.nic_gbit_s=200 --max-requests 100\n"
               "  sudo make demo",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_options(p)
    add_format_option(p)
    p.add_argument("--scale", type=float, default=None, metavar="F",
                   help="emulated link rate and KV bytes per real unit (default 2.5e-5: 400 Gb/s NIC -> 10 Mbit/s)")
    p.add_argument("--time-scale", type=float, default=1.0, metavar="K",
                   help="time dilation: links K x slower and compute K x longer; virtual times stay real, the "
                        "emulator's own per-packet latency weighs 1/K (default %(default)s; make demo uses 2; 8 with "
                        "--scale 5e-5 to measure the oracle's error against the packets, "
                        "docs/calibration.md#oracle-time-scale; raise it when the fidelity check says the datapath "
                        "saturated)")
    p.add_argument("--fault", action="append", default=[], metavar="SPEC",
                   help="inject a component fault into every policy's replay at the same virtual time: "
                        "controller@T[+D] kills the Ryu controller T s into the replay and restarts it D s later "
                        "(default 5); agent:HOST@T kills the agent of a prefill or decode instance (its requests "
                        "fail; it is back for the next policy); repeatable")
    p.add_argument("--ofp-port", type=int, default=DEFAULT_OFP_PORT, help="controller OpenFlow port on 127.0.0.1")
    p.add_argument("--rest-port", type=int, default=DEFAULT_REST_PORT, help="controller REST port on 127.0.0.1")
    p.set_defaults(func=run, policies=",".join(EMULATE_DEFAULT_POLICIES))


def run(args: argparse.Namespace) -> int:
    from scripts.cli_common import (
        EXIT_BAD_INPUT,
        EXIT_FAILED,
        build_summary,
        check_out,
        check_target,
        default_out,
        prepare_from_args,
        scenario_files,
    )

    if not args.time_scale > 0:
        print(f"netkv emulate: error: --time-scale must be > 0, got {args.time_scale}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.scale is not None and not args.scale > 0:
        print(f"netkv emulate: error: --scale must be > 0, got {args.scale}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.max_requests is None:
        args.max_requests = EMULATE_DEFAULT_REQUESTS
    out = Path(args.out) if args.out else default_out("emulate", args.scenario)
    check_out(out)
    # Input first, environment second: what the emulator cannot run is refused for every user,
    # before the root check and before anything is built (scheduler.emulate.emulable).
    exp, info = prepare_from_args(args)
    from scheduler.emulate.emulable import EmulationUnsupportedError, check_emulable

    if args.scale is not None:
        scale = args.scale
    else:
        try:
            from topology.mininet_topo import DEFAULT_SCALE  # the mininet package, not root
        except ImportError as exc:
            print(f"netkv emulate: Mininet is not installed ({exc}); run: sudo scripts/setup.sh --emulation",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
        scale = DEFAULT_SCALE
    try:
        check_emulable(exp, scale, args.time_scale)
    except EmulationUnsupportedError as exc:
        print(f"netkv emulate: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from scheduler.emulate.faults import FaultSpecError, check_faults, parse_fault

    try:
        fault_list = [parse_fault(f) for f in args.fault]
        check_faults(fault_list, exp.requests[-1].arrival_s, serving_hosts(exp))
    except FaultSpecError as exc:
        print(f"netkv emulate: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if os.geteuid() != 0:
        print("netkv emulate: needs root: it builds Open vSwitch bridges, veth links and network namespaces "
              "(Mininet) and shapes links with tc; run it with sudo", file=sys.stderr)
        return EXIT_BAD_INPUT

    import json

    import numpy as np

    from scheduler.decision import oracle_error
    from scheduler.emulate.calibration import calibration_fits, calibration_misses
    from scheduler.emulate.orchestrator import run_emulation
    from scheduler.emulate.replay import EmulationError
    from scheduler.results import oracle_error_plot
    from scheduler.results.files import LINK_CSV, write_results
    from scheduler.results.heatmap import LinkSeries
    from scheduler.results.metrics import ablation, compare
    from scheduler.results.plotting import experiment_caption
    from scheduler.results.tables import format_table
    from scheduler.results.timeline import scenario_spans
    from topology.fabric import FabricError
    from topology.mininet_topo import EmulationScaleError

    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    try:
        policies, records, ev = run_emulation(exp, scale, args.time_scale, args.ofp_port, args.rest_port,
                                              progress=not args.no_progress, log=log, fault_list=fault_list)
    except EmulationScaleError as exc:
        print(f"netkv emulate: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (EmulationError, FabricError) as exc:
        print(f"netkv emulate: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    extra = {"calibration.json": None, "telemetry.csv": ev.pop("telemetry_csv")}
    rows = ev.pop("telemetry_rows")
    target = check_target(args)
    spans = scenario_spans(exp.actions(), exp.horizon_s, exp.scenario.events, exp.tree.link_name)
    links = None
    if rows:
        # one axis for the whole run: wall seconds since the first sample (policies replay in turn)
        keep = [r for k, r in enumerate(rows) if k == 0 or r[2] > rows[k - 1][2]]
        links = LinkSeries(np.array([r[2] - keep[0][2] for r in keep]),
                           [exp.tree.link_name(i) for i in range(exp.tree.n_links)], np.stack([r[3] for r in keep]),
                           "controller telemetry, wall s since the first poll, every policy's replay in turn")
    summary = build_summary("emulate", exp, info, policies, {
        "comparison_target": target, "comparison": compare(policies, target), "ablation": ablation(policies),
        "fidelity": ev.get("fidelity"), "calibration": ev.get("calibration"),
        "emulation": {"scale": scale, "time_scale": args.time_scale, "fabric": ev.get("fabric"),
                      "hosts": ev.get("hosts")},
        "simulate_reference": ev.get("simulate_reference"), "agreement": ev.get("agreement"),
        "transfer_agreement": ev.get("transfer_agreement"),
        "paired_transfer_agreement": ev.get("paired_transfer_agreement"),
        "scenario_spans": [{"start_s": a, "end_s": b, "label": label} for a, b, label in spans],
        "link_utilisation": {"source": links.source, "file": LINK_CSV} if links is not None else None}, args)
    extra.update(scenario_files(exp))
    oracle_rows = ev.pop("oracle_rows", {})
    extra.update(oracle_error_plot.result_files(oracle_rows, experiment_caption(summary), target, args.format))
    extra["calibration.json"] = (json.dumps(ev.get("calibration"), indent=2, default=float) + "\n").encode()
    path = write_results(out, summary, records, exp.slo(), extra_files=extra, target=target, fmt=args.format,
                         spans=spans, links=links)
    print(format_table(summary, target))
    cal = ev.get("calibration") or {}
    print("\ncalibration (idle fabric, per tier): " + "; ".join(
        f"tier {t}: goodput {100 * c['goodput_ratio']:.0f}% of {c['configured_mbit_s']:.1f} Mbit/s, "
        f"KV time x{c['time_ratio']:.2f} of simulator" for t, c in sorted(cal.get("tiers", {}).items()))
        + (f" (tier {', '.join(sorted(cal['skipped_tiers']))} not calibrated: no KV transfer takes it under "
           f"placement {exp.cfg.cluster.placement})" if cal.get("skipped_tiers") else ""))
    for miss in calibration_misses(cal):
        print(f"WARNING: calibration {miss}: transfers on that tier are the emulator's as much as the network's "
              "(see fidelity below; a slow or shared machine shows first on NVLink, the fastest link)")
    for base, a in (ev.get("agreement") or {}).items():
        print(f"agreement, netkv vs {base}: emulate {a['emulate_pct']:+.1f}%, simulate {a['simulate_pct']:+.1f}%"
              + (" (no effect on either backend)" if a.get("no_effect") else
                 f" ({'same sign' if a['same_sign'] else 'DIFFERENT SIGN'}, magnitudes x{a['magnitude_ratio']:.2f})"))
    tiers = ev.get("transfer_agreement") or {}
    if tiers:
        print("KV transfer time by tier during the runs, emulate / simulate (all policies): " + "; ".join(
            f"tier {t}: {a['emulate_ms']:.1f} / {a['simulate_ms']:.1f} ms (x{a['ratio']:.2f})" for t, a in sorted(tiers.items())))
    paired = (ev.get("paired_transfer_agreement") or {}).get("by_tier") or {}
    if paired:
        print("the same decisions on both backends (the simulator replaying each emulated run's choices), per tier: "
              + "; ".join(f"tier {t}: {a['emulate_ms']:.1f} / {a['simulate_ms']:.1f} ms (x{a['ratio']:.2f}, median "
                          f"transfer x{a['median_ratio']:.2f}, {a['transfers']} transfers)" for t, a in sorted(paired.items())))
    if oracle_rows:
        print(oracle_error.console_line([r for rows in oracle_rows.values() for r in rows], calibration_fits(cal)))
    for name, row in policies.items():
        for line in reroute_lines(name, row) + fault_lines(name, row):
            print(line)
    fid = ev.get("fidelity") or {}
    probe = fid.get("probe") or {}
    if tiers:
        judged = paired or tiers  # the same decisions on both backends when there are any
        slow = [t for t, a in sorted(judged.items()) if a["ratio"] > TRANSFER_RATIO_NOTE
                and a.get("transfers", a.get("transfers_emulate", 0)) >= 10]
        idle, busy = probe.get("idle_rtt_ms_p50"), probe.get("run_rtt_ms_p50")
        if slow and idle and busy and busy >= PROBE_RISE_NOTE * idle:
            print(f"note: tier {', '.join(slow)} KV transfers ran over x{TRANSFER_RATIO_NOTE:g} of the fluid model's time "
                  f"during the runs and the idle-path probe RTT rose x{busy / idle:.1f}: where the idle calibration "
                  "above is near x1, that is the emulator's forwarding thread shared with the scenario's traffic, not "
                  "the network (--time-scale 2 halves the load)")
        elif slow:
            print(f"note: tier {', '.join(slow)} KV transfers ran over x{TRANSFER_RATIO_NOTE:g} of the fluid model's time "
                  "during the runs while the idle-path probe RTT held: the emulator's own latency per packet and hop "
                  "(userspace forwarding and the agents' wake-ups on a shared machine, paid on every TCP round trip) "
                  "and TCP's losses behind congested links, which the fluid model has not; --time-scale 2 halves the "
                  "first (docs/calibration.md#paired-agreement); see transfer_s in requests.csv")
    if probe.get("idle_rtt_ms_p50") is not None and probe.get("run_rtt_ms_p50") is not None:
        print(f"fidelity: idle-path probe RTT {probe['idle_rtt_ms_p50']:.2f} ms idle, {probe['run_rtt_ms_p50']:.2f} ms "
              f"during the run; ovs-vswitchd CPU mean {fid['ovs_vswitchd_cpu_percent']['mean']:.0f}% of a core")
    load = fid.get("background_load") or {}
    if load.get("peak_flows"):
        print(f"background: up to {load['peak_flows']} scenario flows, {load['peak_mbit_x_bridges']:.0f} Mbit/s x bridges "
              f"at the emulated rates, {100 * load['fraction_of_budget']:.0f}% of the datapath's forwarding budget")
    if fid.get("background_note"):
        print(f"note: {fid['background_note']}")
    if fid.get("warning"):
        print(f"WARNING: {fid['warning']}")
    print(f"\nresults: {path}")
    return 0
