"""A scenario file's parameters and events, checked against a :class:`FatTree`.

:func:`check_event` validates one ``[[event]]`` table (keys, numbers, ``$param`` references,
host and link names against the tree) into the event :mod:`scheduler.model.scenario` expands into
actions; :func:`gpu_pairs` and :func:`link_changes` give an event's GPU pairs and link capacity
changes. The file format is in :mod:`scheduler.model.scenario`'s docstring. Every problem is a
:class:`ScenarioError` naming the file and the field.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from topology.model import FatTree, TopologyError

_SHAPE_KEYS = ("pods", "tors_per_pod", "servers_per_tor", "gpus_per_server", "aggs_per_pod", "cores")
"""Fields of ``topology`` a scenario's ``written_for`` may pin."""
_EVENT_KEYS = {
    "flow": ({"kind", "src", "dst"}, {"at", "rate_gbit_s", "duration"}),
    "link": ({"kind", "link"}, {"at", "factor", "capacity_gbit_s", "state", "duration"}),
    "burst": ({"kind", "src", "dst", "period", "duty"}, {"at", "rate_gbit_s", "until"}),
}
"""Per event kind: (required keys, optional keys)."""
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
RUN_PARAM = "run_s"
"""Built-in parameter: the run's last arrival time, known only when actions are expanded."""


class ScenarioError(ValueError):
    """A scenario file, name, parameter or event is invalid; the message names file and field."""


@dataclass(frozen=True)
class RunScaled:
    """A numeric field that is ``offset + coef x run_s``; resolved by :meth:`Scenario.actions`."""

    coef: float
    offset: float = 0.0

    def at(self, run_s: float) -> float:
        return self.offset + self.coef * run_s


def resolve(value, run_s: float):
    """``value``, a :class:`RunScaled` one at a run of ``run_s`` seconds."""
    return value.at(run_s) if isinstance(value, RunScaled) else value


def check_shape(written_for: object, tree: FatTree, file: str) -> None:
    """Refuse a scenario on a fabric other than the one its events are written for: its host
    and link names exist on a larger tree too, but cover another share of it (a "every core link"
    scenario on 8 pods loads half of them). ``written_for.kind`` (default ``fat-tree``) is the
    fabric kind: a fat-tree scenario's hosts exist on a rail fabric of the same shape, but its
    flows cross other switches there (no ToR, aggregation or core), so it is refused."""
    if written_for is None:
        return
    if not isinstance(written_for, dict) or not written_for:
        raise ScenarioError(f"{file}: written_for: must be a table of topology fields, e.g. {{ pods = 4 }}")
    unknown = set(written_for) - set(_SHAPE_KEYS) - {"kind"}
    if unknown:
        raise ScenarioError(f"{file}: written_for: unknown field(s) {sorted(unknown)} "
                            f"(known: kind, {', '.join(_SHAPE_KEYS)})")
    kind = written_for.get("kind", "fat-tree")
    if kind != tree.config.kind:
        raise ScenarioError(
            f"{file}: written for a {kind} fabric (written_for.kind, default fat-tree); this run has "
            f"topology.kind={tree.config.kind}. Its events name hosts and links of that fabric: here they would "
            f"cross other switches than its description says. Write a scenario for this fabric "
            f"(written_for = {{ kind = \"{tree.config.kind}\", ... }}; docs/rail.md), or run an unwritten-for one "
            f"such as idle.")
    want = {k: written_for[k] for k in _SHAPE_KEYS if k in written_for}
    have = {k: getattr(tree.config, k) for k in want}
    if want != have:
        diff = ", ".join(f"topology.{k}={have[k]} (written for {want[k]})" for k in want if want[k] != have[k])
        raise ScenarioError(
            f"{file}: written for the {kind} {', '.join(f'{k}={v}' for k, v in want.items())}; this run has {diff}. "
            f"Its events name hosts and links of that shape: on this tree they would load another share of the "
            f"fabric than its description says. Write a scenario for this shape (docs/EXTENDING.md).")


def is_number(x: object) -> bool:
    """An int or a float (a TOML number), not a bool."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_params(table: object, overrides: dict, file: str) -> dict[str, float]:
    """The ``[params]`` table with ``overrides`` applied, every value a finite float."""
    if not isinstance(table, dict):
        raise ScenarioError(f"{file}: params: must be a table of numbers")
    params: dict[str, float] = {}
    for key, value in table.items():
        if not _PARAM_NAME.match(key):
            raise ScenarioError(f"{file}: params.{key}: parameter names are identifiers (letters, digits, _)")
        if key == RUN_PARAM:
            raise ScenarioError(f"{file}: params.{key}: '{RUN_PARAM}' is built in (the run's last arrival time)")
        if not is_number(value) or not math.isfinite(value):
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
    if not is_number(value) or not math.isfinite(value):
        raise ScenarioError(f"{where}.{key}: must be a number or a \"$param\" reference, got {value!r}")
    return float(value)


def _value(x: float | RunScaled) -> float:
    """The number a sign check compares: a run-scaled value at a one-second run (its sign for any
    run when both parts share it)."""
    return x.at(1.0) if isinstance(x, RunScaled) else x


def _names(ev: dict, key: str, where: str) -> list[str]:
    value = ev[key]
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(x, str) for x in names):
        raise ScenarioError(f"{where}.{key}: must be a name or a non-empty list of names, got {value!r}")
    return list(names)


def check_event(ev: dict, params: dict[str, float], tree: FatTree, where: str) -> dict:
    """One ``[[event]]`` table validated against ``tree``, parameters substituted and defaults
    filled (hosts and links kept as names); ``where`` names it in errors."""
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
    out["at"] = at = 0.0 if at is None else at
    if _value(at) < 0:
        raise ScenarioError(f"{where}.at: must be >= 0 seconds, got {_value(at):g}")
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
        if period is None or duty is None:  # both required of a burst (checked above)
            raise ScenarioError(f"{where}: a 'burst' event needs period and duty")
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
        link_changes(out, tree, where)  # validates names and capacities against the tree
    else:
        gpu_pairs(out, tree, where)  # validates host names and pairing against the tree
    return out


def gpu_pairs(ev: dict, tree: FatTree, where: str) -> list[tuple[int, int]]:
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
            f"names look like {tree.sample_fabric_link()})"
        ) from None


def link_changes(ev: dict, tree: FatTree, where: str) -> list[tuple[tuple[int, ...], float]]:
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
