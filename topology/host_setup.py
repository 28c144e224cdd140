"""Network settings inside every emulated GPU host: transport sysctls, subnet routes, static ARP.

Each setting brings the packet-level fabric closer to the fluid model and a datacenter transport;
the figures behind them are in docs/calibration.md. Only the hosts' namespaces change (the VM's
own settings stay as they are), plus IPv6 off on the root-namespace switch ports.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from topology.cleanup import switch_intf_names
from topology.errors import FabricError
from topology.mininet_topo import NIC_PREFIX, NVLINK_PREFIX, host_intf_name
from topology.model import FatTree, gpu_mac, nic_ip, nvlink_ip

HOST_RTO_MIN_MS = 10
"""TCP minimum RTO on the fabric routes: Linux's 200 ms turns each tail drop into a stall longer than the
transfer (docs/calibration.md#host-rto-min)."""
HOST_TCP_CONGESTION = "reno"
"""Congestion control in every host, explicit so results do not follow the VM's default
(docs/calibration.md#host-tcp-congestion says why this one)."""
HOST_SLOW_START_AFTER_IDLE = 0
"""Pooled KV connections keep their window across idle gaps, as an RDMA engine starts at the path's rate
(docs/calibration.md#host-slow-start-after-idle)."""


def disable_switch_ipv6(tree: FatTree) -> None:
    """Root-namespace switch ports: no IPv6 chatter (router solicitations, MLD) into the fabric."""
    for name in switch_intf_names(tree):
        path = Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6")
        if path.exists():
            path.write_text("1")


def host_arp_lines(tree: FatTree, g: int) -> list[str]:
    """``ip -batch`` lines with GPU ``g``'s permanent ARP entries: every other GPU's NIC on eth0,
    the GPUs of its server on eth1 (NVLink)."""
    name = tree.gpu_name(g)
    eth0, eth1 = host_intf_name(name, False), host_intf_name(name, True)
    lines = [f"neigh replace {nic_ip(tree, d)} lladdr {gpu_mac(d)} dev {eth0} nud permanent"
             for d in range(tree.n_gpus) if d != g]
    lines += [f"neigh replace {nvlink_ip(tree, d)} lladdr {gpu_mac(d, nvlink=True)} dev {eth1} nud permanent"
              for d in range(tree.n_gpus) if d != g and tree.tier(g, d) == 0]
    return lines


def host_command(name: str, arp_batch: Path) -> str:
    """Shell command run in host ``name``: IPv6 off, transport sysctls, subnet routes with
    ``rto_min``, the ARP batch; prints ``netkv-ok`` when all of it succeeded."""
    eth0, eth1 = host_intf_name(name, False), host_intf_name(name, True)
    return ("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1;"
            f" sysctl -qw net.ipv4.tcp_congestion_control={HOST_TCP_CONGESTION}"
            f" net.ipv4.tcp_slow_start_after_idle={HOST_SLOW_START_AFTER_IDLE} &&"
            f" ip route replace 10.0.0.0/{NIC_PREFIX} dev {eth0} rto_min {HOST_RTO_MIN_MS}ms &&"
            f" ip route replace 192.168.0.0/{NVLINK_PREFIX} dev {eth1} rto_min {HOST_RTO_MIN_MS}ms &&"
            f" ip -batch {arp_batch} && echo netkv-ok")


def configure_hosts(net: Any, tree: FatTree, run_dir: Path) -> None:
    """Apply the settings to every GPU host of the built Mininet ``net`` (ARP batches in
    ``run_dir/arp``); FabricError naming the host whose command failed."""
    disable_switch_ipv6(tree)
    arp_dir = run_dir / "arp"
    arp_dir.mkdir(exist_ok=True)
    for g, name in enumerate(tree.gpu_names):
        batch = arp_dir / f"{name}.batch"
        batch.write_text("\n".join(host_arp_lines(tree, g)) + "\n")
        out = net.get(name).cmd(host_command(name, batch))
        if "netkv-ok" not in out:
            raise FabricError(f"configuring host {name} failed: {out.strip()}")


def reconfigure_host(net: Any, tree: FatTree, name: str, run_dir: Path) -> None:
    """Re-apply host ``name``'s settings after one of its interfaces was down: an interface taken
    down loses its routes (the kernel puts back a plain one, without ``rto_min``) and its ARP
    entries, permanent ones too."""
    batch = run_dir / "arp" / f"{name}.batch"
    out = net.get(name).cmd(host_command(name, batch))
    if "netkv-ok" not in out:
        raise FabricError(f"reconfiguring host {name} after its link came back failed: {out.strip()}")
