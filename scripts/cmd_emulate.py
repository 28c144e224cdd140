"""`netkv emulate`: the experiment on the packet-level Mininet + Open vSwitch + Ryu fabric."""
from __future__ import annotations

import argparse

from controller.settings import DEFAULT_OFP_PORT, DEFAULT_REST_PORT
from scripts.cli_common import (
    UsageError,
    check_root,
    check_target,
    emulation_scale,
    log,
    out_folder,
    prepare_from_args,
    provenance,
)

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
(at least 10 transfers) gets a note: the calibration shows the idle fabric, this the loaded one
(the emulator's forwarding thread under the scenario's traffic, or TCP losses the fluid model has
not; docs/calibration.md#paired-agreement)."""
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
                       f"routes at {'-' if back is None else f'{back:.1f}'} s "
                       "(flows kept forwarding: fail-mode secure)")
    lost = row.get("failed_requests")
    if lost and lost["count"]:
        why = "; ".join(f"{n} {reason}" for reason, n in sorted(lost["by_reason"].items()))
        out.append(f"WARNING: {policy}: {lost['count']} of {lost['of']} requests failed ({why}); the figures above are "
                   f"the other {lost['of'] - lost['count']}'s")
    fb = row.get("telemetry_fallback")
    if fb:
        out.append(f"WARNING: {policy}: telemetry older than {fb['after_age_s']:g} s (controller down?): "
                   f"{fb['decisions']} "
                   f"decision(s) priced by the static oracle in {fb['spells']} spell(s), {fb['first_s']:.1f}-"
                   f"{fb['last_s']:.1f} s")
    return out


