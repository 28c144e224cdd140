"""Errors shared across layers: raised in :mod:`topology`, by the controller and by the scheduler."""
from __future__ import annotations


class FabricError(RuntimeError):
    """The fabric could not be built, checked or torn down; the message says what and why."""


class FabricBusyError(FabricError):
    """Another live process owns a running fabric (see the state file)."""


class UnknownLinkError(KeyError, ValueError):
    """A name is not a directed link of the model (names look like ``'p0t0->p0a1'``).

    One class for the controller's lookups by name (a KeyError) and the scheduler's telemetry
    payloads (malformed input: a ValueError, as the payload's other format errors)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""
