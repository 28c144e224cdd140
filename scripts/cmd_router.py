"""`netkv router`: the NetKV P/D router over HTTP workers (scheduler/router/netkv_router.py)."""
from __future__ import annotations

import argparse

from scripts.cli_common import EXIT_OK, UsageError, add_command

DEFAULT_PORT = 8100
"""The router's default TCP port."""

DESCRIPTION = ("Serve a P/D router with smg's client API (POST /generate, /v1/completions, /v1/chat/completions,\n"
               "streaming or not) and worker protocol (bootstrap_host/port/room added to the body sent to both\n"
               "workers; the decode worker's answer relayed). Workers are health-checked: one that stops\n"
               "answering leaves the rotation and comes back when it answers. GET /workers lists them.")
EXAMPLES = ["netkv router --prefill http://127.0.0.1:30000@8998 --decode http://127.0.0.1:30001",
            "netkv router --prefill http://10.0.0.1:30000@8998 --prefill http://10.0.0.2:30000@8998 "
            "--decode http://10.0.0.3:30000 --policy least-loaded --port 8100",
            "netkv router --prefill p0t0s0g0=http://100.64.0.2:30000@8998 --decode p1t0s0g0=http://100.64.0.130:30000 "
            "--policy netkv --oracle http://127.0.0.1:8470"]


def _named(text: str) -> tuple[str | None, str]:
    """``[NAME=]REST`` -> (name or None, rest)."""
    name, sep, rest = text.partition("=")
    if sep and not name.startswith("http") and name:
        return name, rest
    return None, text


def prefill_spec(text: str) -> tuple[str, int | None, str | None]:
    """``[NAME=]URL[@BOOTSTRAP_PORT]`` -> (url, port or None, host name or None)."""
    name, text = _named(text)
    url, sep, port = text.rpartition("@") if "@" in text else (text, "", "")
    if not url.startswith("http://"):
        raise argparse.ArgumentTypeError(f"expected [NAME=]http://HOST:PORT[@BOOTSTRAP_PORT], got {text!r}")
    if not sep:
        return url, None, name
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"bad bootstrap port in {text!r}")
    return url, int(port), name


def decode_spec(text: str) -> tuple[str, str | None]:
    """``[NAME=]URL`` -> (url, host name or None)."""
    name, url = _named(text)
    if not url.startswith("http://"):
        raise argparse.ArgumentTypeError(f"expected [NAME=]http://HOST:PORT, got {text!r}")
    return url, name


def register(sub) -> None:
    """Add ``router`` to the ``netkv`` subparsers ``sub``."""
    from scheduler.router.netkv_router import (
        AFFINITY_WEIGHT,
        FAILURE_THRESHOLD,
        HEALTH_INTERVAL_S,
        LOAD_WEIGHT_S,
        POLICIES,
    )

    p = add_command(sub, "router", DESCRIPTION, EXAMPLES, help="the NetKV P/D router over HTTP workers")
    p.add_argument("--prefill", action="append", type=prefill_spec, required=True,
                   metavar="[NAME=]URL[@BOOTSTRAP_PORT]",
                   help="a prefill worker, its bootstrap port, and its host name in the topology (repeatable)")
    p.add_argument("--decode", action="append", type=decode_spec, required=True, metavar="[NAME=]URL",
                   help="a decode worker and its host name in the topology (repeatable)")
    p.add_argument("--oracle", metavar="URL", help="the oracle service (`netkv oracle serve`) the topology-affinity "
                                                   "and netkv policies ask")
    p.add_argument("--load-weight", type=float, default=LOAD_WEIGHT_S, metavar="S",
                   help="netkv: seconds of score per request in flight on a decode worker (default: %(default)s)")
    p.add_argument("--affinity-weight", type=float, default=AFFINITY_WEIGHT, metavar="N",
                   help="topology-affinity: requests in flight per unit of tier score (default: %(default)s)")
    p.add_argument("--policy", choices=POLICIES, default="cache-load", help="selection rule (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (default: %(default)s)")
    p.add_argument("--health-interval", type=float, default=HEALTH_INTERVAL_S, metavar="S",
                   help="seconds between health checks (default: %(default)s)")
    p.add_argument("--failure-threshold", type=int, default=FAILURE_THRESHOLD, metavar="N",
                   help="failed checks in a row that take a worker out (default: %(default)s)")
    p.set_defaults(func=cmd_router)
    register_serve_bench(sub)


