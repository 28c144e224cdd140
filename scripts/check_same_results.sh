#!/usr/bin/env bash
# Did a change keep every result? Runs one fixed-seed set of experiments on commit REV (checked out
# in a temporary git worktree) and on this checkout, and compares the two result trees with
# scripts/same_results.py (wall-clock fields aside). Exit 0: identical results.
#   scripts/check_same_results.sh REV [OUT_DIR]      e.g. scripts/check_same_results.sh HEAD~3
# The set covers tuning, every policy and oracle, failures with rerouting, the mixed placement,
# layer-wise streaming, tensor parallelism, a staleness study and a sweep (~2 min per side).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REV="${1:?usage: scripts/check_same_results.sh REV [OUT_DIR]}"
OUT="${2:-$(mktemp -d /tmp/netkv-same-XXXXXX)}"
"$ROOT/scripts/setup.sh"
PY="$ROOT/.venv/bin/python"
TRACE="$ROOT/../shared/data/mooncake/conversation_trace.jsonl"
[ -f "$TRACE" ] || { echo "check_same_results: $TRACE is missing" >&2; exit 2; }
BEFORE="$OUT/code-before"
git -C "$ROOT" worktree add --detach -q "$BEFORE" "$REV"
trap 'git -C "$ROOT" worktree remove --force "$BEFORE"' EXIT

run_set() {  # run_set CODE_DIR RESULTS_DIR: `python -m` from CODE_DIR imports that checkout's code
  local code="$1" res="$2" name
  mkdir -p "$res"
  run() {
    name="$1"; shift
    if ! (cd "$code" && "$PY" -m scripts.netkv "$@" --no-progress --out "$res/$name" >"$res/$name.log" 2>&1); then
      echo "check_same_results: $name failed in $code (log: $res/$name.log)" >&2; return 1
    fi
  }
  run default simulate --max-requests 800
  run flap simulate --trace "$TRACE" --max-requests 2500 --scenario decode-flap \
      --policies round-robin,least-loaded,cache-load,topology-affinity,topology-filter,netkv:static,netkv,netkv:inflight,netkv:perfect
  run nicfail simulate --trace "$TRACE" --max-requests 2500 --scenario nic-failure --no-tune
  run linkfail simulate --trace "$TRACE" --max-requests 2500 --scenario link-failure --no-tune --set topology.nic_gbit_s=200
  run mixed simulate --max-requests 800 --scenario hotspot --set cluster.placement=mixed \
      --set cluster.reserved_servers_per_pod=0 --no-tune
  run layer simulate --max-requests 800 --scenario rolling --set timing.kv_streaming=layer-wise --no-tune --rate-scale 4
  run tp simulate --max-requests 500 --model llama-3-70b --no-tune --scenario incast
  run stale staleness --max-requests 800 --values 0,1,5 --jobs 1
  run sweep sweep --max-requests 600 --param rate-scale --values 1,4 --seeds 0,1 --no-tune --jobs 1
}

echo "check_same_results: $REV in $OUT/before, this checkout in $OUT/after" >&2
run_set "$BEFORE" "$OUT/before"
run_set "$ROOT" "$OUT/after"
"$PY" "$ROOT/scripts/same_results.py" "$OUT/before" "$OUT/after" --checkouts "$BEFORE" "$ROOT"
