"""Scheduler-side view of link telemetry, shared by the simulator and the emulator.

A :class:`TelemetrySnapshot` holds per directed link arrays aligned to the model's link indices
(length ``tree.n_links + 1``; the last entry is the padding link of path arrays), so an oracle can
index them with ``tree.paths(...)`` directly. :func:`snapshot_from_json` converts the controller's
REST payload (DESIGN.md schema); :class:`TelemetryHistory` answers "what did the scheduler know
at time t" for the staleness experiments. The simulator's sampler is
:class:`scheduler.sim.telemetry.SimTelemetry`.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np

from topology.errors import UnknownLinkError  # raised here for links a payload names; one class with the controller's
from topology.model import FatTree


class TelemetryFormatError(ValueError):
    """A telemetry payload does not follow the DESIGN.md schema; the message says where."""


@dataclass
class TelemetrySnapshot:
    """Link state at ``time_s``. ``utilisation``: 0..1 per directed link, padding 0.
    ``capacity_factor``: fraction of nominal capacity available (1.0 nominal, 0 down), padding 1."""

    time_s: float
    utilisation: np.ndarray
    capacity_factor: np.ndarray

    @classmethod
    def idle(cls, tree: FatTree, time_s: float = 0.0) -> TelemetrySnapshot:
        """All links idle at nominal capacity (what a scheduler knows before any poll)."""
        return cls(time_s, np.zeros(tree.n_links + 1), np.ones(tree.n_links + 1))


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise TelemetryFormatError(f"{where} must be a number, got {value!r}")
    return float(value)


def snapshot_from_json(
    tree: FatTree, payload: dict, nominal_capacity_bps: dict[str, float] | None = None
) -> TelemetrySnapshot:
    """Convert a ``/netkv/telemetry`` payload into arrays aligned to ``tree``'s link indices.

    ``capacity_factor`` = payload ``capacity_bps`` / nominal capacity, clamped to 0..1; the
    nominal default is the model's real capacity in bits/s, so an emulator reporting scaled
    capacities must pass its scaled nominal ones. Links absent from the payload, or never
    measured (``sample_time`` null), count as idle; absent links keep nominal capacity."""
    if not isinstance(payload, dict) or "links" not in payload or "time" not in payload:
        raise TelemetryFormatError("telemetry payload must be an object with 'time' and 'links'")
    if payload["time"] is None:
        raise TelemetryFormatError("telemetry payload has no poll yet ('time' is null)")
    time_s = _number(payload["time"], "payload 'time'")
    links = payload["links"]
    if not isinstance(links, dict):
        raise TelemetryFormatError("payload 'links' must be an object keyed by link name")
    util = np.zeros(tree.n_links + 1)
    factor = np.ones(tree.n_links + 1)
    nominal = nominal_capacity_bps or {}
    for name, entry in links.items():
        u, sep, v = str(name).partition("->")
        idx = tree.link_index.get((u, v)) if sep else None
        if idx is None:
            raise UnknownLinkError(
                f"telemetry names unknown link {name!r} (not a directed link of this "
                f"{tree.n_gpus}-GPU fat-tree; names look like 'p0t0->p0a1')"
            )
        if not isinstance(entry, dict):
            raise TelemetryFormatError(f"entry of link {name} must be an object, got {entry!r}")
        try:
            cap = _number(entry["capacity_bps"], f"link {name} 'capacity_bps'")
            utilisation = _number(entry["utilisation"], f"link {name} 'utilisation'")
        except KeyError as exc:
            raise TelemetryFormatError(f"link {name} lacks field {exc.args[0]!r}") from None
        nom = float(nominal.get(name, tree.capacity[idx] * 8.0))
        if not nom > 0:
            raise TelemetryFormatError(f"nominal capacity of link {name} must be > 0, got {nom}")
        factor[idx] = min(1.0, max(0.0, cap / nom))
        if entry.get("sample_time") is not None:
            util[idx] = min(1.0, max(0.0, utilisation))
    return TelemetrySnapshot(time_s=time_s, utilisation=util, capacity_factor=factor)


class TelemetryHistory:
    """Snapshots in time order, bounded in age: ``at(t)`` keeps answering for every
    ``t >= newest - max_age_s`` (the newest snapshot at or before that cut-off is kept too)."""

    def __init__(self, max_age_s: float = 60.0) -> None:
        if not max_age_s >= 0:
            raise ValueError(f"max_age_s must be >= 0, got {max_age_s}")
        self.max_age_s = float(max_age_s)
        self._times: list[float] = []
        self._snaps: list[TelemetrySnapshot] = []

    def __len__(self) -> int:
        return len(self._snaps)

    def add(self, snapshot: TelemetrySnapshot) -> None:
        """Insert in time order (a snapshot with an existing time replaces it), then drop those
        no longer needed to answer ``at(t)`` for ``t >= newest - max_age_s``."""
        t = float(snapshot.time_s)
        i = bisect.bisect_left(self._times, t)
        if i < len(self._times) and self._times[i] == t:
            self._snaps[i] = snapshot
        else:
            self._times.insert(i, t)
            self._snaps.insert(i, snapshot)
        cut = bisect.bisect_right(self._times, self._times[-1] - self.max_age_s) - 1
        if cut > 0:
            del self._times[:cut]
            del self._snaps[:cut]

    def at(self, time_s: float) -> TelemetrySnapshot | None:
        """Newest snapshot with ``time_s`` <= the given time; None if all kept ones are newer."""
        i = bisect.bisect_right(self._times, time_s)
        return self._snaps[i - 1] if i else None

    def latest(self) -> TelemetrySnapshot | None:
        return self._snaps[-1] if self._snaps else None