def cmd_router(args: argparse.Namespace) -> int:
    import uvicorn

    from scheduler.router.netkv_router import NetKVRouter, make_app

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1..65535, got {args.port}")
    if not args.health_interval > 0 or args.failure_threshold < 1:
        raise UsageError("--health-interval must be > 0 and --failure-threshold >= 1")
    names = {url: name for url, *_, name in [*args.prefill, *args.decode] if name}
    try:
        router = NetKVRouter([(u, port) for u, port, _ in args.prefill], [u for u, _ in args.decode], args.policy,
                             health_interval=args.health_interval, failure_threshold=args.failure_threshold,
                             names=names, oracle_url=args.oracle, load_weight_s=args.load_weight,
                             affinity_weight=args.affinity_weight)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    uvicorn.run(make_app(router), host=args.host, port=args.port, log_level="warning", access_log=False)
    return EXIT_OK


SERVE_DESCRIPTION = (
    "A P/D router in front of HTTP workers in the emulated GPU hosts, TTFT measured by the official OpenAI\n"
    "client: smg (SGLang's model gateway, unmodified) or the NetKV router. The client replays the trace's\n"
    "arrivals open loop through the router; the workers' KV bytes cross the shaped fabric; router traffic takes\n"
    "a management link per host, beside the fabric (docs/serve-bench.md). Writes summary.json (backend\n"
    "serve-bench, the router and its version, client and worker TTFT, the router's overhead, per tier against\n"
    "the simulator replaying the same decisions), requests.csv and the router's log and metrics. Root.")
SERVE_EXAMPLES = ["sudo netkv serve-bench --router smg --max-requests 100",
                  "sudo netkv serve-bench --router netkv --policy netkv --scenario decode-flap --max-requests 100",
                  "sudo netkv serve-bench --router smg --smg-policies round_robin,round_robin",
                  "sudo netkv serve-bench --router netkv --fault decode:p1t0s1g0@10+5"]
SERVE_DEFAULT_REQUESTS = 100
"""Requests a bench replays unless --max-requests says otherwise (about a minute at --time-scale 1)."""


def register_serve_bench(sub) -> None:
    from scheduler.router.netkv_router import POLICIES
    from scripts.cli_common import add_experiment_options

    p = add_command(sub, "serve-bench", SERVE_DESCRIPTION, SERVE_EXAMPLES,
                    help="smg or the NetKV router on the emulated fabric, measured at an OpenAI client (root)")
    add_experiment_options(p)
    p.add_argument("--router", choices=("smg", "netkv"), default="smg", help="router (default: %(default)s)")
    p.add_argument("--policy", choices=POLICIES, default="netkv",
                   help="the NetKV router's selection rule (default: %(default)s)")
    p.add_argument("--smg-policies", default="cache_aware,power_of_two", metavar="PREFILL,DECODE",
                   help="smg's prefill and decode policies (default: %(default)s)")
    p.add_argument("--scale", type=float, default=None, metavar="F", help="as emulate's --scale")
    p.add_argument("--time-scale", type=float, default=1.0, metavar="K", help="as emulate's --time-scale")
    p.add_argument("--telemetry", choices=("ryu", "prometheus"), default="ryu",
                   help="what the oracle service of the priced rules reads: ryu (the controller's REST) or prometheus "
                        "(a real Prometheus started for the run scraping the controller every --scrape-interval; "
                        "default %(default)s)")
    p.add_argument("--scrape-interval", type=float, default=1.0, metavar="S",
                   help="Prometheus' scrape interval, wall seconds (with --telemetry prometheus; default %(default)s)")
    p.add_argument("--compare", action="store_true",
                   help="bench, one after the other on the same fabric, scenario and trace window: smg "
                        "(cache_aware/power_of_two, round_robin) and the NetKV router (cache-load, topology-affinity, "
                        "netkv); --router, --policy and --smg-policies are then ignored")
    p.add_argument("--fault", default=None, metavar="decode:HOST@T[+D]",
                   help="kill the decode worker of HOST T s into the replay, start it again D s later (default 5)")
    p.add_argument("--ofp-port", type=int, default=None, help="controller OpenFlow port on 127.0.0.1")
    p.add_argument("--rest-port", type=int, default=None, help="controller REST port on 127.0.0.1")
    p.set_defaults(func=cmd_serve_bench, policies="netkv")


