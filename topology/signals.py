"""Stop signals while a fabric runs: turned into exceptions, so every ``with`` block unwinds and tears
down what it made, and blocked during the teardown itself."""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from topology.cleanup import StopSignal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals that tear a running fabric down instead of killing its owner: Ctrl-C, ``kill``, and the
hang-up a dropped SSH session sends to ``sudo netkv emulate``."""

SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
"""What ``signal.signal`` returns and accepts: a handler, ``SIG_DFL``/``SIG_IGN``, or None."""


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise StopSignal(signum)


class StopSignalHandlers:
    """Our handlers for :data:`STOP_SIGNALS` (main thread only; elsewhere nothing happens)."""

    def __init__(self) -> None:
        self._old: dict[int, SignalHandler] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            self._old[sig] = signal.signal(sig, _on_signal)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def mask_stop_signals() -> bool:
    """Block the stop signals during teardown so a second Ctrl-C cannot leave half a fabric;
    returns whether they were blocked (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
    return True


def unmask_stop_signals(masked: bool) -> None:
    if masked:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(STOP_SIGNALS))
