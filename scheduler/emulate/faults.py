"""Component faults injected into every policy's replay at the same virtual time (``emulate --fault``).

``controller@T[+D]``: the Ryu controller is killed (SIGKILL, no goodbye) T virtual seconds into
the replay and started again D seconds later (default :data:`DEFAULT_CONTROLLER_OUTAGE_S`). The
switches keep forwarding on the flows they hold (fail-mode secure); telemetry stops, so the
telemetry oracles see their newest snapshot age and, beyond ``oracle.fallback_polls`` poll
intervals, answer as the static oracle (counted in the summary's ``telemetry_fallback``) until
telemetry returns. The summary's ``faults`` block has what happened and when.

Agent faults (``agent:HOST@T``) are not built yet: they are refused with that reason.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Callable

DEFAULT_CONTROLLER_OUTAGE_S = 5.0
"""Virtual seconds the controller stays down when ``--fault controller@T`` gives no ``+D``: issue
10's test case (ten poll intervals: long enough for every oracle to notice, short against a replay)."""

_CONTROLLER_RE = re.compile(r"^controller@(?P<at>[0-9.eE+-]+?)(?:\+(?P<dur>[0-9.eE+-]+))?$")


class FaultSpecError(ValueError):
    """A ``--fault`` value that does not parse or asks for a fault that cannot be injected; the
    message quotes it."""


@dataclass(frozen=True)
class Fault:
    """One fault: ``kind`` ("controller"), when (virtual s into the replay) and for how long."""

    kind: str
    at_s: float
    duration_s: float

    def describe(self) -> str:
        return f"{self.kind} down at {self.at_s:g} s for {self.duration_s:g} s"


def parse_fault(text: str) -> Fault:
    """``controller@T`` or ``controller@T+D`` (virtual seconds); FaultSpecError otherwise."""
    spec = text.strip()
    if spec.startswith("agent:"):
        raise FaultSpecError(f"--fault {text!r}: agent faults are not built yet (an agent killed mid-replay needs the "
                             f"front end to take its instance out of the pool); only controller@T[+D] is available")
    m = _CONTROLLER_RE.match(spec)
    if m is None:
        raise FaultSpecError(f"--fault {text!r}: expected controller@T or controller@T+D (virtual seconds into the "
                             f"replay, e.g. controller@20+5)")
    try:
        at = float(m.group("at"))
        dur = DEFAULT_CONTROLLER_OUTAGE_S if m.group("dur") is None else float(m.group("dur"))
    except ValueError:
        raise FaultSpecError(f"--fault {text!r}: T and D must be numbers") from None
    if not at >= 0 or not dur > 0:
        raise FaultSpecError(f"--fault {text!r}: needs T >= 0 and D > 0, got T={at:g}, D={dur:g}")
    return Fault("controller", at, dur)


def check_faults(faults: list[Fault], run_s: float) -> None:
    """Faults must start within the replay and not overlap (one controller)."""
    spans = sorted((f.at_s, f.at_s + f.duration_s, f) for f in faults)
    for f in faults:
        if f.at_s >= run_s:
            raise FaultSpecError(f"--fault {f.kind}@{f.at_s:g}: the replay's last arrival is at {run_s:.3g} s; "
                                 f"a fault after it would change nothing")
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise FaultSpecError(f"--fault: {a.describe()} overlaps {b.describe()}")


class FaultInjector:
    """Runs ``faults`` on the fabric along one replay's :class:`~scheduler.emulate.replay.Clock` (a
    thread, started before the replay; times count once the clock starts); :meth:`stop` joins it
    and returns what happened, one entry per fault (virtual times; errors named, not raised)."""

    def __init__(self, fab: Any, faults: list[Fault], clock: Any, log: Callable[[str], Any] = print) -> None:
        self.fab, self.faults, self.clock, self.log = fab, faults, clock, log
        self.events: list[dict] = []
        self.reroutes_before: list[dict] = []
        """The controller's reroute history, read just before each kill (a new process starts empty)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-injector", daemon=True)

    def start(self) -> None:
        if self.faults:
            self._thread.start()

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

    def _run(self) -> None:
        for f in sorted(self.faults, key=lambda f: f.at_s):
            if not self._wait_until(f.at_s):
                return
            ev = {"kind": f.kind, "planned_at_s": f.at_s, "planned_duration_s": f.duration_s,
                  "down_at_s": None, "restarted_at_s": None, "ready_at_s": None, "error": None}
            self.events.append(ev)
            try:
                try:
                    self.reroutes_before += self.fab.controller.status(timeout_s=1.0).get("reroutes", [])
                except Exception:  # noqa: BLE001 - a controller already unreachable has nothing to give
                    pass
                self.fab.crash_controller()
                ev["down_at_s"] = round(self.now(), 3)
                self.log(f"emulate: fault: controller killed at {ev['down_at_s']:.1f} s")
                self._wait_until(f.at_s + f.duration_s)  # restarted even when the replay ends first
                ev["restarted_at_s"] = round(self.now(), 3)
                self.fab.recover_controller()
                ev["ready_at_s"] = round(self.now(), 3)
                self.log(f"emulate: fault: controller back with every switch's routes at {ev['ready_at_s']:.1f} s")
            except Exception as exc:  # noqa: BLE001 - reported in the summary and as a warning
                ev["error"] = f"{type(exc).__name__}: {exc}"

    def stop(self) -> list[dict]:
        """Finish the fault in progress (a killed controller is always started again), then stop."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=120)
            ev = self.events[-1] if self.events else None
            if ev is not None and ev["down_at_s"] is not None and ev["ready_at_s"] is None and ev["error"] is None:
                try:
                    self.fab.recover_controller()
                    ev["ready_at_s"] = round(self.now(), 3)
                except Exception as exc:  # noqa: BLE001
                    ev["error"] = f"{type(exc).__name__}: {exc}"
        return self.events


def fallback_summary(oracle: Any) -> dict | None:
    """The telemetry oracle's static-pricing spells (telemetry stopped), or None (never, or no
    telemetry oracle)."""
    spells = getattr(oracle, "stale_spells", None)
    if not spells:
        return None
    return {"decisions": int(oracle.stale_decisions), "spells": len(spells),
            "first_s": round(spells[0][0], 3), "last_s": round(spells[-1][1], 3),
            "after_age_s": oracle.fallback_age_s}
