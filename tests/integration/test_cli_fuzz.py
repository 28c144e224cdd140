"""Randomised command lines: whatever a user types, `netkv` answers with an exit code and a
message, never a traceback, and never leaves a partial result folder.

The invocations run in-process (``scripts.netkv.main``), mixing valid and invalid values of every
experiment option on tiny traces and scenarios; the seed is fixed, so a failure reproduces.
"""
from __future__ import annotations

import json
import random
import shlex
from pathlib import Path

import pytest

from scripts import netkv

N_INVOCATIONS = 200
SEED = 20261201

TRACE_LINE = '{{"timestamp": {t}, "input_length": {n}, "output_length": 8, "hash_ids": [{a}, {b}]}}'


def _files(tmp: Path) -> dict[str, str]:
    good = tmp / "good.jsonl"
    lines = (TRACE_LINE.format(t=200 * i, n=600 + 40 * i, a=i % 3, b=100 + i) for i in range(16))
    good.write_text("\n".join(lines) + "\n")
    broken = tmp / "broken.jsonl"
    broken.write_text(TRACE_LINE.format(t=0, n=600, a=0, b=1) + "\n{not json\n")
    flap = tmp / "flap.toml"
    flap.write_text('description = "d"\n[params]\nperiod = 2.0\n[[event]]\nkind = "burst"\nsrc = "p0t1s1g0"\n'
                    'dst = "p0t1s0g0"\nperiod = "$period"\nduty = 0.5\n')
    bad_toml = tmp / "bad.toml"
    bad_toml.write_text('description = "d"\n[[event]]\nkind = "flow"\nsrc = "p9t0s0g0"\ndst = "p0t0s0g0"\n')
    full = tmp / "full"
    full.mkdir()
    (full / "x").write_text("taken")
    return {"good": str(good), "broken": str(broken), "flap": str(flap), "bad_toml": str(bad_toml),
            "full": str(full)}


def _choices(f: dict[str, str]) -> dict[str, list[list[str]]]:
    """Per option, the argument lists it may contribute (an empty list: option absent)."""
    return {
        "--max-requests": [["--max-requests", "6"], ["--max-requests", "12"], ["--max-requests", "0"],
                           ["--max-requests", "-3"], ["--max-requests", "x"]],
        "--policies": [[], ["--policies", "cache-load,netkv"], ["--policies", "netkv:static,netkv:inflight"],
                       ["--policies", "round-robin"], ["--policies", "bogus"], ["--policies", "round-robin:static"],
                       ["--policies", "netkv:bogus"], ["--policies", ""], ["--policies", "topology-filter,netkv"]],
        "--scenario": [[], ["--scenario", "decode-flap"], ["--scenario", "nic-failure"], ["--scenario", f["flap"]],
                       ["--scenario", f["bad_toml"]], ["--scenario", "nope"], ["--scenario", "/nope/x.toml"]],
        "--scenario-param": [[], ["--scenario-param", "period=3"], ["--scenario-param", "bogus=1"],
                             ["--scenario-param", "period=abc"], ["--scenario-param", "period"]],
        "--set": [[], ["--set", "topology.nic_gbit_s=200"], ["--set", "topology.pods=0"], ["--set", "bogus.x=1"],
                  ["--set", "oracle.staleness_s=-1"], ["--set", "cluster.placement=mixed"],
                  ["--set", "cluster.placement=nowhere"], ["--set", "timing.kv_streaming=layer-wise"],
                  ["--set", "tuning.tune_requests=4"], ["--set", "noequals"]],
        "--weight": [[], ["--weight", "netkv=0.1"], ["--weight", "netkv=-1"], ["--weight", "cache-load=abc"],
                     ["--weight", "round-robin=1"]],
        "--no-tune": [["--no-tune"], ["--no-tune"], ["--no-tune"], []],
        "--trace": [[], [], ["--trace", f["good"]], ["--trace", f["broken"]], ["--trace", "/nope.jsonl"]],
        "--rate-scale": [[], ["--rate-scale", "2"], ["--rate-scale", "0"], ["--rate-scale", "-1"],
                         ["--rate-scale", "nan"]],
        "--context-scale": [[], ["--context-scale", "0.5"], ["--context-scale", "0"], ["--context-scale", "1e9"]],
        "--target": [[], ["--target", "netkv"], ["--target", "cache-load"], ["--target", "bogus"]],
        "--oracle": [[], ["--oracle", "static"], ["--oracle", "perfect"], ["--oracle", "bogus"]],
        "--seed": [[], ["--seed", "3"], ["--seed", "x"]],
    }


