"""Congestion scenarios: one backend-neutral TOML format of timed network events.

The flow-level simulator executes a scenario now, the Mininet emulator later; both consume the
same :class:`Action` list from :meth:`Scenario.actions`. Host and link names are the topology
model's (``p0t1s0g3`` GPUs; directed links ``"p0t0->p0a1"`` as ``FatTree.link_name``, and
``"p0t0<->p0a1"`` for both directions).

File format::

    name = "hotspot"                  # optional, defaults to the file name without .toml
    description = "one line"          # required: shown by `netkv scenarios`
    written_for = { pods = 4 }        # optional: the fat-tree shape (topology.* fields) the events
                                      #   are written for; on another shape the run is refused,
                                      #   since the same host names would mean another traffic pattern
    [params]                          # optional numeric defaults, overridable from the CLI;
    period = 2.0                      # referenced as "$period" in any numeric event field,
                                      #   or in a sum of products ("$offset + 0.5 * $period"); the built-in
                                      #   "$run_s" is the run's last arrival time, so
                                      #   at = "0.3 * $run_s" means 30% into whichever window runs

    [[event]]
    kind = "flow"                     # background flow(s) between GPU hosts
    at = 0.0                          # start, seconds from run start (default 0)
    src = "p1t0s0g0"                  # a host or a list; lists pair up src[i] -> dst[i],
    dst = ["p2t0s0g0", "p3t0s0g0"]    #   one host against a list is one-to-many / many-to-one
    rate_gbit_s = 100.0               # optional: omit for greedy (max-min fair share)
    duration = 30.0                   # optional: omit for "until the end of the run"

    [[event]]
    kind = "link"                     # capacity change of one or more links
    at = 10.0
    link = "p1a0<->c0"                # a link or a list of links
    factor = 0.25                     # exactly one of: factor (of nominal, 0..1),
                                      #   capacity_gbit_s, state = "down" | "up"
    duration = 5.0                    # optional: back to nominal capacity after this long

    [[event]]
    kind = "burst"                    # on/off flows: on for duty*period, off for the rest,
    src = "p1t0s0g0"                  #   repeating from `at` until `until` or the end of the run
    dst = "p2t0s0g0"
    period = "$period"                # > 0
    duty = 0.5                        # in (0, 1]
    rate_gbit_s = 100.0               # optional (greedy if omitted)
    until = 60.0                      # optional, > at

A link event with ``state = "down"`` (or a capacity of 0) is a failure: the routing moves traffic
off the link ``topology.reroute_delay_s`` later, and back once it is up again (a reduced capacity
is not a failure and reroutes nothing). Actions that end something (a flow's stop, a link's
return to nominal capacity) are kept even after the horizon, so an outage always ends.

Every problem is a :class:`ScenarioError` naming the file and the field, e.g.
``hotspot.toml: event[3].src: unknown GPU host 'p9t0s0g0' ...``.
"""
from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from scheduler.paths import SCENARIOS_DIR
from topology.model import FatTree, TopologyError

BUILTIN_DIR = SCENARIOS_DIR
"""Built-in scenarios: ``<repo>/scenarios/<name>.toml``."""

_TOP_KEYS = {"name", "description", "params", "event", "written_for"}
_SHAPE_KEYS = ("pods", "tors_per_pod", "servers_per_tor", "gpus_per_server", "aggs_per_pod", "cores")
"""Fields of ``topology`` a scenario's ``written_for`` may pin."""
_EVENT_KEYS = {
    "flow": ({"kind", "src", "dst"}, {"at", "rate_gbit_s", "duration"}),
    "link": ({"kind", "link"}, {"at", "factor", "capacity_gbit_s", "state", "duration"}),
    "burst": ({"kind", "src", "dst", "period", "duty"}, {"at", "rate_gbit_s", "until"}),
}
"""Per event kind: (required keys, optional keys)."""
MAX_BURST_FLOWS = 1_000_000
"""Upper bound on the flows one burst event may expand to before the horizon (cycles x pairs):
a guard against a typo such as period = 0.0001 over an hour-long run, which no backend could run."""
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PARAM_REF = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
RUN_PARAM = "run_s"
"""Built-in parameter: the run's last arrival time, known only when actions are expanded."""
_KIND_ORDER = {"flow_stop": 0, "link_capacity": 1, "flow_start": 2}
"""Order of actions at the same instant: stopped flows free capacity before capacity changes,
and both happen before new flows start (so a burst with duty 1 hands over cleanly)."""


