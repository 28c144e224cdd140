"""What the ``emulate`` backend can run faithfully, checked before anything is built.

:func:`check_emulable` runs on the prepared :class:`scheduler.study.experiment.Experiment` (no root, no
Mininet import: the CLI calls it before its root check, so a bad request fails the same way for
every user and nothing is created). It refuses, naming the policy or the scenario event and the
reason:

* a policy whose oracle is ``perfect`` (``netkv:perfect``, or ``--oracle perfect`` /
  ``oracle.kind=perfect`` for a policy given without one): that oracle reads the simulator's
  ground truth (true routes, every flow's max-min share); a real fabric shows itself only through
  telemetry, so there is nothing to read;
* a scenario that takes a link down in one direction only: on the fabric a link fails as a real
  one does, both interfaces down (the controller sees the port change and reroutes), so a
  one-way failure has no meaning there (``"u<->v"`` takes both ways down);
* ``timing.kv_streaming = "layer-wise"``: what it leaves in TTFT is the last layer's bytes plus
  the fabric's per-packet delays, which the emulated fabric inflates by 1/scale (measured
  residuals in docs/calibration.md#layer-wise); :func:`packet_floor_s` gives the store-and-forward floor;
* ``cluster.tp`` > 1 (tensor-parallel instances of several GPUs): the agents model one GPU per
  instance and stream a request's KV over one connection, while the simulator stripes it rank by
  rank over every GPU of the instance; not built on the emulator yet;
* ``topology.kind = "rail"`` and ``topology.intra_server = "nic"``: the Mininet fabric, its wiring
  and the controller's routes are the fat-tree's, with same-server traffic on the NVLink switch;
  the simulator runs both (docs/rail.md);
* background traffic the emulator's forwarding plane cannot carry at the chosen scale (see
  :func:`background_load`): the datapath, not the shaped links, would set every transfer's time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scheduler.model.cluster import assign_roles
from scheduler.model.scenario import Action
from scheduler.sim.network import max_min_rates
from scheduler.study.experiment import Experiment
from topology.emulated import emulated_mbit, kind_rates_mbit
from topology.model import FatTree

FORWARDING_BUDGET_MBIT_BRIDGES = 525.0
"""Emulated traffic the Open vSwitch userspace datapath forwards with its one thread, in Mbit/s x
bridges crossed (a flow of 5 Mbit/s across the 5 bridges between pods counts 25): the lowest figure
measured on this machine kind (docs/calibration.md#forwarding-budget)."""
BACKGROUND_REJECT_FRACTION = 1.0
"""Background load (peak, at the emulated rates) beyond this share of the forwarding budget is
refused: the forwarding thread would be saturated by the scenario alone."""
BACKGROUND_WARN_FRACTION = 0.5
"""Beyond this share the run is allowed but warned about: at 0.38 the probe RTT stayed flat, at 0.76
it rose x2-2.5 (docs/calibration.md#forwarding-budget)."""
FRAME_BYTES = 1514
"""A full Ethernet frame (1500-byte MTU + header): the unit every shaped hop stores and forwards,
whatever the scale."""


class EmulationUnsupportedError(ValueError):
    """The experiment asks for something the emulator cannot run faithfully; the message names
    the policy or scenario event and why (exit code 2, nothing is created)."""


@dataclass(frozen=True)
class BackgroundLoad:
    """Peak emulated background traffic of a scenario over the evaluated window."""

    peak_mbit_bridges: float
    peak_flows: int
    peak_at_s: float
    budget_mbit_bridges: float = FORWARDING_BUDGET_MBIT_BRIDGES

    @property
    def fraction(self) -> float:
        return self.peak_mbit_bridges / self.budget_mbit_bridges

    def to_dict(self) -> dict:
        return {"peak_mbit_x_bridges": round(self.peak_mbit_bridges, 2), "peak_flows": self.peak_flows,
                "peak_at_s": round(self.peak_at_s, 3), "budget_mbit_x_bridges": self.budget_mbit_bridges,
                "fraction_of_budget": round(self.fraction, 3)}


def perfect_oracle_problems(exp: Experiment) -> list[str]:
    """One line per policy that would read the ``perfect`` oracle."""
    out = []
    for spec in exp.policies:
        if not spec.cls.needs_oracle:
            continue
        kind = spec.oracle or exp.cfg.oracle.kind
        if kind != "perfect":
            continue
        how = (f"policy {spec.name!r}" if spec.oracle else
               f"policy {spec.name!r} under --oracle perfect (oracle.kind=perfect)")
        out.append(f"{how}: the 'perfect' oracle reads the simulator's ground truth (true routes, every "
                   f"flow's max-min share) and a real fabric has none, it shows itself only through "
                   f"telemetry; run it with `netkv simulate`, here use netkv (telemetry), netkv:inflight "
                   f"or netkv:static")
    return out


def _reverse_link(tree: FatTree, link: int) -> int:
    """The other direction of directed link ``link``."""
    u, v = tree.link_endpoints(link)
    return tree.link_index[(v, u)]


def link_down_problems(exp: Experiment, actions: list[Action]) -> list[str]:
    """One line per link-down action that leaves the other direction of a link up."""
    tree, out = exp.tree, []
    for a in actions:
        if a.kind != "link_capacity" or a.factor is None or a.factor > 0:
            continue
        links = {int(i) for i in a.links}
        lonely = sorted(i for i in links if _reverse_link(tree, i) not in links)
        if lonely:
            names = ", ".join(tree.link_name(i) for i in lonely[:4]) + (" ..." if len(lonely) > 4 else "")
            out.append(f"scenario '{exp.scenario.name}' ({exp.scenario.source}) takes {names} down in one direction "
                       f"only (at {a.time_s:.3g} s): on the fabric a link fails as a real one does, both interfaces "
                       f"down, so the controller sees it and reroutes; name the link as 'u<->v' (both directions), "
                       f"or run a one-way failure with `netkv simulate`")
    return out


def packet_floor_s(exp: Experiment, scale: float) -> float:
    """Virtual seconds one full frame takes to be stored and forwarded on every shaped hop of the
    slowest path a KV transfer of this placement can take (first prefill GPU to every decode GPU):
    ``sum(FRAME_BYTES x 8 / (real rate x scale))`` (the time scale stretches both the link and the
    clock, so it cancels). The simulator's fluid flows have no such floor."""
    tree, cl = exp.tree, exp.cfg.cluster
    roles = assign_roles(tree, cl.placement, cl.prefill_fraction, cl.reserved_servers_per_pod, cl.tp)
    gbit = tree.link_capacity_gbit_s
    src = int(roles.prefill[0])
    return max(sum(FRAME_BYTES * 8 / (emulated_mbit(gbit[tree.link_kind(i)], scale) * 1e6)
                   for i in tree.path(src, int(d)))
               for d in roles.decode)


def tp_problems(exp: Experiment) -> list[str]:
    """One line when instances span several GPUs (``cluster.tp`` > 1)."""
    tp = exp.cfg.cluster.tp
    if tp == 1:
        return []
    return [f"cluster.tp={tp}: an instance spans {tp} GPUs and the simulator stripes its KV transfers over all "
            f"their NICs (rank r to rank r), but the emulator's agents run one GPU per instance and stream a "
            f"request's KV over one connection (tensor-parallel instances are not built on the emulator yet); run "
            f"it with `netkv simulate`, or here with --set cluster.tp=1 and a model that fits one GPU"]


def layer_wise_problems(exp: Experiment, scale: float) -> list[str]:
    """One line when the run streams KV layer by layer (see the module doc for the measurement)."""
    if exp.cfg.timing.kv_streaming != "layer-wise":
        return []
    return [f"timing.kv_streaming=layer-wise: streamed layer by layer, a KV transfer leaves only its last layer's "
            f"bytes and the fabric's per-packet delays in TTFT, and on the emulated fabric those are 1/scale times "
            f"real (at --scale {scale:g} one frame's store-and-forward across the slowest KV path takes "
            f"{1e3 * packet_floor_s(exp, scale):.1f} ms, and a congested NIC's standing queue tens of ms more), "
            f"while the simulator's fluid flows have none: measured on decode-flap, transfers ended 4.5-7 ms (median) "
            f"after the prefill on idle paths and 48-68 ms on congested ones against 0.6-0.8 and 2.8-5.8 ms "
            f"simulated, NetKV's gain x7-15 apart; the agents do stream layer by layer, but run this with "
            f"`netkv simulate`"]


def _emulated_capacity_mbit(exp: Experiment, scale: float, time_scale: float) -> np.ndarray:
    """Emulated Mbit/s of every directed link (padding +inf), as the fabric shapes them."""
    tree = exp.tree
    rates = kind_rates_mbit(tree, scale, time_scale)
    cap = np.array([rates[tree.link_kind(i)] for i in range(tree.n_links)] + [np.inf])
    return cap


def background_load(exp: Experiment, actions: list[Action], scale: float, time_scale: float) -> BackgroundLoad:
    """Peak over the evaluated window of the background flows' emulated traffic, in Mbit/s x
    bridges crossed: at every instant where the set of running flows changes (before the last
    arrival), the flows' max-min fair rates on the emulated link rates (greedy flows fill their
    bottleneck, paced ones their rate), each times the bridges on its path (links - 1: ToR,
    aggregation, core switches, the server's NVLink switch). KV transfers are not counted (at the
    default scale they are a small share). Link capacity changes are ignored (they only lower it)."""
    tree = exp.tree
    cap = _emulated_capacity_mbit(exp, scale, time_scale)
    end = exp.run_s
    running: dict[str | None, tuple[int, int, float]] = {}  # by flow_id
    memo: dict[tuple, float] = {}
    best = BackgroundLoad(0.0, 0, 0.0)
    flows = [a for a in actions if a.kind in ("flow_start", "flow_stop")]
    k = 0
    while k < len(flows) and flows[k].time_s <= end:
        t = flows[k].time_s
        while k < len(flows) and flows[k].time_s == t:
            a = flows[k]
            if a.kind == "flow_start" and a.src != a.dst:
                assert a.src is not None and a.dst is not None  # a validated scenario's flow_start
                rate = np.inf if a.rate_gbit_s is None else emulated_mbit(a.rate_gbit_s, scale, time_scale)
                running[a.flow_id] = (int(a.src), int(a.dst), rate)
            elif a.kind == "flow_stop":
                running.pop(a.flow_id, None)
            k += 1
        key = tuple(sorted(running.values()))  # bursts repeat the same sets: compute each once
        load = memo.get(key)
        if load is None:
            load = memo[key] = _load(tree, list(key), cap)
        if load > best.peak_mbit_bridges:
            best = BackgroundLoad(load, len(running), t)
    return best


def _load(tree, flows: list[tuple[int, int, float]], cap: np.ndarray) -> float:
    if not flows:
        return 0.0
    paths = np.stack([tree.paths(s, np.array([d]))[0] for s, d, _ in flows])
    rates = max_min_rates(paths, cap, np.array([r for _, _, r in flows]), tree.pad)
    bridges = (paths != tree.pad).sum(axis=1) - 1
    return float(np.sum(rates * bridges))


def topology_problems(exp: Experiment) -> list[str]:
    """One line per topology option the emulated fabric does not build."""
    c = exp.cfg.topology
    out = []
    if c.kind != "fat-tree":
        out.append(f"topology.kind={c.kind!r}: the emulated fabric (Mininet topology, addresses, the "
                   f"controller's routes) is built for fat-trees only; run the rail fabric with `netkv simulate` "
                   f"(docs/rail.md)")
    if c.intra_server != "nvlink":
        out.append(f"topology.intra_server={c.intra_server!r}: the emulated fabric carries same-server "
                   f"transfers on the server's NVLink switch (the hosts' NVLink addresses); run the NIC path "
                   f"with `netkv simulate`")
    return out


def check_emulable(exp: Experiment, scale: float, time_scale: float) -> BackgroundLoad:
    """Raise :class:`EmulationUnsupportedError` listing every reason the emulator cannot run
    ``exp`` faithfully at ``scale`` / ``time_scale``; else return the background-load estimate
    (for the run's fidelity block and its warning)."""
    fabric = topology_problems(exp)
    if fabric:  # nothing below applies to a fabric that is not built
        raise EmulationUnsupportedError("the emulator cannot run this experiment faithfully: " + "; ".join(fabric))
    actions = exp.actions()
    problems = (tp_problems(exp) + perfect_oracle_problems(exp) + link_down_problems(exp, actions)
                + layer_wise_problems(exp, scale))
    load = background_load(exp, actions, scale, time_scale)
    if load.fraction > BACKGROUND_REJECT_FRACTION:
        problems.append(
            f"scenario '{exp.scenario.name}': its background flows ({load.peak_flows} at {load.peak_at_s:.3g} s) "
            f"would carry {load.peak_mbit_bridges:.0f} Mbit/s x bridges at --scale {scale:g} / --time-scale "
            f"{time_scale:g}, over the userspace datapath's forwarding budget of about "
            f"{FORWARDING_BUDGET_MBIT_BRIDGES:.0f} (one core): transfer times would be the emulator's; raise "
            f"--time-scale (or lower --scale) by x{load.fraction / BACKGROUND_WARN_FRACTION:.1f} or more")
    if problems:
        raise EmulationUnsupportedError("the emulator cannot run this experiment faithfully: "
                                        + "; ".join(problems))
    return load


def background_warning(load: BackgroundLoad) -> str | None:
    """A line for the run's output when the background load is high but accepted."""
    if load.fraction <= BACKGROUND_WARN_FRACTION:
        return None
    return (f"the scenario's background traffic peaks at {load.peak_mbit_bridges:.0f} Mbit/s x bridges, "
            f"{100 * load.fraction:.0f}% of the userspace datapath's forwarding budget (~"
            f"{FORWARDING_BUDGET_MBIT_BRIDGES:.0f}); watch the probe RTT and transfer_agreement below, and "
            f"raise --time-scale if they drift")
