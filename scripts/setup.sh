#!/usr/bin/env bash
# Idempotent setup. Python part always (venv + pinned requirements + this package, editable, which
# gives .venv/bin/netkv); `--emulation` also installs
# the Debian packages the packet-level emulator needs and starts Open vSwitch (root only);
# `--ray` also installs the optional Ray extra (pip install -e '.[ray]': `--executor ray`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY=/usr/bin/python3
want_emu=0
want_ray=0
for a in "$@"; do
  case "$a" in
    --emulation) want_emu=1 ;;
    --ray) want_ray=1 ;;
    *) echo "setup.sh: unknown option $a (known: --emulation, --ray)" >&2; exit 2 ;;
  esac
done

log() { echo "[setup] $*" >&2; }

if [ ! -x "$PY" ]; then
  if [ "$(id -u)" = 0 ]; then
    log "installing python3 (Debian)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >&2
  else
    echo "setup.sh: /usr/bin/python3 is missing; install python3 and python3-venv" >&2; exit 1
  fi
fi

stamp="$VENV/.requirements.sha256"
want="$(cat "$ROOT/requirements-build.txt" "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      log "installing python3-venv (Debian)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
    else
      echo "setup.sh: python3-venv is missing; run: sudo apt-get install python3-venv" >&2; exit 1
    fi
  fi
  log "creating venv $VENV (system site packages, so Debian's Mininet imports)"
  "$PY" -m venv --system-site-packages "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  log "installing requirements-build.txt and requirements.txt"
  "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements-build.txt" >&2
  "$VENV/bin/python" -m pip install -q --no-build-isolation -r "$ROOT/requirements.txt" >&2
  log "installing requirements-dev.txt (pytest, ruff, mypy)"
  "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements-dev.txt" >&2
  log "installing the netkv package (editable: pip install -e .)"
  "$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps -e "$ROOT" >&2
  echo "$want" > "$stamp"
fi

if [ "$want_ray" = 1 ]; then
  ray_stamp="$VENV/.ray.sha256"
  ray_want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"  # the extra's pin lives there
  if [ ! -f "$ray_stamp" ] || [ "$(cat "$ray_stamp")" != "$ray_want" ]; then
    log "installing the ray extra (pip install -e '.[ray]')"
    "$VENV/bin/python" -m pip install -q --no-build-isolation -e "$ROOT[ray]" >&2
    echo "$ray_want" > "$ray_stamp"
  fi
fi

if [ "$want_emu" = 1 ]; then
  # Emulation prerequisites: extended by scripts/setup_emulation.sh when present.
  if [ -x "$ROOT/scripts/setup_emulation.sh" ]; then
    "$ROOT/scripts/setup_emulation.sh"
  fi
fi