class ScenarioError(ValueError):
    """A scenario file, name, parameter or event is invalid; the message names file and field."""


@dataclass(frozen=True)
class RunScaled:
    """A numeric field that is ``offset + coef x run_s``; resolved by :meth:`Scenario.actions`."""

    coef: float
    offset: float = 0.0

    def at(self, run_s: float) -> float:
        return self.offset + self.coef * run_s


def _resolve(value, run_s: float):
    return value.at(run_s) if isinstance(value, RunScaled) else value


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
        return [(i, t) for i, ev in enumerate(self.events) if (t := _resolve(ev["at"], run_s)) >= horizon_s]

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
            ev = {k: _resolve(v, run) for k, v in raw.items()}
            if ev["kind"] in ("flow", "burst"):
                pairs = _pairs(ev, tree, where)
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
                for links, factor in _link_changes(ev, tree, where):
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
        values = {k: v for k, v in params.items() if _is_number(v)} if isinstance(params, dict) else {}
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
    _check_shape(raw.get("written_for"), tree, file)
    params = _params(raw.get("params", {}), overrides or {}, file)
    events = raw.get("event", [])
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise ScenarioError(f"{file}: event: must be an array of tables ([[event]])")
    checked = [_check_event(ev, params, tree, f"{file}: event[{i}]") for i, ev in enumerate(events)]
    return Scenario(name, _render(desc, params), params, checked, str(path), _read_text(path))


def _check_shape(written_for: object, tree: FatTree, file: str) -> None:
    """Refuse a scenario on a fat-tree other than the one its events are written for: its host
    and link names exist on a larger tree too, but cover another share of it (a "every core link"
    scenario on 8 pods loads half of them)."""
    if written_for is None:
        return
    if not isinstance(written_for, dict) or not written_for:
        raise ScenarioError(f"{file}: written_for: must be a table of topology fields, e.g. {{ pods = 4 }}")
    unknown = set(written_for) - set(_SHAPE_KEYS)
    if unknown:
        raise ScenarioError(f"{file}: written_for: unknown field(s) {sorted(unknown)} (known: {', '.join(_SHAPE_KEYS)})")
    want = {k: written_for[k] for k in _SHAPE_KEYS if k in written_for}
    have = {k: getattr(tree.config, k) for k in want}
    if want != have:
        diff = ", ".join(f"topology.{k}={have[k]} (written for {want[k]})" for k in want if want[k] != have[k])
        raise ScenarioError(
            f"{file}: written for the fat-tree {', '.join(f'{k}={v}' for k, v in want.items())}; this run has {diff}. "
            f"Its events name hosts and links of that shape: on this tree they would load another share of the "
            f"fabric than its description says. Write a scenario for this shape (docs/EXTENDING.md).")


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


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _params(table: object, overrides: dict, file: str) -> dict[str, float]:
    if not isinstance(table, dict):
        raise ScenarioError(f"{file}: params: must be a table of numbers")
    params: dict[str, float] = {}
    for key, value in table.items():
        if not _PARAM_NAME.match(key):
            raise ScenarioError(f"{file}: params.{key}: parameter names are identifiers (letters, digits, _)")
        if key == RUN_PARAM:
            raise ScenarioError(f"{file}: params.{key}: '{RUN_PARAM}' is built in (the run's last arrival time)")
        if not _is_number(value) or not math.isfinite(value):
            raise ScenarioError(f"{file}: params.{key}: must be a finite number, got {value!r}")
        params[key] = float(value)
    for key, value in overrides.items():
        if key not in params:
            known = ", ".join(sorted(params)) or "none"
            raise ScenarioError(
                f"{file}: unknown scenario parameter {key!r} (this scenario's parameters: {known})"
            )
        try:
            num = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            num = math.nan
        if not math.isfinite(num):
            raise ScenarioError(f"{file}: parameter {key}: override must be a finite number, got {value!r}")
        params[key] = num
    return params


