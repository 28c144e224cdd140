"""GET the controller's REST endpoints (telemetry, status) over HTTP (standard library only, no Ryu import)."""
from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request

from controller.settings import DEFAULT_REST_PORT

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_REST_PORT}/netkv/telemetry"


class ControllerUnavailable(RuntimeError):  # noqa: N818 -- public name used by scheduler/, scripts/ and tests
    """A controller endpoint could not be reached or answered something that is not a JSON
    object; the message names the URL and the cause."""


def get_json(url: str, timeout_s: float = 1.0, what: str = "controller") -> dict:
    """GET ``url`` and return its JSON object; ``what`` names the endpoint in errors.

    Raises :class:`ControllerUnavailable` on connection failure, timeout, HTTP error status,
    or a body that is not a JSON object."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        raise ControllerUnavailable(f"{what} at {url} answered HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise ControllerUnavailable(f"{what} at {url} unreachable: {exc.reason}") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # TimeoutError/ConnectionResetError are OSErrors; ValueError covers malformed URLs.
        raise ControllerUnavailable(f"{what} at {url} failed: {type(exc).__name__}: {exc}") from exc
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControllerUnavailable(f"{what} at {url} returned invalid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ControllerUnavailable(
            f"{what} at {url} returned JSON {type(payload).__name__}, expected an object"
        )
    return payload


def fetch_snapshot(url: str = DEFAULT_URL, timeout_s: float = 1.0) -> dict:
    """The telemetry snapshot at ``url`` (DESIGN.md telemetry schema); see :func:`get_json`."""
    return get_json(url, timeout_s, what="telemetry")
