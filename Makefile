# Convenience targets; each one sets itself up (scripts/setup.sh) like the README's commands.
.PHONY: simulate demo test bench fabric-up fabric-down

# The flow-level simulator with embedded defaults (no root).
simulate:
	scripts/netkv simulate

# The packet-level emulator (root): builds the 64-GPU fabric, replays a window of the embedded
# trace under the hotspot scenario for every policy (200 Gb/s NICs, where the network matters),
# prints the comparison with the simulator's figures for the same window, writes plots and
# evidence, and leaves nothing behind.
demo:
	scripts/netkv emulate --scenario hotspot --set topology.nic_gbit_s=200

test:
	scripts/test

bench:
	scripts/netkv bench

fabric-up:
	scripts/netkv fabric up

fabric-down:
	scripts/netkv fabric down