def _number(ev: dict, key: str, params: dict[str, float], where: str) -> float | RunScaled | None:
    """Numeric field ``key`` of ``ev`` with parameter references resolved; None when absent. A
    string is a product of numbers and ``$param`` references (``"$period"``, ``"0.5 * $period"``);
    one that names ``$run_s`` stays a :class:`RunScaled` until the run's length is known."""
    if key not in ev:
        return None
    value = ev[key]
    if isinstance(value, str) and "$" in value:
        const, per_run = 0.0, 0.0
        for product in value.split("+"):
            coef, scaled = 1.0, False
            for term in product.split("*"):
                term = term.strip()
                if term.startswith("$"):
                    ref = term[1:]
                    if ref == RUN_PARAM and not scaled:
                        scaled = True
                    elif ref in params:
                        coef *= params[ref]
                    else:
                        known = ", ".join(sorted(params) + [RUN_PARAM])
                        raise ScenarioError(f"{where}.{key}: unknown parameter reference {term!r} in {value!r} "
                                            f"(parameters: {known})")
                else:
                    try:
                        coef *= float(term)
                    except ValueError:
                        raise ScenarioError(f"{where}.{key}: {value!r} is not a sum of products of numbers and "
                                            f"\"$param\" references (e.g. \"$offset + 0.5 * $period\")") from None
            if scaled:
                per_run += coef
            else:
                const += coef
        if not (math.isfinite(const) and math.isfinite(per_run)):
            raise ScenarioError(f"{where}.{key}: {value!r} is not finite")
        return RunScaled(per_run, const) if per_run else const
    if not _is_number(value) or not math.isfinite(value):
        raise ScenarioError(f"{where}.{key}: must be a number or a \"$param\" reference, got {value!r}")
    return float(value)


def _value(x: float | RunScaled | None) -> float | None:
    """The number a sign check compares: a run-scaled value at a one-second run (its sign for any
    run when both parts share it)."""
    return x.at(1.0) if isinstance(x, RunScaled) else x


def _names(ev: dict, key: str, where: str) -> list[str]:
    value = ev[key]
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(x, str) for x in names):
        raise ScenarioError(f"{where}.{key}: must be a name or a non-empty list of names, got {value!r}")
    return list(names)


def _check_event(ev: dict, params: dict[str, float], tree: FatTree, where: str) -> dict:
    kind = ev.get("kind")
    if kind not in _EVENT_KEYS:
        raise ScenarioError(f"{where}.kind: must be one of {sorted(_EVENT_KEYS)}, got {kind!r}")
    required, optional = _EVENT_KEYS[kind]
    missing = required - set(ev)
    if missing:
        needs = sorted(required - {"kind"})
        raise ScenarioError(f"{where}.{sorted(missing)[0]}: missing (a {kind!r} event needs {needs})")
    unknown = set(ev) - required - optional
    if unknown:
        allowed = sorted((required | optional) - {"kind"})
        raise ScenarioError(f"{where}.{sorted(unknown)[0]}: unknown key for a {kind!r} event (allowed: {allowed})")
    out: dict = {"kind": kind}
    at = _number(ev, "at", params, where)
    out["at"] = 0.0 if at is None else at
    if _value(out["at"]) < 0:
        raise ScenarioError(f"{where}.at: must be >= 0 seconds, got {_value(out['at']):g}")
    if kind in ("flow", "burst"):
        out["src"], out["dst"] = _names(ev, "src", where), _names(ev, "dst", where)
        rate = _number(ev, "rate_gbit_s", params, where)
        if isinstance(rate, RunScaled):
            raise ScenarioError(f"{where}.rate_gbit_s: a rate cannot scale with $run_s")
        if rate is not None and rate <= 0:
            raise ScenarioError(f"{where}.rate_gbit_s: must be > 0 (omit it for a greedy flow), got {rate:g}")
        out["rate_gbit_s"] = rate
    if kind in ("flow", "link"):
        duration = _number(ev, "duration", params, where)
        if duration is not None and _value(duration) <= 0:
            raise ScenarioError(f"{where}.duration: must be > 0 seconds, got {_value(duration):g}")
        out["duration"] = duration
    if kind == "burst":
        period, duty = _number(ev, "period", params, where), _number(ev, "duty", params, where)
        if isinstance(duty, RunScaled):
            raise ScenarioError(f"{where}.duty: a duty cycle cannot scale with $run_s")
        if _value(period) <= 0:
            raise ScenarioError(f"{where}.period: must be > 0 seconds, got {_value(period):g}")
        if not 0 < duty <= 1:
            raise ScenarioError(f"{where}.duty: must be in (0, 1], got {duty:g}")
        until = _number(ev, "until", params, where)
        if until is not None and not isinstance(until, RunScaled) and not isinstance(out["at"], RunScaled) \
                and until <= out["at"]:
            raise ScenarioError(f"{where}.until: must be after at ({out['at']:g} s), got {until:g}")
        out.update(period=period, duty=duty, until=until)
    if kind == "link":
        out["link"] = _names(ev, "link", where)
        given = [k for k in ("factor", "capacity_gbit_s", "state") if k in ev]
        if len(given) != 1:
            raise ScenarioError(
                f"{where}.factor: give exactly one of factor, capacity_gbit_s, state (got {given or 'none'})"
            )
        if "state" in ev:
            if ev["state"] not in ("down", "up"):
                raise ScenarioError(f"{where}.state: must be \"down\" or \"up\", got {ev['state']!r}")
            out["factor"], out["capacity_gbit_s"] = (0.0 if ev["state"] == "down" else 1.0), None
        else:
            out["factor"] = _number(ev, "factor", params, where)
            out["capacity_gbit_s"] = _number(ev, "capacity_gbit_s", params, where)
            for k in ("factor", "capacity_gbit_s"):
                if isinstance(out[k], RunScaled):
                    raise ScenarioError(f"{where}.{k}: a capacity cannot scale with $run_s")
            if out["factor"] is not None and not 0 <= out["factor"] <= 1:
                raise ScenarioError(
                    f"{where}.factor: must be in [0, 1] of nominal capacity, got {out['factor']:g}"
                )
            if out["capacity_gbit_s"] is not None and out["capacity_gbit_s"] < 0:
                raise ScenarioError(f"{where}.capacity_gbit_s: must be >= 0, got {out['capacity_gbit_s']:g}")
        _link_changes(out, tree, where)  # validates names and capacities against the tree
    else:
        _pairs(out, tree, where)  # validates host names and pairing against the tree
    return out


