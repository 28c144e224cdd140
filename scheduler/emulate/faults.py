"""Component faults injected into every policy's replay at the same virtual time (``emulate --fault``).

``controller@T[+D]``: the Ryu controller is killed (SIGKILL, no goodbye) T virtual seconds into
the replay and started again D seconds later (default :data:`DEFAULT_CONTROLLER_OUTAGE_S`). The
switches keep forwarding on the flows they hold (fail-mode secure); telemetry stops, so the
telemetry oracles see their newest snapshot age and, beyond ``oracle.fallback_polls`` poll
intervals, answer as the static oracle (counted in the summary's ``telemetry_fallback``) until
telemetry returns. The summary's ``faults`` block has what happened and when.

``agent:HOST@T``: the agent of serving GPU host HOST (a prefill or decode instance) is killed
(SIGKILL) T seconds into the replay. Its requests fail, and so does every later request the policy
sends to it (the front end has no health checks: :mod:`scheduler.emulate.replay`); the summary's
``failed_requests`` counts them. The agent is started again (and its connections re-opened)
before the next policy's replay, so every policy meets the same fault.
"""
from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_CONTROLLER_OUTAGE_S = 5.0
"""Virtual seconds the controller stays down when ``--fault controller@T`` gives no ``+D``: ten
poll intervals, long enough for every oracle to notice, short against a replay."""

_CONTROLLER_RE = re.compile(r"^controller@(?P<at>[0-9.eE+-]+?)(?:\+(?P<dur>[0-9.eE+-]+))?$")
_AGENT_RE = re.compile(r"^agent:(?P<host>[A-Za-z0-9]+)@(?P<at>[0-9.eE+-]+)$")


class FaultSpecError(ValueError):
    """A ``--fault`` value that does not parse or asks for a fault that cannot be injected; the
    message quotes it."""


@dataclass(frozen=True)
class Fault:
    """One fault: ``kind`` ("controller" or "agent"), when (virtual s into the replay), for how
    long (the controller; an agent stays down for the rest of the replay) and which ``host``."""

    kind: str
    at_s: float
    duration_s: float = 0.0
    host: str | None = None

    def describe(self) -> str:
        if self.kind == "agent":
            return f"agent of {self.host} killed at {self.at_s:g} s"
        return f"{self.kind} down at {self.at_s:g} s for {self.duration_s:g} s"


def parse_fault(text: str) -> Fault:
    """``controller@T``, ``controller@T+D`` or ``agent:HOST@T`` (virtual seconds); FaultSpecError
    otherwise (whether HOST serves is checked against the placement by :func:`check_faults`)."""
    spec = text.strip()
    m = _AGENT_RE.match(spec)
    if m is not None:
        try:
            at = float(m.group("at"))
        except ValueError:
            raise FaultSpecError(f"--fault {text!r}: T must be a number") from None
        if not at >= 0:
            raise FaultSpecError(f"--fault {text!r}: needs T >= 0, got {at:g}")
        return Fault("agent", at, 0.0, m.group("host"))
    m = _CONTROLLER_RE.match(spec)
    if m is None:
        raise FaultSpecError(f"--fault {text!r}: expected controller@T, controller@T+D or agent:HOST@T (virtual "
                             f"seconds into the replay, e.g. controller@20+5, agent:p1t1s0g0@10)")
    try:
        at = float(m.group("at"))
        dur = DEFAULT_CONTROLLER_OUTAGE_S if m.group("dur") is None else float(m.group("dur"))
    except ValueError:
        raise FaultSpecError(f"--fault {text!r}: T and D must be numbers") from None
    if not at >= 0 or not dur > 0:
        raise FaultSpecError(f"--fault {text!r}: needs T >= 0 and D > 0, got T={at:g}, D={dur:g}")
    return Fault("controller", at, dur)


def check_faults(faults: list[Fault], run_s: float, serving: dict[str, str] | None = None) -> None:
    """Faults must start within the replay, controller outages must not overlap, and an agent
    fault must name a serving host (``serving``: host -> "prefill" / "decode"), once."""
    spans = sorted((f.at_s, f.at_s + f.duration_s, f.describe()) for f in faults if f.kind == "controller")
    for f in faults:
        if f.at_s >= run_s:
            raise FaultSpecError(f"--fault {f.describe()}: the replay's last arrival is at {run_s:.3g} s; "
                                 f"a fault after it would change nothing")
        if f.kind == "agent" and serving is not None and f.host not in serving:
            raise FaultSpecError(f"--fault agent:{f.host}@{f.at_s:g}: {f.host} runs no agent (not a prefill or decode "
                                 f"instance of this placement; e.g. {', '.join(sorted(serving)[:3])})")
    hosts = [f.host for f in faults if f.kind == "agent"]
    if len(hosts) != len(set(hosts)):
        raise FaultSpecError("--fault: an agent can be killed once per replay")
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise FaultSpecError(f"--fault: {a} overlaps {b}")


