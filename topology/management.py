"""A management network beside the emulated fabric: one veth pair per GPU host, root namespace <->
host namespace, its own /30, outside Open vSwitch and unshaped.

Routers (smg, ``netkv router``) and their clients run in the root namespace and reach the HTTP
workers in the hosts over it, as production front-end traffic reaches serving pods over a network
separate from the RDMA back end: prompt bodies, token streams and health polls never share an
HTB queue with KV bytes, so they cannot distort the transfers being measured. Nothing is routed
between hosts over it (each /30 is a point-to-point link to the root namespace; forwarding in the
root namespace is not touched): host-to-host traffic, the P/D rendezvous included, takes the fabric.

The root-side ends are named ``MGMT_PREFIX`` + the host's GPU index; a host's namespace going away
(the fabric's teardown kills every process in it) destroys the pair, and :meth:`ManagementNet.close`
deletes whatever is left of the ones it made.
"""
from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Sequence
from typing import Any

from topology.cleanup import delete_links, present_links
from topology.errors import FabricError

MGMT_SUBNET = "100.64.0.0/16"
"""Addresses of the management links, a /30 per host: RFC 6598's shared address space, which a
VM's own networks (and the fabric's 10/8 and 192.168/16) do not use; 16,384 hosts fit."""
MGMT_PREFIX = "nkvm"
"""Root-namespace name prefix of the management veths (``nkvm12``: GPU 12's)."""
MGMT_HOST_INTF = "mgmt0"
"""The management interface's name inside each host."""


class ManagementError(FabricError):
    """The management network could not be built."""


def mgmt_addresses(gpu: int, subnet: str = MGMT_SUBNET) -> tuple[str, str]:
    """(root-side address, host-side address) of GPU ``gpu``'s /30 in ``subnet``."""
    net = ipaddress.ip_network(subnet)
    if gpu < 0 or 4 * (gpu + 1) > net.num_addresses:
        raise ManagementError(f"GPU {gpu} does not fit management subnet {subnet} (a /30 per host)")
    base = net.network_address + 4 * gpu
    return str(base + 1), str(base + 2)


def root_intf(gpu: int) -> str:
    return f"{MGMT_PREFIX}{gpu}"


class ManagementNet:
    """Management links to the hosts ``hosts`` (``(gpu index, Mininet host)``); a context manager."""

    def __init__(self, hosts: Sequence[tuple[int, Any]], subnet: str = MGMT_SUBNET) -> None:
        self.hosts = list(hosts)
        self.subnet = subnet
        self.addresses = {gpu: mgmt_addresses(gpu, subnet)[1] for gpu, _ in self.hosts}
        self.made: list[str] = []

    def __enter__(self) -> ManagementNet:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        names = [root_intf(g) for g, _ in self.hosts]
        taken = present_links(names)
        if taken:
            raise ManagementError(f"management interfaces already exist: {', '.join(taken[:5])} (another run's?)")
        batch = []
        for gpu, host in self.hosts:
            root_ip, _ = mgmt_addresses(gpu, self.subnet)
            batch += [f"link add {root_intf(gpu)} type veth peer name {MGMT_HOST_INTF} netns {int(host.pid)}",
                      f"addr add {root_ip}/30 dev {root_intf(gpu)}", f"link set {root_intf(gpu)} up"]
        self.made = names
        done = subprocess.run(["ip", "-batch", "-"], input="\n".join(batch) + "\n", capture_output=True, text=True,
                              check=False)
        if done.returncode:
            raise ManagementError(f"management links: ip -batch failed: {done.stderr.strip()[:300]}")
        for gpu, host in self.hosts:
            _, host_ip = mgmt_addresses(gpu, self.subnet)
            out = host.cmd(f"ip addr add {host_ip}/30 dev {MGMT_HOST_INTF} && ip link set {MGMT_HOST_INTF} up "
                           "&& echo netkv-ok")
            if "netkv-ok" not in out:
                raise ManagementError(f"management address in {host.name}: {out.strip()[:200]}")

    def close(self) -> None:
        """Delete the root-side ends still present (a host namespace already gone took its pair)."""
        left = present_links(self.made)
        if left:
            delete_links(left)
        self.made = []
