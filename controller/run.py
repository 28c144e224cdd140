"""Launch the NetKV Ryu controller (routing + telemetry + REST) on Python 3.11.

    .venv/bin/python -m controller.run --config run/controller.json \\
        --ofp-port 6653 --rest-port 8080

applies :mod:`controller.ryu_compat` before importing ``ryu.cmd.manager``, points the apps at the
JSON config through ``NETKV_CONTROLLER_CONFIG`` (see :class:`ControllerConfig`;
without ``--config`` the apps use the default 64-GPU tree, model capacities and 0.5 s polls:
:mod:`controller.settings`),
and runs ryu-manager's ``main`` with the OpenFlow listen port and a loopback-only REST server.
Arguments after ``--`` go to ryu-manager unchanged.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field

from controller.settings import DEFAULT_OFP_PORT, DEFAULT_POLL_INTERVAL_S, DEFAULT_REST_PORT
from topology.model import FatTreeConfig

APPS = ("controller.linkstate_app", "controller.app", "controller.telemetry_app", "controller.rest_app")
CONFIG_ENV = "NETKV_CONTROLLER_CONFIG"


class ControllerConfigError(ValueError):
    """The controller configuration file is missing or malformed; the message names the file."""


@dataclass
class ControllerConfig:
    """What the Ryu apps need: fat-tree shape, poll interval, emulated link capacities."""

    topology: FatTreeConfig = field(default_factory=FatTreeConfig)
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    link_capacity_bps: dict[str, float] = field(default_factory=dict)
    """Directed link name -> emulated capacity (bits/s); links not listed keep the model's."""

    def to_json(self) -> str:
        return json.dumps({
            "topology": self.topology.to_dict(),
            "poll_interval_s": self.poll_interval_s,
            "link_capacity_bps": self.link_capacity_bps,
        })

    @classmethod
    def load(cls, path: str | None = None) -> ControllerConfig:
        """Read ``path`` (default: ``$NETKV_CONTROLLER_CONFIG``); no path at all -> defaults."""
        path = path or os.environ.get(CONFIG_ENV)
        if not path:
            return cls()
        try:
            with open(path, encoding="utf-8") as fh:
                raw = json.load(fh)
            return cls(
                topology=FatTreeConfig(**raw.get("topology", {})),
                poll_interval_s=float(raw.get("poll_interval_s", DEFAULT_POLL_INTERVAL_S)),
                link_capacity_bps={str(k): float(v) for k, v in raw.get("link_capacity_bps", {}).items()},
            )
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ControllerConfigError(f"controller config {path}: {type(exc).__name__}: {exc}") from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m controller.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="controller JSON config (topology, poll_interval_s, link_capacity_bps)")
    p.add_argument("--ofp-port", type=int, default=DEFAULT_OFP_PORT, help="OpenFlow TCP listen port")
    p.add_argument("--rest-port", type=int, default=DEFAULT_REST_PORT, help="REST port on 127.0.0.1")
    p.add_argument("ryu_args", nargs="*", help="extra ryu-manager arguments (after --)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.config:
        ControllerConfig.load(args.config)  # fail here, with the file named, not inside Ryu
        os.environ[CONFIG_ENV] = os.path.abspath(args.config)
    from controller import ryu_compat

    ryu_compat.apply()
    from ryu.cmd import manager

    manager.main(args=[
        "--ofp-listen-host", "127.0.0.1",
        "--ofp-tcp-listen-port", str(args.ofp_port),
        "--wsapi-host", "127.0.0.1",
        "--wsapi-port", str(args.rest_port),
        *args.ryu_args,
        *APPS,
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
