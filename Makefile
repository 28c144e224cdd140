# Convenience targets; each one sets itself up (scripts/setup.sh) like the README's commands.
.PHONY: simulate demo test test-fast lint bench fabric-up fabric-down

# The flow-level simulator with embedded defaults (no root).
simulate:
	scripts/netkv simulate

# The packet-level emulator (root): builds the 64-GPU fabric, replays 55 requests of the embedded
# trace under decode-flap (half the decode pool's NICs flooded at a time, the halves swapping
# every 15 s: where live telemetry matters) at 200 Gb/s NICs, once per emulate default policy
# (cache-load, topology-affinity, netkv:static, netkv), at time-scale 2 (links and compute twice
# as slow, so the emulator's own per-packet latency weighs half: KV transfer times within a few
# percent of the simulator's, docs/calibration.md#paired-agreement), prints the comparison with
# the simulator's figures for the same window, writes plots and evidence, and leaves nothing
# behind (~4.5 minutes on a 2-core VM).
demo:
	scripts/netkv emulate --scenario decode-flap --set topology.nic_gbit_s=200 --time-scale 2 --max-requests 55

test:
	scripts/test

# The edit loop: the unit tier (in process, no root, no subprocess fabric), without the tests
# marked `slow` (end-to-end replays and figure renders; `make test` runs them).
test-fast:
	scripts/setup.sh
	.venv/bin/python -m pytest -q -p no:cacheprovider -m "not emulation and not slow" tests/unit

# ruff and mypy with the configuration in pyproject.toml (mypy's `files` lists the packages).
lint:
	scripts/setup.sh
	.venv/bin/ruff check .
	.venv/bin/mypy

bench:
	scripts/netkv bench

fabric-up:
	scripts/netkv fabric up

fabric-down:
	scripts/netkv fabric down