def cmd_serve_bench(args: argparse.Namespace) -> int:
    from controller.settings import DEFAULT_OFP_PORT, DEFAULT_REST_PORT
    from scheduler.emulate.serve_bench import BenchPlan, WorkerFault, check_bench, compare_plans, run_serve_bench
    from scheduler.emulate.telemetry_path import TelemetryPlan
    from scheduler.router.smg import POLICIES as SMG_POLICIES
    from scripts.cli_common import check_root, emulation_scale, log, out_folder, prepare_from_args, provenance

    scale = emulation_scale(args)
    if args.max_requests is None:
        args.max_requests = SERVE_DEFAULT_REQUESTS
    smg = tuple(p.strip() for p in args.smg_policies.split(","))
    if len(smg) != 2 or any(p not in SMG_POLICIES for p in smg):
        raise UsageError(f"--smg-policies expects PREFILL,DECODE from {', '.join(SMG_POLICIES)}, "
                         f"got {args.smg_policies!r}")
    out = out_folder(args, "serve-bench")
    args.no_tune = True  # the routers are not tuned on the simulator here: their rules' defaults apply
    exp, _info = prepare_from_args(args)
    serve_args = ["--model", args.model] + [a for o in (args.overrides or []) for a in ("--set", o)]
    try:
        fault = WorkerFault.parse(args.fault) if args.fault else None
        if args.telemetry != "prometheus" and args.scrape_interval != 1.0:
            raise ValueError("--scrape-interval applies to --telemetry prometheus")
        telemetry = TelemetryPlan(args.telemetry, args.scrape_interval, service="start", serve_args=serve_args)
        plan = BenchPlan(args.router, args.policy, (smg[0], smg[1]), scale, args.time_scale, telemetry, fault,
                         args.ofp_port or DEFAULT_OFP_PORT, args.rest_port or DEFAULT_REST_PORT)
        if args.compare and fault is not None:
            raise ValueError("--fault and --compare: run the fault with one router at a time")
        plans = compare_plans(plan) if args.compare else [plan]
        for one in plans:
            check_bench(exp, one)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_root("it builds the emulated fabric (Mininet, Open vSwitch, tc) and starts workers in its hosts")
    results = run_serve_bench(exp, plans, log=log)
    path = write_bench(out, [(p, *r) for p, r in zip(plans, results)], provenance(args))
    for summary, _, _ in results:
        print(format_bench(summary))
        for w in summary.get("warnings") or []:
            print(f"WARNING: {summary['router']}: {w}")
    if len(results) > 1:
        print(format_comparison([s for s, _, _ in results]))
    print(f"results: {path}")
    return EXIT_OK


def write_bench(out, results: list, prov: dict):
    """One router: summary.json, requests.csv and its files; several: summary.json with a
    ``routers`` list, and every file prefixed with the router's slug."""
    import csv
    import io
    import json

    from scheduler.results.files import write_files
    from scheduler.results.serve_bench_plot import result_files

    files: dict[str, bytes] = {}
    summaries = []
    first = results[0][1]
    caption = (f"serve-bench, scenario {first['scenario']}, {first['requests']} requests, scale {first['scale']:g}, "
               f"time-scale {first['time_scale']:g}; client = openai streaming client, workers = first token "
               "handed to the decode worker's stream")
    files |= result_files({s["router"]: rows for _, s, rows, _ in results}, first["time_scale"], caption)
    for plan, summary, rows, extra in results:
        prefix = f"{plan.slug}-" if len(results) > 1 else ""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["index"])
        w.writeheader()
        w.writerows(rows)
        files[f"{prefix}requests.csv"] = buf.getvalue().encode()
        files |= {f"{prefix}{name}": data for name, data in extra.items()}
        summaries.append(summary)
    body = ({**summaries[0], "provenance": prov} if len(summaries) == 1 else
            {"backend": "serve-bench", "routers": summaries, "comparison": comparison_rows(summaries),
             "provenance": prov})
    files["summary.json"] = (json.dumps(body, indent=2, default=float) + "\n").encode()
    return write_files(out, files)


