"""Make Ryu 4.34 (the last release, 2020) import on Python 3.11 with eventlet 0.41.3.

``ryu.app.wsgi`` does ``from eventlet.wsgi import ALREADY_HANDLED``, a name eventlet removed in
0.30.3; older eventlet releases that still have it crash on Python >= 3.10. Setting the name to a
sentinel before ``ryu.cmd.manager`` (which imports ``ryu.app.wsgi``) is imported is all Ryu needs:
it only returns the object from a WSGI handler to say "response already sent", and eventlet
0.41 ignores unknown iterables of that kind. Call :func:`apply` first thing in every entry point
that imports Ryu.
"""
from __future__ import annotations

import warnings

_SENTINEL_NAME = "ALREADY_HANDLED"


class _AlreadyHandled:
    """Sentinel standing in for eventlet's removed ``wsgi.ALREADY_HANDLED``."""

    def __iter__(self):
        return iter(())

    def __repr__(self) -> str:
        return "<netkv ALREADY_HANDLED sentinel>"


def apply() -> None:
    """Idempotently patch eventlet so that Ryu 4.34 imports; silences eventlet's deprecation
    banner (it is printed on every import and says nothing actionable here)."""
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated", category=Warning)
    import eventlet.wsgi

    if not hasattr(eventlet.wsgi, _SENTINEL_NAME):
        setattr(eventlet.wsgi, _SENTINEL_NAME, _AlreadyHandled())
