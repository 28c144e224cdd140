"""Where a result came from: the command line, the code (commit, dirty tree), when, and with what.

Recorded in every ``summary.json`` (``provenance``) so a result folder describes itself; the
scenario file itself is copied beside it by the commands. Nothing here fails a run: a field that
cannot be found (no git, a package not installed) is ``None``.
"""
from __future__ import annotations

import datetime as dt
import platform
import subprocess
import sys
from importlib import metadata

from scheduler.paths import REPO_ROOT

PACKAGES = ("numpy", "matplotlib", "scapy", "psutil", "ryu", "eventlet")
"""Key packages whose versions change results or their files (requirements.txt pins them)."""
GIT_TIMEOUT_S = 5.0
"""A git call that takes longer than this (a locked or huge tree) is given up; the field is None."""


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True,
                             timeout=GIT_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def version() -> str:
    """The testbed's version: ``git describe`` of the tree, ``unknown`` outside a git clone."""
    return _git("describe", "--always", "--dirty", "--tags") or "unknown"


def collect(argv: list[str] | None = None, started: dt.datetime | None = None) -> dict:
    """``command`` (as typed, ``netkv`` + arguments), ``commit``, ``dirty`` (uncommitted changes
    to tracked files), ``started_utc`` (ISO 8601), ``python``, ``platform``, ``packages``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    status = _git("status", "--porcelain", "--untracked-files=no")
    packages: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    started = started or dt.datetime.now(dt.UTC)
    return {
        "command": " ".join(["netkv", *argv]),
        "argv": argv,
        "commit": _git("rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
        "started_utc": started.astimezone(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
    }
