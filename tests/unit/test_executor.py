"""The executor seam (scheduler/study/executor.py): parsing ``--executor``, the missing-Ray message,
and a sweep run through a fake executor that finishes its runs in reverse order."""
from __future__ import annotations

import importlib.util

import pytest

from scheduler.results.files import dumps_json
from scheduler.study import executor as ex
from scheduler.study import sweep as sw
from scripts.same_results import _strip


class ReversedExecutor(ex.Executor):
    """Runs every item inline but yields the results last-first (runs finishing out of order), and
    records what it was given and how it was left."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.exit_exc: type[BaseException] | None = None
        self.fail_after = fail_after

    def map(self, fn, items, progress=None):
        items = list(items)
        self.calls.append((fn.__name__, len(items)))
        for i, result in enumerate(reversed([fn(x) for x in items])):
            if self.fail_after is not None and i >= self.fail_after:
                raise KeyboardInterrupt
            if progress:
                progress.update()
            yield result

    def __exit__(self, exc_type, exc, tb) -> None:
        self.exit_exc = exc_type


@pytest.mark.parametrize("text,spec", [("local", ex.ExecutorSpec("local")), ("ray", ex.ExecutorSpec("ray")),
                                       ("ray=auto", ex.ExecutorSpec("ray", "auto")),
                                       ("ray=ray://head:10001", ex.ExecutorSpec("ray", "ray://head:10001"))])
def test_executor_specs_parse(text, spec):
    assert ex.parse_executor(text) == spec


@pytest.mark.parametrize("text", ["", "dask", "ray=", "local=x", "rays"])
def test_bad_executor_specs_name_the_option(text):
    with pytest.raises(ex.ExecutorError, match="--executor"):
        ex.parse_executor(text)


def test_missing_ray_fails_naming_the_setup_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ex.ExecutorError, match=r"scripts/setup\.sh --ray"):
        ex.make_executor("ray", 2)
    ex.check_available(ex.ExecutorSpec("local"))  # the local pool needs nothing


def small_sweep() -> sw.Sweep:
    return sw.Sweep("rate-scale", [1.0, 2.0], [0, 1], sw.Base(policies="cache-load,netkv", max_requests=40, tune=False))


def test_a_sweep_through_another_executor_gives_the_local_results():
    sweep = small_sweep()
    fake = ReversedExecutor()
    via_fake = sw.run(sweep, progress=False, executor=fake)
    local = sw.run(sweep, jobs=1, progress=False)
    assert fake.calls == [("run_point", 4)] and fake.exit_exc is None
    assert set(via_fake) == {(v, s) for v in sweep.values for s in sweep.seeds}
    for key, policies in local.items():  # same points, same policies, same figures (wall time aside)
        for name, summary in policies.items():
            assert dumps_json(_strip(summary)) == dumps_json(_strip(via_fake[key][name])), (key, name)


def test_an_interrupted_sweep_leaves_the_executor_on_the_exception():
    fake = ReversedExecutor(fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        sw.run(small_sweep(), progress=False, executor=fake)
    assert fake.exit_exc is KeyboardInterrupt  # the executor is told, so it cancels what is outstanding
