"""Ryu app: the controller's REST API on Ryu's WSGI server (one concern: serving JSON).

``GET /netkv/telemetry`` -> the DESIGN.md telemetry snapshot (from :class:`TelemetryApp`).
``GET /metrics``         -> the same telemetry as Prometheus metrics (:mod:`controller.exporter`:
the switches' per-link byte and drop counters, capacities, up/down, the poll's age), for a
Prometheus server to scrape.
``GET /netkv/status``    -> switches expected / connected / with routes installed, poll count,
links down, link changes and the reroutes they caused (with their timings).

Bind it to loopback: ``ryu-manager --wsapi-host 127.0.0.1 --wsapi-port <port>`` (controller.run
does). The other apps are found with ``app_manager.lookup_service_brick`` by class name.
"""
from __future__ import annotations

import json
from typing import Any, ClassVar

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from ryu.app.wsgi import ControllerBase, Response, WSGIApplication, route
from ryu.base import app_manager

REST_APP_KEY = "netkv_rest_app"


def _json(payload: dict, status: int = 200) -> Response:
    return Response(status=status, content_type="application/json", charset="utf-8",
                    body=json.dumps(payload).encode("utf-8"))


class RestApp(app_manager.RyuApp):
    """Registers :class:`NetkvRestController` with Ryu's WSGI application."""

    _CONTEXTS: ClassVar[dict[str, type]] = {"wsgi": WSGIApplication}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        kwargs["wsgi"].register(NetkvRestController, {REST_APP_KEY: self})

    def telemetry_snapshot(self) -> dict | None:
        app = app_manager.lookup_service_brick("TelemetryApp")
        return None if app is None else app.telemetry.snapshot()

    def metrics_text(self) -> bytes | None:
        app = app_manager.lookup_service_brick("TelemetryApp")
        return None if app is None else generate_latest(app.registry)

    def status(self) -> dict:
        routing = app_manager.lookup_service_brick("RoutingApp")
        telemetry = app_manager.lookup_service_brick("TelemetryApp")
        links = app_manager.lookup_service_brick("LinkStateApp")
        switches = dict(routing.switches) if routing is not None else {}
        expected = sorted(routing.tree.switch_names()) if routing is not None else []
        return {
            "switches_expected": len(expected),
            "switches_connected": sorted(n for n, s in switches.items() if s["connected"]),
            "switches_ready": sorted(n for n, s in switches.items() if s["ready"]),
            "flows_installed": sum(s["flows"] for s in switches.values() if s["ready"]),
            "polls": telemetry.polls if telemetry is not None else 0,
            "poll_interval_s": telemetry.config.poll_interval_s if telemetry is not None else None,
            "links_down": links.status.down_names() if links is not None else [],
            "link_changes": [c.to_dict() for c in links.status.changes] if links is not None else [],
            "port_status_messages": links.port_status_messages if links is not None else 0,
            "reroutes": [r.to_dict() for r in routing.reroutes] if routing is not None else [],
        }


class NetkvRestController(ControllerBase):
    """The ``/netkv/...`` routes, answered from :class:`RestApp`."""

    def __init__(self, req: Any, link: Any, data: dict[str, Any], **config: Any) -> None:
        super().__init__(req, link, data, **config)
        self.rest_app: RestApp = data[REST_APP_KEY]

    @route("netkv", "/netkv/telemetry", methods=["GET"])
    def get_telemetry(self, req: Any, **kwargs: Any) -> Response:
        snap = self.rest_app.telemetry_snapshot()
        if snap is None:
            return _json({"error": "telemetry app not loaded"}, status=503)
        return _json(snap)

    @route("netkv", "/metrics", methods=["GET"])
    def get_metrics(self, req: Any, **kwargs: Any) -> Response:
        text = self.rest_app.metrics_text()
        if text is None:
            return _json({"error": "telemetry app not loaded"}, status=503)
        return Response(status=200, content_type=CONTENT_TYPE_LATEST.split(";")[0], charset="utf-8", body=text)

    @route("netkv", "/netkv/status", methods=["GET"])
    def get_status(self, req: Any, **kwargs: Any) -> Response:
        return _json(self.rest_app.status())
