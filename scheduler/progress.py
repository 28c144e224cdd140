"""A tiny dependency-free progress indicator for long replays.

Usage::

    with Progress(total=len(trace), label="netkv") as bar:
        for req in trace:
            ...
            bar.update()

On a terminal (stderr is a TTY) it redraws one line with a bar at most ``1 / min_interval_s``
times per second; otherwise (logs, CI) it prints one plain line per 10 % of ``total`` (or one
line every ``log_interval_s`` when the total is unknown). ``update`` is a counter increment and a
countdown in the common case; the clock is read only every few calls, with the stride adapted so
the clock is consulted roughly every few milliseconds whatever the call rate.
"""
from __future__ import annotations

import math
import shutil
import sys
import time
from types import TracebackType
from typing import TextIO

_MAX_STRIDE = 4096
_CHECK_S = 0.005  # aim to read the clock about this often


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _fmt_rate(rate: float) -> str:
    if not math.isfinite(rate):
        return "-/s"
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if rate >= div:
            return f"{rate / div:.1f}{unit}/s"
    return f"{rate:.1f}/s"


class Progress:
    """Progress of ``total`` work items (``None`` if unknown), written to ``stream``.

    Parameters (defaults in brackets):
    ``total`` - number of items expected, ``None`` for unknown (no percent/ETA/bar).
    ``label`` [``""``] - text in front of the line.
    ``enabled`` [``True``] - ``False`` makes every method a no-op.
    ``stream`` [``sys.stderr``] - where to write.
    ``tty`` [``None``] - force bar mode (``True``) or line mode (``False``); ``None`` asks
    ``stream.isatty()``.
    ``min_interval_s`` [0.1] - minimum time between two redraws of the bar (about 10 per second).
    ``log_interval_s`` [10.0] - line mode with unknown total: seconds between lines.
    """

    def __init__(self, total: int | None, label: str = "", *, enabled: bool = True,
                 stream: TextIO | None = None, tty: bool | None = None,
                 min_interval_s: float = 0.1, log_interval_s: float = 10.0) -> None:
        if total is not None and total < 0:
            raise ValueError(f"Progress total must be >= 0 or None, got {total}")
        self.total = total
        self.label = label
        self.enabled = enabled
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self._stream, "isatty", None)
            tty = bool(isatty()) if callable(isatty) else False
        self._tty = tty
        self._min_interval_s = min_interval_s
        self._log_interval_s = log_interval_s
        self._start = time.monotonic()
        self._last_check = self._start
        self._last_draw = float("-inf")
        self._stride = 1
        self._countdown = 1
        self._next_decile = 1  # line mode: next multiple of 10 % to report
        self._last_len = 0
        self._closed = False

    # -- public API -------------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        """Record ``n`` more finished items. Cheap: reads the clock only every few calls."""
        self.done += n
        self._countdown -= n
        if self._countdown <= 0 and self.enabled:
            self._tick()

    def close(self) -> None:
        """Draw the final state and end the line. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        now = time.monotonic()
        if self._tty:
            self._draw(now)
            self._write("\n")
        elif self.total is None or self._next_decile <= 10 or self.done != self.total:
            self._write(self._line(now) + "\n")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------
    def _tick(self) -> None:
        now = time.monotonic()
        since = now - self._last_check
        self._last_check = now
        # Adapt the stride (in items) so the clock is read about every _CHECK_S seconds.
        if since < _CHECK_S and self._stride < _MAX_STRIDE:
            self._stride *= 2
        elif since > 4 * _CHECK_S and self._stride > 1:
            self._stride //= 2
        self._countdown = self._stride
        if not self._tty and self.total:  # never step over the next 10 % mark
            mark = -(-self._next_decile * self.total // 10)  # ceil
            self._countdown = max(1, min(self._stride, mark - self.done))
        if self._tty:
            if now - self._last_draw >= self._min_interval_s:
                self._draw(now)
        elif self.total:
            if self.done * 10 >= self._next_decile * self.total:
                self._next_decile = min(self.done * 10 // self.total, 10) + 1
                self._write(self._line(now) + "\n")
        elif now - self._last_draw >= self._log_interval_s:
            self._last_draw = now
            self._write(self._line(now) + "\n")

    def _line(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        head = f"{self.label}: " if self.label else ""
        if self.total:
            pct = 100.0 * self.done / self.total
            remaining = (self.total - self.done) / rate if rate > 0 else float("inf")
            return (f"{head}{self.done}/{self.total} {pct:5.1f}% {_fmt_rate(rate)} "
                    f"elapsed {_fmt_duration(elapsed)} ETA {_fmt_duration(max(remaining, 0.0))}")
        return f"{head}{self.done} {_fmt_rate(rate)} elapsed {_fmt_duration(elapsed)}"

    def _draw(self, now: float) -> None:
        self._last_draw = now
        text = self._line(now)
        if self.total:
            width = shutil.get_terminal_size((80, 24)).columns
            bar_w = max(10, min(40, width - len(text) - 4))
            frac = min(max(self.done / self.total, 0.0), 1.0)
            filled = int(frac * bar_w)
            head = f"{self.label}: " if self.label else ""
            text = head + "[" + "#" * filled + "." * (bar_w - filled) + "] " + text[len(head):]
        pad = " " * max(self._last_len - len(text), 0)
        self._last_len = len(text)
        self._write("\r" + text + pad)

    def _write(self, s: str) -> None:
        self._stream.write(s)
        self._stream.flush()
