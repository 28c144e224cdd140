"""Where the controller listens and how often it polls: the defaults every launcher shares.

No topology import, so the scripts and the emulate orchestrator take their defaults from here while
:mod:`topology.fabric` is given the OpenFlow port as a parameter.
"""
from __future__ import annotations

DEFAULT_OFP_PORT = 6653
"""OpenFlow TCP port: the IANA-assigned one (Ryu's and Open vSwitch's default)."""
DEFAULT_REST_PORT = 8080
"""REST API port on 127.0.0.1: ryu-manager's own ``--wsapi-port`` default."""
DEFAULT_POLL_INTERVAL_S = 0.5
"""Port-stats poll interval, s; the simulator's telemetry oracle polls as often by default
(``oracle.poll_interval_s``), so both backends decide on equally stale snapshots."""
