"""Fetch the controller's telemetry snapshot over HTTP (standard library only, no Ryu import)."""
from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8080/netkv/telemetry"


class TelemetryUnavailable(RuntimeError):
    """The telemetry endpoint could not be reached or answered something that is not a JSON
    object; the message names the URL and the cause."""


def fetch_snapshot(url: str = DEFAULT_URL, timeout_s: float = 1.0) -> dict:
    """GET ``url`` and return its JSON object (DESIGN.md telemetry schema).

    Raises :class:`TelemetryUnavailable` on connection failure, timeout, HTTP error status,
    or a body that is not a JSON object."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (local URL)
            body = resp.read()
    except urllib.error.HTTPError as exc:
        raise TelemetryUnavailable(f"telemetry at {url} answered HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise TelemetryUnavailable(f"telemetry at {url} unreachable: {exc.reason}") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # TimeoutError/ConnectionResetError are OSErrors; ValueError covers malformed URLs.
        raise TelemetryUnavailable(f"telemetry at {url} failed: {type(exc).__name__}: {exc}") from exc
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TelemetryUnavailable(f"telemetry at {url} returned invalid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise TelemetryUnavailable(
            f"telemetry at {url} returned JSON {type(payload).__name__}, expected an object"
        )
    return payload
