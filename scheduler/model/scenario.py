"""Congestion scenarios: one backend-neutral TOML format of timed network events.

The flow-level simulator executes a scenario now, the Mininet emulator later; both consume the
same :class:`Action` list from :meth:`Scenario.actions`. Host and link names are the topology
model's (``p0t1s0g3`` GPUs; directed links ``"p0t0->p0a1"`` as ``FatTree.link_name``, and
``"p0t0<->p0a1"`` for both directions).

The file format, field by field, is in ``docs/scenario-format.md``.

A link event with ``state = "down"`` (or a capacity of 0) is a failure: the routing moves traffic
off the link ``topology.reroute_delay_s`` later, and back once it is up again (a reduced capacity
is not a failure and reroutes nothing). Actions that end something (a flow's stop, a link's
return to nominal capacity) are kept even after the horizon, so an outage always ends.

The checks of the parameters and of every event are in :mod:`scheduler.model.scenario_events`.
Every problem is a :class:`ScenarioError` naming the file and the field, e.g.
``hotspot.toml: event[3].src: unknown GPU host 'p9t0s0g0' ...``.
"""
from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from scheduler.model.scenario_events import (
    RunScaled,
    ScenarioError,
    check_event,
    check_params,
    check_shape,
    gpu_pairs,
    is_number,
    link_changes,
    resolve,
)
from scheduler.paths import SCENARIOS_DIR
from topology.model import FatTree

__all__ = ["BUILTIN_DIR", "CONTROL_SCENARIO", "MAIN_JOB_SCENARIO", "MAX_BURST_FLOWS", "Action", "RunScaled", "Scenario",
           "ScenarioError", "list_builtin", "load_scenario"]

BUILTIN_DIR = SCENARIOS_DIR
"""Built-in scenarios: ``<repo>/scenarios/<name>.toml``."""

MAIN_JOB_SCENARIO = "shared-cluster"
"""The main job's scenario (``netkv simulate`` without ``--scenario``): a shared cluster's tenant
load, storage bursts and a link flap, in phases, so that live network information matters in some
windows of the run and not in others (``scenarios/shared-cluster.toml`` gives each one's source)."""

CONTROL_SCENARIO = "idle"
"""The main job's control: the same trace window and policies on a quiet fabric, where network
information has nothing to buy; run beside :data:`MAIN_JOB_SCENARIO` unless ``--control none``."""

_TOP_KEYS = {"name", "description", "params", "event", "written_for"}
MAX_BURST_FLOWS = 1_000_000
"""Upper bound on the flows one burst event may expand to before the horizon (cycles x pairs):
a guard against a typo such as period = 0.0001 over an hour-long run, which no backend could run."""
_PARAM_REF = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_KIND_ORDER = {"flow_stop": 0, "link_capacity": 1, "flow_start": 2}
"""Order of actions at the same instant: stopped flows free capacity before capacity changes,
and both happen before new flows start (so a burst with duty 1 hands over cleanly)."""


@dataclass
class Action:
    """One timed instruction for a backend. ``src``/``dst`` are GPU indices of the flow's ends;
    ``rate_gbit_s`` None means greedy (max-min fair share); ``links`` are directed link indices
    of a ``link_capacity`` change and ``factor`` the new capacity as a fraction of nominal
    (0 = down, 1 = nominal)."""

    time_s: float
    kind: str  # "flow_start" | "flow_stop" | "link_capacity"
    flow_id: str | None = None
    src: int | None = None
    dst: int | None = None
    rate_gbit_s: float | None = None
    links: tuple[int, ...] = ()
    factor: float | None = None


