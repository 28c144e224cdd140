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
            "--decode http://10.0.0.3:30000 --policy least-loaded --port 8100"]


def prefill_spec(text: str) -> tuple[str, int | None]:
    """``URL[@BOOTSTRAP_PORT]`` -> (url, port or None)."""
    url, sep, port = text.rpartition("@") if "@" in text else (text, "", "")
    if not url.startswith("http://"):
        raise argparse.ArgumentTypeError(f"expected http://HOST:PORT[@BOOTSTRAP_PORT], got {text!r}")
    if not sep:
        return url, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"bad bootstrap port in {text!r}")
    return url, int(port)


def register(sub) -> None:
    """Add ``router`` to the ``netkv`` subparsers ``sub``."""
    from scheduler.router.netkv_router import FAILURE_THRESHOLD, HEALTH_INTERVAL_S, POLICIES

    p = add_command(sub, "router", DESCRIPTION, EXAMPLES, help="the NetKV P/D router over HTTP workers")
    p.add_argument("--prefill", action="append", type=prefill_spec, required=True, metavar="URL[@BOOTSTRAP_PORT]",
                   help="a prefill worker and its bootstrap port (repeatable)")
    p.add_argument("--decode", action="append", required=True, metavar="URL", help="a decode worker (repeatable)")
    p.add_argument("--policy", choices=POLICIES, default="cache-load", help="selection rule (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (default: %(default)s)")
    p.add_argument("--health-interval", type=float, default=HEALTH_INTERVAL_S, metavar="S",
                   help="seconds between health checks (default: %(default)s)")
    p.add_argument("--failure-threshold", type=int, default=FAILURE_THRESHOLD, metavar="N",
                   help="failed checks in a row that take a worker out (default: %(default)s)")
    p.set_defaults(func=cmd_router)


def cmd_router(args: argparse.Namespace) -> int:
    import uvicorn

    from scheduler.router.netkv_router import NetKVRouter, make_app

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1..65535, got {args.port}")
    if not args.health_interval > 0 or args.failure_threshold < 1:
        raise UsageError("--health-interval must be > 0 and --failure-threshold >= 1")
    router = NetKVRouter(args.prefill, args.decode, args.policy, health_interval=args.health_interval,
                         failure_threshold=args.failure_threshold)
    uvicorn.run(make_app(router), host=args.host, port=args.port, log_level="warning", access_log=False)
    return EXIT_OK