def telemetry_plan(args: argparse.Namespace, exp):
    """The run's telemetry path from ``--telemetry``, ``--scrape-interval``, ``--rate-window`` and
    ``--oracle-service``; UsageError naming the option on what cannot apply."""
    from scheduler.emulate.telemetry_path import TelemetryPlan

    if args.oracle_service is not None:
        if exp.cfg.oracle.staleness_s > 0:
            raise UsageError("--oracle-service prices with the service's newest snapshot: oracle.staleness_s must "
                             f"be 0 (got {exp.cfg.oracle.staleness_s}); use --telemetry prometheus "
                             "--scrape-interval S for telemetry as old as a deployment's")
        if exp.cfg.cluster.tp > 1:
            raise UsageError("--oracle-service prices one transfer per candidate: cluster.tp must be 1 "
                             f"(got {exp.cfg.cluster.tp})")
    if args.telemetry != "prometheus" and (args.rate_window is not None or args.scrape_interval != 1.0):
        raise UsageError("--scrape-interval and --rate-window apply to --telemetry prometheus")
    serve_args = ["--model", args.model] + [a for o in (args.overrides or []) for a in ("--set", o)]
    try:
        return TelemetryPlan(args.telemetry, args.scrape_interval, args.rate_window, args.oracle_service, serve_args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def emulation_settings(args: argparse.Namespace, exp):
    """``--time-scale`` and ``--scale`` as given, the rest derived (scheduler.emulate.defaults)."""
    from scheduler.emulate.defaults import derive
    from topology.mininet_topo import DEFAULT_SCALE, HTB_MIN_BURST_BYTES, MAX_SHAPED_MBIT

    return derive(exp, args.time_scale, args.scale, default_scale=DEFAULT_SCALE, burst_bytes=HTB_MIN_BURST_BYTES,
                  max_mbit=MAX_SHAPED_MBIT)


def report_settings(st, exp) -> None:
    """The derived settings' reasons, any predicted miss, and the replay's expected wall time."""
    for reason in st.reasons:
        log(f"emulate: {reason}")
    for warning in st.warnings:
        print(f"WARNING: {warning} (docs/calibration.md#faithful-defaults)")
    n_policies, replay_s = len(exp.policies), exp.requests[-1].arrival_s * st.time_scale
    log(f"emulate: time-scale {st.time_scale:g}, scale {st.scale:g}: about {replay_s * n_policies / 60:.0f} min of "
        f"replay ({n_policies} polic{'y' if n_policies == 1 else 'ies'} x {replay_s:.0f} s)")


def register(sub) -> None:
    from scripts.cli_common import add_experiment_options, add_format_option

    p = sub.add_parser(
        "emulate", help="packet-level emulation on Mininet + Open vSwitch + Ryu (root)",
        description="Packet-level replay of the same experiment on the emulated fat-tree (Mininet hosts, Open vSwitch\n"
                    "bridges, HTB-shaped links, Ryu controller, agents streaming KV bytes over TCP), with the\n"
                    "simulator's run of the same window as the reference. Needs root; refuses what the fabric\n"
                    "cannot execute faithfully (perfect oracle, one-way link failures, layer-wise streaming) before\n"
                    "building anything.",
        epilog="examples:\n"
               "  sudo netkv emulate --scenario decode-flap --set topology.nic_gbit_s=200 --max-requests 100\n"
               "  sudo make demo",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_options(p)
    add_format_option(p)
    p.add_argument("--scale", type=float, default=None, metavar="F",
                   help="emulated link rate and KV bytes per real unit (default: derived, the smallest of 2.5e-5 "
                        "(400 Gb/s NIC -> 10 Mbit/s) x 1, 2, 4 that holds HTB's burst floor to 7.5%% of the "
                        "window's median transfer: 5e-5 for the default window)")
    p.add_argument("--time-scale", type=float, default=None, metavar="K",
                   help="time dilation: links K x slower and compute K x longer; virtual times stay real, the "
                        "emulator's own per-packet latency weighs 1/K (default: derived from the fabric's size and "
                        "the window's transfers, the smallest K that keeps the emulator's predicted share of every "
                        "tier's KV transfer within 15%%, printed with the reason: 4 for the idle 64-GPU fabric, 8 "
                        "at 128 GPUs; docs/calibration.md#faithful-defaults); a smaller K is faster and warns what "
                        "it costs")
    p.add_argument("--fault", action="append", default=[], metavar="SPEC",
                   help="inject a component fault into every policy's replay at the same virtual time: "
                        "controller@T[+D] kills the Ryu controller T s into the replay and restarts it D s later "
                        "(default 5); agent:HOST@T kills the agent of a prefill or decode instance (its requests "
                        "fail; it is back for the next policy); repeatable")
    p.add_argument("--telemetry", choices=("ryu", "prometheus"), default="ryu",
                   help="where the scheduler reads link telemetry: ryu (the controller's REST, every poll) or "
                        "prometheus (a real Prometheus started for the run scrapes the controller's /metrics every "
                        "--scrape-interval; the oracle reads rate() over the switches' counters through its query "
                        "API: the telemetry's age as deployed; default %(default)s)")
    p.add_argument("--scrape-interval", type=float, default=1.0, metavar="S",
                   help="Prometheus' scrape interval, wall seconds (with --telemetry prometheus; default %(default)s; "
                        "many clusters run 15)")
    p.add_argument("--rate-window", type=float, default=None, metavar="S",
                   help="the rate() window (default 2.5 scrape intervals: two samples and jitter)")
    p.add_argument("--oracle-service", nargs="?", const="start", default=None, metavar="URL",
                   help="price every decision through the oracle service over HTTP: with no URL the run starts "
                        "`netkv oracle serve` on loopback fed by the same telemetry and stops it after; with a URL "
                        "it uses one already running (its config must match the experiment's)")
    from scripts.cmd_fabric import add_cluster_options

    add_cluster_options(p)
    p.add_argument("--ofp-port", type=int, default=DEFAULT_OFP_PORT, help="controller OpenFlow port on 127.0.0.1")
    p.add_argument("--rest-port", type=int, default=DEFAULT_REST_PORT, help="controller REST port on 127.0.0.1")
    p.set_defaults(func=run, policies=",".join(EMULATE_DEFAULT_POLICIES))


def run(args: argparse.Namespace) -> int:
    from scheduler.decision import oracle_error
    from scheduler.emulate.calibration import calibration_fits, calibration_misses
    from scheduler.emulate.defaults import FidelityModel, measured_misses
    from scheduler.emulate.emulable import check_emulable
    from scheduler.emulate.faults import check_faults, parse_fault
    from scheduler.emulate.orchestrator import run_emulation
    from scheduler.emulate.results import write_emulation
    from scheduler.results.tables import format_table
    from scripts.cmd_fabric import cluster_spec, parse_cluster
    from topology.cluster import session as cluster_session

    emulation_scale(args)  # validates what was given (and that Mininet is installed)
    if args.max_requests is None:
        args.max_requests = EMULATE_DEFAULT_REQUESTS
    out = out_folder(args, "emulate")
    # Input first, environment second: what the emulator cannot run is refused for every user,
    # before the root check and before anything is built (scheduler.emulate.emulable).
    target = check_target(args)
    exp, info = prepare_from_args(args)
    settings = emulation_settings(args, exp)
    scale, time_scale = settings.scale, settings.time_scale
    check_emulable(exp, scale, time_scale)
    report_settings(settings, exp)
    fault_list = [parse_fault(f) for f in args.fault]
    check_faults(fault_list, exp.requests[-1].arrival_s, serving_hosts(exp))
    telemetry = telemetry_plan(args, exp)
    try:
        parse_cluster(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_root("it builds Open vSwitch bridges, veth links and network namespaces (Mininet) and shapes links "
               "with tc")
    spec = cluster_spec(args, "emulate")
    if spec is False:
        return 1
    with cluster_session(spec):
        policies, records, ev = run_emulation(exp, scale, time_scale, args.ofp_port, args.rest_port,
                                              progress=not args.no_progress, log=log, fault_list=fault_list,
                                              telemetry=telemetry)
    oracle_rows = ev.get("oracle_rows") or {}
    ev["settings"] = settings.to_dict()
    ev["fidelity_misses"] = measured_misses(
        oracle_error.summarize([r for rows in oracle_rows.values() for r in rows]) if oracle_rows else None,
        ev.get("calibration"), FidelityModel.target_error)
    path, summary = write_emulation(out, exp, info, policies, records, ev, scale, time_scale, target=target,
                                    provenance=provenance(args), fmt=args.format)
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
            f"tier {t}: {a['emulate_ms']:.1f} / {a['simulate_ms']:.1f} ms (x{a['ratio']:.2f})"
            for t, a in sorted(tiers.items())))
    paired = (ev.get("paired_transfer_agreement") or {}).get("by_tier") or {}
    if paired:
        print("the same decisions on both backends (the simulator replaying each emulated run's choices), per tier: "
              + "; ".join(f"tier {t}: {a['emulate_ms']:.1f} / {a['simulate_ms']:.1f} ms (x{a['ratio']:.2f}, median "
                          f"transfer x{a['median_ratio']:.2f}, {a['transfers']} transfers)"
                          for t, a in sorted(paired.items())))
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
            print(f"note: tier {', '.join(slow)} KV transfers ran over x{TRANSFER_RATIO_NOTE:g} of the fluid model's "
                  "time "
                  f"during the runs and the idle-path probe RTT rose x{busy / idle:.1f}: where the idle calibration "
                  "above is near x1, that is the emulator's forwarding thread shared with the scenario's traffic, not "
                  "the network (--time-scale 2 halves the load)")
        elif slow:
            print(f"note: tier {', '.join(slow)} KV transfers ran over x{TRANSFER_RATIO_NOTE:g} of the fluid model's "
                  "time "
                  "during the runs while the idle-path probe RTT held: the emulator's own latency per packet and hop "
                  "(userspace forwarding and the agents' wake-ups on a shared machine, paid on every TCP round trip) "
                  "and TCP's losses behind congested links, which the fluid model has not; --time-scale 2 halves the "
                  "first (docs/calibration.md#paired-agreement); see transfer_s in requests.csv")
    if probe.get("idle_rtt_ms_p50") is not None and probe.get("run_rtt_ms_p50") is not None:
        print(f"fidelity: idle-path probe RTT {probe['idle_rtt_ms_p50']:.2f} ms idle, {probe['run_rtt_ms_p50']:.2f} ms "
              f"during the run; ovs-vswitchd CPU mean {fid['ovs_vswitchd_cpu_percent']['mean']:.0f}% of a core")
    load = fid.get("background_load") or {}
    if load.get("peak_flows"):
        print(f"background: up to {load['peak_flows']} scenario flows, {load['peak_mbit_x_bridges']:.0f} Mbit/s x "
              "bridges "
              f"at the emulated rates, {100 * load['fraction_of_budget']:.0f}% of the datapath's forwarding budget")
    if fid.get("background_note"):
        print(f"note: {fid['background_note']}")
    if fid.get("warning"):
        print(f"WARNING: {fid['warning']}")
    for miss in ev["fidelity_misses"]:
        print(f"WARNING: not faithful at --time-scale {time_scale:g} / --scale {scale:g}: {miss} "
              "(docs/calibration.md#faithful-defaults)")
    print(f"\nresults: {path}")
    return 0