@dataclass
class Scenario:
    """A validated scenario: ``params`` are the values after overrides, ``events`` the validated
    events with parameters substituted and defaults filled (hosts and links kept as names)."""

    name: str
    description: str
    params: dict[str, float]
    events: list[dict]
    source: str
    text: str = ""
    """The scenario file's contents as loaded (copied beside the results as ``scenario.toml``)."""

    def describe(self) -> dict:
        """Summary for summary.json and the CLI."""
        return {"name": self.name, "description": self.description, "params": dict(self.params),
                "source": self.source, "events": len(self.events)}

    def late_events(self, horizon_s: float, run_s: float) -> list[tuple[int, float]]:
        """(index, start) of the events that start at or after ``horizon_s``: they never run."""
        return [(i, t) for i, ev in enumerate(self.events) if (t := resolve(ev["at"], run_s)) >= horizon_s]

    def actions(self, tree: FatTree, horizon_s: float, run_s: float | None = None) -> list[Action]:
        """Expand the events into time-sorted actions before ``horizon_s``; ``run_s`` (the run's
        last arrival, default ``horizon_s``) resolves ``$run_s`` references.

        Starts and capacity changes at or after the horizon are dropped; stops and returns to
        nominal capacity are kept wherever they fall, so what started always ends; bursts stop
        repeating at the horizon. The order is deterministic: by time, then stop < capacity
        change < start, then file order.
        """
        file = Path(self.source).name
        if not horizon_s > 0 or not math.isfinite(horizon_s):
            raise ScenarioError(f"{file}: horizon must be a positive number of seconds, got {horizon_s!r}")
        run = horizon_s if run_s is None else float(run_s)
        out: list[Action] = []
        for i, raw in enumerate(self.events):
            where = f"{file}: event[{i}]"
            ev = {k: resolve(v, run) for k, v in raw.items()}
            if ev["kind"] in ("flow", "burst"):
                pairs = gpu_pairs(ev, tree, where)
            if ev["kind"] == "flow":
                start = ev["at"]
                stop = start + ev["duration"] if ev["duration"] is not None else math.inf
                for j, (s, d) in enumerate(pairs):
                    fid = f"e{i}.{j}"
                    out.append(Action(start, "flow_start", fid, s, d, ev["rate_gbit_s"]))
                    out.append(Action(stop, "flow_stop", fid, s, d))
            elif ev["kind"] == "burst":
                end = min(horizon_s, ev["until"] if ev["until"] is not None else math.inf)
                on = ev["duty"] * ev["period"]
                cycles = max(0, math.ceil((end - ev["at"]) / ev["period"]))
                if cycles * len(pairs) > MAX_BURST_FLOWS:
                    raise ScenarioError(
                        f"{where}.period: {cycles} cycles x {len(pairs)} flows before the {horizon_s:g} s horizon "
                        f"exceed {MAX_BURST_FLOWS} flows; use a longer period"
                    )
                k = 0
                while (start := ev["at"] + k * ev["period"]) < end:
                    stop = min(start + on, ev["until"] if ev["until"] is not None else math.inf)
                    for j, (s, d) in enumerate(pairs):
                        fid = f"e{i}.{j}#{k}"
                        out.append(Action(start, "flow_start", fid, s, d, ev["rate_gbit_s"]))
                        out.append(Action(stop, "flow_stop", fid, s, d))
                    k += 1
            else:
                for links, factor in link_changes(ev, tree, where):
                    out.append(Action(ev["at"], "link_capacity", links=links, factor=factor))
                    if ev["duration"] is not None:
                        out.append(Action(ev["at"] + ev["duration"], "link_capacity", links=links, factor=1.0))
        ends = ("flow_stop",)
        kept = [a for a in out if a.time_s < horizon_s or a.kind in ends
                or (a.kind == "link_capacity" and a.factor == 1.0 and math.isfinite(a.time_s))]
        kept = [a for a in kept if math.isfinite(a.time_s)]
        kept.sort(key=lambda a: (a.time_s, _KIND_ORDER[a.kind]))  # stable: file order within ties
        return kept


# ------------------------------------------------------------------------------ loading


def list_builtin() -> list[tuple[str, str]]:
    """(name, description) of every built-in scenario, sorted by name."""
    out = []
    for path in sorted(BUILTIN_DIR.glob("*.toml")):
        raw = _read_toml(path)
        desc = raw.get("description")
        params = raw.get("params")
        values = {k: v for k, v in params.items() if is_number(v)} if isinstance(params, dict) else {}
        out.append((path.stem, _render(desc, values) if isinstance(desc, str) else ""))
    return out


def _render(text: str, params: dict[str, float]) -> str:
    """``text`` with "$name" replaced by the parameter's value (unknown names left as they are)."""
    return _PARAM_REF.sub(lambda m: f"{params[m[1]]:g}" if m[1] in params else m[0], text.strip())


def load_scenario(name_or_path: str, tree: FatTree, overrides: dict[str, float] | None = None) -> Scenario:
    """Load and validate a scenario file, or a built-in by name, against ``tree``.

    ``overrides`` replace ``[params]`` defaults (numbers, or strings that parse as numbers, as
    the CLI's ``--scenario-param period=2`` gives them); an unknown parameter name is an error.
    """
    path = Path(name_or_path)
    if not path.is_file():
        if path.suffix == ".toml" or "/" in name_or_path or "\\" in name_or_path:
            raise ScenarioError(f"{name_or_path}: no such scenario file")
        path = BUILTIN_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            names = ", ".join(n for n, _ in list_builtin()) or "(none)"
            raise ScenarioError(f"unknown scenario {name_or_path!r}: not a file, and the built-ins are {names}")
    raw = _read_toml(path)
    file = path.name
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ScenarioError(f"{file}: unknown top-level key(s) {sorted(unknown)} (known: {sorted(_TOP_KEYS)})")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise ScenarioError(f"{file}: name: must be a non-empty string, got {name!r}")
    desc = raw.get("description")
    if not isinstance(desc, str) or not desc.strip():
        raise ScenarioError(f"{file}: description: required, a one-line string")
    check_shape(raw.get("written_for"), tree, file)
    params = check_params(raw.get("params", {}), overrides or {}, file)
    events = raw.get("event", [])
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise ScenarioError(f"{file}: event: must be an array of tables ([[event]])")
    checked = [check_event(ev, params, tree, f"{file}: event[{i}]") for i, ev in enumerate(events)]
    return Scenario(name, _render(desc, params), params, checked, str(path), _read_text(path))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path.name}: cannot read: {exc}") from None


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path.name}: invalid TOML: {e}") from None
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read scenario file: {e}") from None