def _invocation(rng: random.Random, f: dict[str, str], out: Path) -> list[str]:
    command = rng.choice(["simulate"] * 6 + ["sweep", "staleness", "scenarios", "constants", "bench", "nope"])
    if command in ("scenarios", "constants", "nope"):
        return [command, *rng.choice([[], ["--json"], ["--bogus"]])]
    if command == "bench":
        return ["bench", *rng.choice([["--trace", "/nope.jsonl"], ["--bogus"], ["--quick", "--trace", f["broken"]]])]
    argv = [command, "--no-progress"]
    for option, values in _choices(f).items():
        if rng.random() < 0.45 or option in ("--max-requests", "--no-tune"):
            argv += rng.choice(values)
    if "--max-requests" not in argv or rng.random() < 0.2:  # keep runs tiny even when the cap is bad
        argv += ["--max-requests", "6"]
    if command == "sweep":
        argv += rng.choice([["--param", "rate-scale", "--values", "1,2"], ["--param", "bogus.x", "--values", "1"],
                            ["--param", "topology.nic_gbit_s", "--values", "a,b"], ["--param", "rate-scale"]])
        argv += rng.choice([[], ["--seeds", "0,1"], ["--seeds", "x"], ["--jobs", "0"]])
    if command == "staleness":
        argv += rng.choice([[], ["--values", "0,1"], ["--values", "a"], ["--values", "-1"]])
        argv += ["--jobs", "1"]
    argv += rng.choice([["--out", str(out)], ["--out", str(out)], ["--out", f["full"]], ["--out", "/proc/nope/x"]])
    return argv


def test_randomised_invocations_no_traceback_no_partial_folder(tmp_path: Path, capsys) -> None:
    files = _files(tmp_path)
    rng = random.Random(SEED)
    runs = tmp_path / "runs"
    runs.mkdir()
    codes: dict[int, int] = {}
    for k in range(N_INVOCATIONS):
        out = runs / f"r{k}"
        argv = _invocation(rng, files, out)
        where = f"invocation {k}: netkv {shlex.join(argv)}"
        try:
            code = netkv.main(argv)
        except SystemExit as exc:  # argparse: usage errors, --help
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException as exc:
            pytest.fail(f"{where}: {type(exc).__name__}: {exc}")
        err = capsys.readouterr().err
        assert "Traceback" not in err, f"{where}\n{err}"
        assert code in (0, 1, 2), f"{where}: exit {code}\n{err}"
        if code != 0 and argv[0] not in ("scenarios", "constants", "bench"):
            assert err.strip(), f"{where}: exit {code} without a message"
        if out.exists():
            assert code == 0, f"{where}: exit {code} but {out} was written"
            assert (out / "summary.json").is_file(), f"{where}: {out} has no summary.json"
            json.loads((out / "summary.json").read_text())
        codes[code] = codes.get(code, 0) + 1
    leftovers = [p.name for p in runs.iterdir() if p.name.startswith(".")] + \
                [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"partial folders left: {leftovers}"
    assert sorted(p.name for p in Path(files["full"]).iterdir()) == ["x"]  # an existing folder is never touched
    # the mix really exercises both paths
    assert codes.get(0, 0) >= 10 and codes.get(2, 0) >= 50, codes


@pytest.mark.parametrize("command", [None, "simulate", "scenarios", "constants", "bench", "sweep", "report",
                                     "staleness", "plot", "compare", "emulate", "fabric"])
def test_every_help_works_and_shows_examples(command, capsys) -> None:
    """`netkv --help` and every subcommand's --help print (a '%' in a help string once broke the
    top-level one) with a description and, for subcommands, examples."""
    with pytest.raises(SystemExit) as exc:
        netkv.main(["--help"] if command is None else [command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: netkv")
    if command is not None:
        assert "examples:" in out and f"netkv {command}" in out.split("examples:")[1]