class FaultInjector:
    """Runs ``faults`` on the fabric along one replay's :class:`~scheduler.emulate.replay.Clock` (a
    thread per kind, started before the replay; times count once the clock starts); :meth:`stop`
    joins them and returns what happened, one entry per fault (virtual times; errors named, not raised)."""

    def __init__(self, fab: Any, faults: list[Fault], clock: Any, log: Callable[[str], Any] = print,
                 kill_agent: Callable[[str], None] | None = None) -> None:
        self.fab, self.faults, self.clock, self.log = fab, faults, clock, log
        self.kill_agent = kill_agent
        self.killed: set[str] = set()
        """Hosts whose agent this injector killed (marked before the kill: the replay reads it)."""
        self.events: list[dict] = []
        self.reroutes_before: list[dict] = []
        """The controller's reroute history, read just before each kill (a new process starts empty)."""
        self._stop = threading.Event()
        # one thread per kind: an agent fault is not held up by a controller restart in progress
        self._threads = [threading.Thread(target=self._run, args=(kind,), name=f"fault-injector-{kind}", daemon=True)
                         for kind in ("controller", "agent") if any(f.kind == kind for f in faults)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def now(self) -> float:
        return self.clock.now() if self.clock.started else float("-inf")

    def _wait_until(self, t: float) -> bool:
        """Sleep until virtual time ``t`` of the replay's clock (not started yet: -inf)."""
        while not self._stop.is_set():
            left = t - self.now()
            if left <= 0:
                return True
            self._stop.wait(min(left * self.clock.time_scale, 0.1))
        return False

    def _run(self, kind: str) -> None:
        for f in sorted((f for f in self.faults if f.kind == kind), key=lambda f: f.at_s):
            if not self._wait_until(f.at_s):
                return
            if f.kind == "agent":
                self._agent(f)
                continue
            ev = {"kind": f.kind, "planned_at_s": f.at_s, "planned_duration_s": f.duration_s,
                  "down_at_s": None, "restarted_at_s": None, "ready_at_s": None, "error": None}
            self.events.append(ev)
            try:
                try:
                    self.reroutes_before += self.fab.controller.status(timeout_s=1.0).get("reroutes", [])
                except Exception:
                    pass
                self.fab.crash_controller()
                ev["down_at_s"] = round(self.now(), 3)
                self.log(f"emulate: fault: controller killed at {ev['down_at_s']:.1f} s")
                self._wait_until(f.at_s + f.duration_s)  # restarted even when the replay ends first
                ev["restarted_at_s"] = round(self.now(), 3)
                self.fab.recover_controller()
                ev["ready_at_s"] = round(self.now(), 3)
                self.log(f"emulate: fault: controller back with every switch's routes at {ev['ready_at_s']:.1f} s")
            except Exception as exc:
                ev["error"] = f"{type(exc).__name__}: {exc}"

    def _agent(self, f: Fault) -> None:
        ev = {"kind": "agent", "host": f.host, "planned_at_s": f.at_s, "down_at_s": None, "error": None}
        self.events.append(ev)
        try:
            if self.kill_agent is None:
                raise RuntimeError("no agent to kill in this run")
            if f.host is None:
                raise RuntimeError("an agent fault without a host")  # parse_fault always gives one
            self.killed.add(f.host)
            self.kill_agent(f.host)
            ev["down_at_s"] = round(self.now(), 3)
            self.log(f"emulate: fault: agent of {f.host} killed at {ev['down_at_s']:.1f} s")
        except Exception as exc:
            ev["error"] = f"{type(exc).__name__}: {exc}"

    def lost(self) -> frozenset[str]:
        return frozenset(self.killed)

    def stop(self) -> list[dict]:
        """Finish the fault in progress (a killed controller is always started again), then stop."""
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=120)
        ctl = [e for e in self.events if e["kind"] == "controller"]
        if ctl:
            ev = ctl[-1]
            if ev["down_at_s"] is not None and ev["ready_at_s"] is None and ev["error"] is None:
                try:
                    self.fab.recover_controller()
                    ev["ready_at_s"] = round(self.now(), 3)
                except Exception as exc:
                    ev["error"] = f"{type(exc).__name__}: {exc}"
        return sorted(self.events, key=lambda e: e["planned_at_s"])


def fallback_summary(oracle: Any) -> dict | None:
    """The telemetry oracle's static-pricing spells (telemetry stopped), or None (never, or no
    telemetry oracle)."""
    spells = getattr(oracle, "stale_spells", None)
    if not spells:
        return None
    return {"decisions": int(oracle.stale_decisions), "spells": len(spells),
            "first_s": round(spells[0][0], 3), "last_s": round(spells[-1][1], 3),
            "after_age_s": oracle.fallback_age_s}