def comparison_rows(summaries: list[dict]) -> list[dict]:
    """Per router: client TTFT mean/p50/p99, its overhead p50/p99, errors, and its mean TTFT
    against the first router's (virtual seconds)."""
    base = summaries[0]["ttft_s"]["mean"]
    return [{"router": s["router"], "ttft_mean_s": s["ttft_s"]["mean"], "ttft_p50_s": s["ttft_s"]["p50"],
             "ttft_p99_s": s["ttft_s"]["p99"], "overhead_p50_s": s["router_overhead_s"]["p50"],
             "overhead_p99_s": s["router_overhead_s"]["p99"], "errors": s["errors"],
             "vs_first_pct": (100 * (s["ttft_s"]["mean"] / base - 1) if base and s["ttft_s"]["mean"] else None)}
            for s in summaries]


def format_comparison(summaries: list[dict]) -> str:
    lines = ["", f"{'router':<42} {'TTFT mean':>10} {'p50':>7} {'p99':>7} {'overhead p50':>13} {'p99':>6} "
             f"{'errors':>6} {'vs first':>9}"]
    for r in comparison_rows(summaries):
        vs = "" if r["vs_first_pct"] is None else f"{r['vs_first_pct']:+.1f}%"
        lines.append(f"{r['router']:<42} {_ms(r['ttft_mean_s']):>10} {_ms(r['ttft_p50_s']):>7} "
                     f"{_ms(r['ttft_p99_s']):>7} {_ms(r['overhead_p50_s']):>13} {_ms(r['overhead_p99_s']):>6} "
                     f"{r['errors']:>6} {vs:>9}")
    return "\n".join(lines) + "\n(ms, virtual time; overhead = client TTFT - the workers' own TTFT)"


def _ms(x) -> str:
    return "-" if x is None else f"{1000 * x:.0f}"


def format_bench(s: dict) -> str:
    t, o, wk = s["ttft_s"], s["router_overhead_s"], s["worker_ttft_s"]
    lines = [f"serve-bench: {s['router']} ({s.get('router_version')}), scenario {s['scenario']}, "
             f"{s['requests']} requests, {s['errors']} errors",
             f"  client TTFT ms: mean {_ms(t['mean'])}  p50 {_ms(t['p50'])}  p99 {_ms(t['p99'])}",
             f"  workers' TTFT ms: mean {_ms(wk['mean'])}  p50 {_ms(wk['p50'])}  p99 {_ms(wk['p99'])}",
             f"  router overhead (client - workers) ms: p50 {_ms(o['p50'])}  p99 {_ms(o['p99'])}",
             f"  decode workers' own lateness (first token due -> sent) ms: "
             f"p50 {_ms(s['worker_emit_lag_s']['p50'])}  p99 {_ms(s['worker_emit_lag_s']['p99'])}"]
    sim = s.get("simulate_same_decisions_by_tier") or {}
    for tier, row in sorted(s["by_tier"].items()):
        twin = sim.get(tier)
        lines.append(f"  tier {tier}: {row['requests']} requests, client TTFT {_ms(row['client_ttft_mean_s'])} ms, "
                     f"transfer {_ms(row['transfer_mean_s'])} ms"
                     + (f"; simulator, same decisions: {_ms(twin['simulate_ttft_mean_s'])} ms (x{twin['ratio']:.2f})"
                        if twin else ""))
    f = s.get("fault")
    if f:
        lines.append(f"  fault {f['host']}@{f['at_s']:g}+{f['down_s']:g}: " + ", ".join(
            f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in f.items()
            if k not in ("host", "at_s", "down_s")))
    return "\n".join(lines)
