"""Where a study's independent runs execute: this machine's process pool, or a Ray cluster.

``netkv sweep``, ``netkv report`` and ``netkv staleness`` hand every run (a sweep point, a tuning
job, a matrix cell) to an :class:`Executor` and collect the results as they arrive. Every run is
deterministic, so the executor changes where and how fast, never what: the same seeds give the
same results on either one (wall-clock fields aside).

``--executor`` (:func:`parse_executor`): ``local`` (the default: a fork-based process pool, one
process per core), ``ray`` (a Ray instance started for the study on this machine, shut down at
its end) or ``ray=ADDRESS`` (an existing cluster: ``ray=auto`` or ``ray=ray://HEAD:10001``).
Ray is an optional extra (``scripts/setup.sh --ray``); asking for it without it installed fails
before any work (:func:`check_available`).

An executor is a context manager: leaving it on an exception (Ctrl-C included) cancels the runs
still outstanding and stops the workers it started; the callers write their result folder only
after every run returned, so an interrupted study leaves nothing behind.
"""
from __future__ import annotations

import importlib.util
import multiprocessing
import os
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from scheduler.progress import Progress

RAY_SETUP = "scripts/setup.sh --ray"
"""The command that installs the optional Ray extra (``pip install -e '.[ray]'`` into .venv)."""


class ExecutorError(ValueError):
    """``--executor`` is malformed or names an engine that is not installed; the message says why."""


@dataclass(frozen=True)
class ExecutorSpec:
    """A parsed ``--executor``: ``kind`` (local or ray) and, for ray, the cluster address
    (``None``: a local instance started for the study)."""

    kind: str
    address: str | None = None


def parse_executor(text: str) -> ExecutorSpec:
    """``--executor local|ray[=ADDRESS]`` parsed; raises :class:`ExecutorError` naming the option."""
    kind, sep, address = text.strip().partition("=")
    if kind == "local" and not sep:
        return ExecutorSpec("local")
    if kind == "ray" and not (sep and not address.strip()):
        return ExecutorSpec("ray", address.strip() or None)
    raise ExecutorError(f"--executor {text!r}: expected local, ray, or ray=ADDRESS (e.g. ray=auto, "
                        f"ray=ray://HEAD:10001)")


def check_available(spec: ExecutorSpec) -> None:
    """Raise :class:`ExecutorError` when ``spec`` needs an engine this environment lacks (checked
    before any work, so a study never half-runs)."""
    if spec.kind == "ray" and importlib.util.find_spec("ray") is None:
        raise ExecutorError(f"--executor {spec.kind}: Ray is not installed (an optional extra); install it with "
                            f"`{RAY_SETUP}`, or use --executor local")


class Executor(ABC):
    """Runs ``fn`` over items, results yielded as they arrive (in no particular order).

    Use as a context manager around every :meth:`map` of a study: leaving it normally releases
    the workers; leaving it on an exception cancels the outstanding runs first."""

    @abstractmethod
    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], progress: Progress | None = None) -> Iterator[Any]:
        """``fn(item)`` for every item, yielded as each finishes; ``progress.update()`` per result."""

    def __enter__(self) -> Executor:
        return self

    @abstractmethod
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Release the workers; on an exception, cancel what is still running first."""


def ignore_sigint() -> None:
    """Pool initializer: workers ignore Ctrl-C, the parent decides (it terminates the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class LocalPool(Executor):
    """This machine's fork-based process pool of ``processes`` workers; one process runs the items
    inline (no pool) unless ``inline_single`` is false."""

    def __init__(self, processes: int, inline_single: bool = True) -> None:
        self.processes = max(1, processes)
        self._pool: Any = None
        if self.processes > 1 or not inline_single:
            self._pool = multiprocessing.get_context("fork").Pool(self.processes, initializer=ignore_sigint)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], progress: Progress | None = None) -> Iterator[Any]:
        results = self._pool.imap_unordered(fn, items) if self._pool else map(fn, items)
        for result in results:
            if progress:
                progress.update()
            yield result

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._pool is None:
            return
        if exc_type is None:
            self._pool.close()
        else:
            self._pool.terminate()
        self._pool.join()


class RayExecutor(Executor):
    """Every item a Ray task (one CPU each). ``address`` ``None``: a local Ray instance of
    ``num_cpus`` CPUs started here and shut down on exit; otherwise the cluster at ``address``
    (``auto``, ``ray://HEAD:10001``), left running. If this process is already connected to Ray
    (a caller's ``ray.init``), that instance is used and left as it is."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        import ray

        self._ray = ray
        self._started = False
        self._pending: list[Any] = []
        if not ray.is_initialized():
            # A throwaway local instance: no dashboard, no usage report.
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            if address is None:
                ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
            self._started = True

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], progress: Progress | None = None) -> Iterator[Any]:
        ray = self._ray
        task = ray.remote(num_cpus=1, max_retries=0)(fn)
        self._pending = [task.remote(item) for item in items]
        while self._pending:
            done, self._pending = ray.wait(self._pending, num_returns=1)
            for ref in done:
                result = ray.get(ref)
                if progress:
                    progress.update()
                yield result

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        ray = self._ray
        try:
            if exc_type is not None:
                for ref in self._pending:
                    ray.cancel(ref, force=True)
            self._pending = []
        finally:
            if self._started:
                ray.shutdown()


def make_executor(spec: ExecutorSpec | str, processes: int, inline_single: bool = True) -> Executor:
    """The executor ``spec`` names (a string is parsed): ``processes`` workers for the local pool,
    CPUs for a local Ray instance (a cluster's own size otherwise)."""
    if isinstance(spec, str):
        spec = parse_executor(spec)
    check_available(spec)
    if spec.kind == "ray":
        return RayExecutor(spec.address, num_cpus=processes)
    return LocalPool(processes, inline_single)