def _pairs(ev: dict, tree: FatTree, where: str) -> list[tuple[int, int]]:
    """(src, dst) GPU index pairs of a flow or burst event."""
    idx = {}
    for key in ("src", "dst"):
        try:
            idx[key] = [tree.gpu_index(n) for n in ev[key]]
        except TopologyError as e:
            raise ScenarioError(f"{where}.{key}: {e}") from None
    src, dst = idx["src"], idx["dst"]
    if len(src) == 1:
        src = src * len(dst)
    elif len(dst) == 1:
        dst = dst * len(src)
    elif len(src) != len(dst):
        raise ScenarioError(
            f"{where}.dst: {len(src)} sources and {len(dst)} destinations: lists pair up index by index, "
            "so give equal lengths (or one host on either side)"
        )
    for s, d in zip(src, dst):
        if s == d:
            raise ScenarioError(f"{where}.dst: a flow from {tree.gpu_name(s)} to itself")
    return list(zip(src, dst))


def _link_indices(name: str, tree: FatTree, where: str) -> list[int]:
    both = "<->" in name
    parts = name.split("<->") if both else name.split("->")
    if len(parts) != 2 or not all(parts):
        raise ScenarioError(f"{where}.link: {name!r} is not 'a->b' or 'a<->b'")
    u, v = (p.strip() for p in parts)
    ends = [(u, v), (v, u)] if both else [(u, v)]
    try:
        return [tree.link_index[e] for e in ends]
    except KeyError:
        raise ScenarioError(
            f"{where}.link: unknown link {name!r} (no directed link {u}->{v} or {v}->{u} in this fabric; "
            f"names look like {tree.link_name(tree.b_tor_agg)})"
        ) from None


def _link_changes(ev: dict, tree: FatTree, where: str) -> list[tuple[tuple[int, ...], float]]:
    """(links, factor) groups of a link event; capacity_gbit_s becomes a per-link factor."""
    links = [i for name in ev["link"] for i in _link_indices(name, tree, where)]
    links = list(dict.fromkeys(links))  # a link named twice changes once
    if ev["capacity_gbit_s"] is None:
        return [(tuple(links), ev["factor"])]
    groups: dict[float, list[int]] = {}
    for i in links:
        nominal = tree.link_capacity_gbit_s[tree.link_kind(i)]
        if ev["capacity_gbit_s"] > nominal:
            raise ScenarioError(
                f"{where}.capacity_gbit_s: {ev['capacity_gbit_s']:g} exceeds the nominal {nominal:g} Gbit/s "
                f"of {tree.link_name(i)}"
            )
        groups.setdefault(ev["capacity_gbit_s"] / nominal, []).append(i)
    return [(tuple(ls), f) for f, ls in groups.items()]
