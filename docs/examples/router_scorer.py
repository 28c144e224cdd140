"""A router-side scorer asking the NetKV oracle service which decode instance to send a request to.

Run against ``netkv oracle serve``::

    python docs/examples/router_scorer.py http://127.0.0.1:8470

It reads the service's topology, then for one prefill instance scores every decode instance by
transfer time of the request's KV cache plus a load term, reserves the chosen transfer, and
releases it once the (here: pretended) transfer is done.
"""
from __future__ import annotations

import sys

from scheduler.service.client import OracleClient


def route(oracle: OracleClient, prefill: str, decodes: list[str], loads: list[float], prompt_tokens: int) -> str:
    """The decode instance for a request of ``prompt_tokens`` prefilled on ``prefill``."""
    choice = oracle.select(prefill, decodes, loads, tokens=[prompt_tokens] * len(decodes), reserve=True)
    try:
        return choice.choice
    finally:
        if choice.reservation_id is not None:  # a real router releases it when the transfer ends
            oracle.release(choice.reservation_id)


def main(url: str) -> int:
    with OracleClient(url) as oracle:
        topo = oracle.topology()
        prefill = topo["instances"]["prefill"][0]["host"]
        decodes = [f"{d['nic_ip']}:9470" for d in topo["instances"]["decode"]]  # worker addresses
        loads = [0.5 if i % 2 else 0.0 for i in range(len(decodes))]
        costs = oracle.cost(prefill, decodes, tokens=[8000] * len(decodes))
        print(f"{prefill} -> {len(decodes)} decode instances, telemetry: {costs.source}"
              f"{' (degraded)' if costs.degraded else ''}")
        print(f"chosen: {route(oracle, prefill, decodes, loads, 8000)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8470"))
