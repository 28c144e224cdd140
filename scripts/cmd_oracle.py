"""`netkv oracle serve`: the network cost oracle as an HTTP service (docs/oracle-service.md)."""
from __future__ import annotations

import argparse
import os
import sys

from scripts.cli_common import EXIT_OK, UsageError, add_command

DEFAULT_PORT = 8470
"""The service's default TCP port (next to the agents' KV port 9470 range, clear of 8080 REST)."""

DESCRIPTION = ("Serve the network cost oracle over HTTP: POST /v1/cost, /v1/select, /v1/reservations;\n"
               "GET /v1/topology, /healthz, /metrics; OpenAPI at /docs. Telemetry from the Ryu controller,\n"
               "a Prometheus server or a recorded telemetry.csv; static pricing without one. Requests need\n"
               "'Authorization: Bearer $NETKV_ORACLE_TOKEN' when that variable is set.")
EXAMPLES = ["netkv oracle serve --port 8470",
            "netkv oracle serve --telemetry ryu:http://127.0.0.1:8080",
            "netkv oracle serve --telemetry prometheus:http://127.0.0.1:9090 --set cluster.placement=by-server",
            "netkv oracle serve --telemetry replay:results/run/telemetry.csv"]


BENCH_DESCRIPTION = ("Start the oracle service and drive POST /v1/cost over loopback from separate load-generator\n"
                     "processes: closed loop (each client waits for its answer: capacity) and open loop (the\n"
                     "clients together offer --rate queries/s, latency from each query's due time). Prints\n"
                     "queries/s, p50/p90/p99/p99.9/max latency and errors per client count.")
BENCH_EXAMPLES = ["netkv oracle bench", "netkv oracle bench --mode open --rate 4000 --clients 64 --seconds 10"]


def register(sub) -> None:
    """Add ``oracle serve`` to the ``netkv`` subparsers ``sub``."""
    p = add_command(sub, "oracle", DESCRIPTION, EXAMPLES, help="the network cost oracle as an HTTP service")
    osub = p.add_subparsers(dest="oracle_command", metavar="ACTION")
    osub.required = True
    s = add_command(osub, "serve", DESCRIPTION, EXAMPLES, help="serve the oracle over HTTP")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (default: %(default)s)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; anything else "
                   "exposes the service beyond this machine)")
    s.add_argument("--telemetry", metavar="ryu:URL|prometheus:URL|replay:FILE",
                   help="telemetry source (default: none, static pricing)")
    s.add_argument("--max-age", type=float, default=None, metavar="S",
                   help="telemetry older than this is an outage: price statically and say degraded (default 4 "
                        "poll intervals; through Prometheus give about 4 scrape intervals)")
    s.add_argument("--poll-interval", type=float, default=0.5, metavar="S",
                   help="telemetry poll interval, s; snapshots older than 4 intervals are not used "
                        "(default: %(default)s)")
    s.add_argument("--capacity-scale", type=float, default=1.0, metavar="K",
                   help="the telemetry's link capacities are the model's x K (an emulated fabric's --scale; "
                        "default: %(default)s)")
    s.add_argument("--model", default="llama-3-8b", help="model preset (KV bytes per token; default: %(default)s)")
    s.add_argument("--set", action="append", dest="overrides", metavar="SECTION.FIELD=VALUE",
                   help="override a model constant, as for simulate (repeatable)")
    s.set_defaults(func=cmd_serve)
    b = add_command(osub, "bench", BENCH_DESCRIPTION, BENCH_EXAMPLES,
                    help="latency and throughput of the served oracle over loopback")
    b.add_argument("--clients", default="1,16,64", metavar="N,N,...",
                   help="concurrent client connections per level (default: %(default)s)")
    b.add_argument("--seconds", type=float, default=30.0, metavar="S", help="per level (default: %(default)s)")
    b.add_argument("--candidates", type=int, default=32, metavar="N",
                   help="candidates per /v1/cost query (default: %(default)s)")
    b.add_argument("--rate", type=float, default=2000.0, metavar="Q",
                   help="open loop: total queries/s offered by all clients together (default: %(default)s)")
    b.add_argument("--poisson", action="store_true", help="open loop: Poisson arrivals (default: evenly spaced)")
    b.add_argument("--mode", choices=("closed", "open", "both"), default="both",
                   help="closed loop (capacity), open loop (latency at --rate), or both (default: %(default)s)")
    b.add_argument("--processes", type=int, default=1, metavar="P",
                   help="load-generator processes, the clients spread over them (default: %(default)s)")
    b.set_defaults(func=cmd_bench)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from scheduler.service.app import TOKEN_ENV, OracleService, create_app
    from scheduler.service.pricing import load_pricer
    from scheduler.service.sources import SourceSpecError, TelemetryMonitor, make_source

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1..65535, got {args.port}")
    if not args.poll_interval > 0:
        raise UsageError(f"--poll-interval must be > 0, got {args.poll_interval}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"netkv oracle serve: warning: binding {args.host} exposes the oracle beyond this machine"
              f"{'' if os.environ.get(TOKEN_ENV) else f' without a token (set {TOKEN_ENV})'}", file=sys.stderr)
    pricer = load_pricer(args.overrides, args.model, args.capacity_scale)
    try:
        source = make_source(args.telemetry, pricer)
    except SourceSpecError as exc:
        raise UsageError(str(exc)) from None
    if args.max_age is not None and not args.max_age > 0:
        raise UsageError(f"--max-age must be > 0, got {args.max_age}")
    monitor = TelemetryMonitor(source, args.poll_interval, args.max_age)
    app = create_app(OracleService(pricer, monitor), token=os.environ.get(TOKEN_ENV) or None)
    monitor.start()
    try:
        # uvloop and httptools (C event loop and HTTP parser): several times less CPU per request
        uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools",
                    log_level="warning", access_log=False)
    finally:
        monitor.stop()
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from scheduler.service.bench import run_service_bench

    try:
        clients = tuple(int(n) for n in args.clients.split(","))
    except ValueError:
        raise UsageError(f"--clients must be comma-separated integers, got {args.clients!r}") from None
    if not clients or min(clients) < 1:
        raise UsageError(f"--clients must be >= 1, got {args.clients!r}")
    for name in ("seconds", "rate"):
        if not getattr(args, name) > 0:
            raise UsageError(f"--{name} must be > 0, got {getattr(args, name)}")
    if args.candidates < 1 or args.processes < 1:
        raise UsageError("--candidates and --processes must be >= 1")
    modes = ("closed", "open") if args.mode == "both" else (args.mode,)
    run_service_bench(clients, args.seconds, args.candidates, args.rate, args.poisson, args.processes, modes)
    return EXIT_OK
