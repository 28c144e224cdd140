"""Tests for the result folder (scheduler/results/files.py), its figures (plotting, figures, timeline,
heatmap), the text table (tables) and scheduler/progress.py.
(Over 400 lines: one file for the result folder and its figures, which a run writes together.)"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from scheduler import progress as progress_module
from scheduler.model.records import RequestRecord
from scheduler.progress import Progress
from scheduler.results import figures, heatmap, plotting, tables, timeline
from scheduler.results import files as resultfiles
from scheduler.results.files import RESULT_FILES, ResultsExistError, dumps_json, write_results
from scheduler.results.heatmap import heatmap_links, plot_link_heatmap
from scheduler.results.metrics import SloConfig, summarize_policy
from scheduler.results.plotting import TARGET_COLOUR, policy_colours
from scheduler.results.tables import format_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SLO = SloConfig(ttft_s=2.0, tbt_ms=100.0)
NAN = float("nan")


def rec(policy: str, req_id: int, ttft_s: float, tier: int, tbt_mean_ms: float = 40.0) -> RequestRecord:
    return RequestRecord(policy=policy, req_id=req_id, arrival_s=0.25 * req_id, input_tokens=12000,
                         output_tokens=200, prefill="g0", decode="g9", tier=tier, prefill_cached_tokens=512,
                         decode_cached_tokens=0, kv_bytes=10_000_000 * (tier + 1), queue_s=0.1,
                         prefill_s=0.8, transfer_s=0.01 * (tier + 1), decode_wait_s=0.0,
                         first_token_s=0.25 * req_id + ttft_s, ttft_s=ttft_s, tbt_mean_ms=tbt_mean_ms,
                         decision_us=12.5)


def make_records() -> dict[str, list[RequestRecord]]:
    rr = [rec("round_robin", i, 1.0 + 0.5 * i, tier=i % 4) for i in range(8)]
    # netkv: twice as fast; one single-token request whose TBT is NaN
    nk = [rec("netkv", i, 0.5 + 0.25 * i, tier=i % 2, tbt_mean_ms=NAN if i == 3 else 40.1) for i in range(8)]
    return {"round_robin": rr, "netkv": nk}


def make_summary(records: dict[str, list[RequestRecord]]) -> dict:
    return {"backend": "sim", "config": {"seed": 1, "missing": NAN},
            "policies": {name: summarize_policy(recs, SLO) for name, recs in records.items()}}


def _reject_constant(name: str) -> None:
    raise AssertionError(f"non-standard JSON constant {name}")


# -- write_results -------------------------------------------------------------------------------
def test_write_results_produces_all_files(tmp_path: Path) -> None:
    records = make_records()
    out = tmp_path / "run1"
    got = write_results(out, make_summary(records), records, SLO, extra_files={"trace_stats.txt": b"42\n"})
    assert got == out
    assert sorted(p.name for p in out.iterdir()) == sorted([*RESULT_FILES, "trace_stats.txt"])
    for name in RESULT_FILES:
        if name.endswith(".png"):
            data = (out / name).read_bytes()
            assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    assert (out / "trace_stats.txt").read_bytes() == b"42\n"
    # no temporary sibling left behind
    assert [p.name for p in tmp_path.iterdir()] == ["run1"]


def test_summary_json_is_strict_with_nan_as_null(tmp_path: Path) -> None:
    records = make_records()
    out = write_results(tmp_path / "r", make_summary(records), records, SLO)
    data = json.loads((out / "summary.json").read_text(), parse_constant=_reject_constant)
    assert data["backend"] == "sim"
    assert data["config"] == {"seed": 1, "missing": None}
    nk = data["policies"]["netkv"]
    assert nk["transfer_mean_s_by_tier"][2] is None  # no tier-2 transfer
    assert nk["tier_histogram"] == [4, 4, 0, 0]
    assert nk["ttft_mean_s"] == pytest.approx(0.5 + 0.25 * 3.5)
    assert "\n  " in (out / "summary.json").read_text()  # indented


def test_dumps_json_converts_numpy_and_infinities() -> None:
    text = dumps_json({"a": np.float64("nan"), "b": [np.int64(3), float("inf")], "c": (1.5, np.bool_(True))})
    assert json.loads(text, parse_constant=_reject_constant) == {"a": None, "b": [3, None], "c": [1.5, True]}


def test_requests_csv_rows_and_columns(tmp_path: Path) -> None:
    records = make_records()
    out = write_results(tmp_path / "r", make_summary(records), records, SLO)
    with (out / "requests.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == RequestRecord.columns()
    assert len(rows) == 16
    assert [r["policy"] for r in rows] == ["round_robin"] * 8 + ["netkv"] * 8
    row = rows[8 + 3]
    assert row["req_id"] == "3" and row["tier"] == "1"
    assert float(row["ttft_s"]) == pytest.approx(1.25, abs=1e-6)
    assert row["ttft_s"] == "1.250000"  # microsecond precision
    assert math.isnan(float(row["tbt_mean_ms"]))
    assert row["kv_bytes"] == "20000000"  # ints unchanged


def test_existing_empty_folder_is_accepted(tmp_path: Path) -> None:
    records = make_records()
    out = tmp_path / "r"
    out.mkdir()
    write_results(out, make_summary(records), records, SLO)
    assert (out / "summary.json").is_file()


def test_refuses_non_empty_folder(tmp_path: Path) -> None:
    records = make_records()
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(ResultsExistError, match="not empty"):
        write_results(out, make_summary(records), records, SLO)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["r"]


@pytest.mark.parametrize("exc", [RuntimeError("plot failed"), KeyboardInterrupt()])
def test_no_partial_folder_after_exception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           exc: BaseException) -> None:
    records = make_records()

    def boom(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr(figures, "_plot_slo_attainment", boom)
    with pytest.raises(type(exc)):
        write_results(tmp_path / "r", make_summary(records), records, SLO)
    assert list(tmp_path.iterdir()) == []


def test_rejects_inconsistent_input_before_writing(tmp_path: Path) -> None:
    records = make_records()
    with pytest.raises(ValueError, match="policy"):
        write_results(tmp_path / "a", {}, {"netkv": records["round_robin"]}, SLO)
    with pytest.raises(ValueError, match="plain"):
        write_results(tmp_path / "b", {}, records, SLO, extra_files={"../evil": b""})
    with pytest.raises(ValueError, match="collides"):
        write_results(tmp_path / "c", {}, records, SLO, extra_files={"summary.json": b"{}"})
    assert list(tmp_path.iterdir()) == []


def test_write_results_with_empty_policy(tmp_path: Path) -> None:
    records = {"netkv": [], "round_robin": make_records()["round_robin"]}
    out = write_results(tmp_path / "r", make_summary(records), records, SLO)
    assert all((out / name).is_file() for name in RESULT_FILES)


def test_policy_colours_target_fixed_and_distinct() -> None:
    a = policy_colours(["round_robin", "netkv", "cache_load"])
    b = policy_colours(["netkv", "cache_load"])
    assert a["netkv"] == b["netkv"] == TARGET_COLOUR
    assert len(set(a.values())) == 3
    assert TARGET_COLOUR not in policy_colours([f"p{i}" for i in range(20)]).values()


# -- heat map ------------------------------------------------------------------------------------
def test_link_heatmap_writes_png(tmp_path: Path) -> None:
    util = np.zeros((5, 3))
    util[2, 1] = 0.8
    util[0, 0] = NAN
    path = tmp_path / "heat.png"
    plot_link_heatmap(path, [0.0, 0.5, 1.0, 1.5, 2.0], ["a->b", "b->a", "a->c"], util)
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in tmp_path.iterdir()] == ["heat.png"]


def test_link_heatmap_validates_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        plot_link_heatmap(tmp_path / "h.png", [0.0, 1.0], ["a->b"], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="increasing"):
        plot_link_heatmap(tmp_path / "h.png", [1.0, 0.0], ["a->b"], np.zeros((2, 1)))


def test_heatmap_link_selection() -> None:
    assert list(heatmap_links(np.zeros((3, 5)))) == [0, 1, 2, 3, 4]  # few links: all shown
    many = np.full((4, heatmap.HEATMAP_MAX_LINKS + 10), 0.005)
    many[1, 7] = 0.5
    many[3, 60 - 3] = 0.02
    many[:, 2] = NAN
    assert list(heatmap_links(many)) == [7, 57]
    busy = np.tile(np.linspace(0.1, 0.9, 100), (2, 1))  # 100 links all above 1 %
    assert list(heatmap_links(busy)) == list(range(100 - heatmap.HEATMAP_MAX_LINKS, 100))


# -- format_table --------------------------------------------------------------------------------
def test_format_table_rows_and_comparison_lines() -> None:
    records = make_records()
    records["cache_load"] = [rec("cache_load", i, 0.25 + 0.25 * i, tier=0) for i in range(8)]
    text = format_table(make_summary(records))
    lines = text.splitlines()
    assert all(len(line) <= tables.TABLE_WIDTH for line in lines), max(lines, key=len)
    for name in ("round_robin", "netkv", "cache_load"):
        assert any(line.startswith(name + " ") for line in lines), name
    assert "backend: sim" in lines[0]
    # netkv mean TTFT 1.375 s vs round_robin 2.75 s and cache_load 1.125 s;
    # TTFT <= 2 s: netkv 7/8, round_robin 3/8, cache_load 8/8
    rr = next(line for line in lines if line.startswith("netkv vs round_robin:"))
    assert "mean TTFT -50.0%" in rr and "p99 TTFT -50.0%" in rr
    assert "SLO attainment +50.0 pp" in rr and "mean TBT +0.10 ms" in rr
    cl = next(line for line in lines if line.startswith("netkv vs cache_load:"))
    assert "mean TTFT +22.2%" in cl and "SLO attainment -12.5 pp" in cl
    assert "4/4/0/0" in text  # netkv tier histogram


def test_format_table_without_target_and_long_names() -> None:
    records = make_records()
    summary = make_summary({"round_robin": records["round_robin"]})
    summary["policies"]["shortest_queue"] = summary["policies"]["round_robin"]
    text = format_table(summary)
    assert " vs " not in text and "no 'netkv' policy" in text
    long = make_summary({"netkv": records["netkv"]})
    long["policies"]["a_very_long_baseline_policy_name"] = summarize_policy(records["round_robin"], SLO)
    lines = format_table(long).splitlines()
    vs = [line for line in lines if "netkv vs a_very_long" in line]
    wrapped = [line for line in lines if line.startswith("    SLO attainment")]
    assert len(vs) == 1 and len(wrapped) == 1
    assert len(vs[0]) <= tables.TABLE_WIDTH and len(wrapped[0]) <= tables.TABLE_WIDTH


# -- progress ------------------------------------------------------------------------------------
def test_progress_line_mode_prints_every_ten_percent() -> None:
    buf = io.StringIO()
    with Progress(total=200, label="netkv", stream=buf, tty=False) as bar:
        for _ in range(200):
            bar.update()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("netkv: ")
    assert lines[-1].startswith("netkv: 200/200 100.0%") and "ETA" in lines[-1]
    assert "\r" not in buf.getvalue()


def test_progress_tty_mode_draws_bar_and_ends_line() -> None:
    buf = io.StringIO()
    with Progress(total=10, label="replay", stream=buf, tty=True, min_interval_s=0.0) as bar:
        bar.update(4)
        bar.update(6)
    text = buf.getvalue()
    assert text.startswith("\r") and text.endswith("\n")
    assert "replay: [" in text and "10/10 100.0%" in text and "#" * 10 in text


def test_progress_unknown_total_and_disabled() -> None:
    buf = io.StringIO()
    with Progress(total=None, stream=buf, tty=False) as bar:
        bar.update(7)
    assert buf.getvalue().startswith("7 ") and "%" not in buf.getvalue()
    silent = io.StringIO()
    with Progress(total=5, stream=silent, tty=True, enabled=False) as bar:
        for _ in range(5):
            bar.update()
    assert silent.getvalue() == "" and bar.done == 5
    with pytest.raises(ValueError):
        Progress(total=-1)


def test_progress_update_is_cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replay calls update() once per request: in a tight loop it must read the clock only every
    few thousand calls and redraw at most every ``min_interval_s``, and still count every call.
    (A clock that advances 1 us per read stands in for a fast loop; no wall time is measured.)"""
    reads = []

    def clock() -> float:
        reads.append(None)
        return 1e-6 * len(reads)

    monkeypatch.setattr(progress_module, "time", SimpleNamespace(monotonic=clock))
    out = io.StringIO()
    n = 200_000
    with Progress(total=n, stream=out, tty=True) as bar:
        for _ in range(n):
            bar.update()
    assert bar.done == n
    assert len(reads) < n // 1000, f"{len(reads)} clock reads for {n} updates"
    assert out.getvalue().count("\r") <= 2 and f"{n}/{n} 100.0%" in out.getvalue()


# -- figures: formats, captions, styles ----------------------------------------------------------
CONFIG = {"scenario": {"name": "decode-flap", "params": {"period": 30.0}},
          "trace": {"source": "/data/mooncake/conversation_trace.jsonl", "evaluated": {"count": 8},
                    "rate_scale": 4.0, "context_scale": 1.0},
          "model": {"name": "llama-3-8b"}, "gpu": {"name": "h100-sxm"}, "topology": {"nic_gbit_s": 200.0},
          "cluster": {"placement": "by-rack"}, "oracle": {"kind": "inflight"}, "seed": 3}
CAPTION = ("simulate | scenario decode-flap (period=30) | trace conversation_trace.jsonl (8 requests, rate x4) | "
           "model llama-3-8b on h100-sxm | NIC 200 Gbit/s | placement by-rack | oracle inflight | seed 3")


def test_experiment_caption_names_every_field() -> None:
    assert plotting.experiment_caption({"backend": "simulate", "config": CONFIG}) == CAPTION
    assert plotting.experiment_caption({"config": {"seed": 1}}) == "seed 1"  # what is missing is left out
    assert plotting.experiment_caption({}) == ""


def _png_text(path: Path) -> dict[str, str]:
    from PIL import Image

    with Image.open(path) as im:
        return dict(im.text)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", plotting.FIGURE_FORMATS)
def test_figures_in_every_format_carry_the_experiment(tmp_path: Path, fmt: str) -> None:
    records = make_records()
    summary = {**make_summary(records), "backend": "simulate", "config": CONFIG}
    links = heatmap.LinkSeries(np.arange(1.0, 6.0), ["a->b", "b->a"], np.full((5, 2), 0.5), "test samples")
    out = write_results(tmp_path / "r", summary, records, SLO, fmt=fmt, spans=[(0.2, 1.0, "e0 flow")], links=links)
    names = plotting.figure_names(fmt, links=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(["summary.json", "requests.csv", resultfiles.LINK_CSV,
                                                            *names])
    magic = {"png": PNG_MAGIC, "pdf": b"%PDF", "svg": b"<?xml"}[fmt]
    for name in names:
        data = (out / name).read_bytes()
        assert data.startswith(magic), name
        if fmt == "png":
            assert _png_text(out / name)["Description"] == CAPTION, name
        elif fmt == "pdf":
            assert b"decode-flap" in data and b"/Title (" in data, name
        else:
            assert f"<dc:description>{CAPTION}</dc:description>" in data.decode(), name


@pytest.mark.slow
def test_render_figures_returns_titles_and_captions(tmp_path: Path) -> None:
    records = make_records()
    summary = {"backend": "simulate", "config": CONFIG}
    texts = figures.render_figures(tmp_path, records, SLO, summary, spans=[(0.5, 1.5, "e0 burst")])
    assert list(texts) == plotting.figure_names("png")
    assert all(t.caption == CAPTION for t in texts.values())
    assert texts["ttft_cdf.png"].title == "TTFT distribution per policy, and quantiles relative to netkv"
    assert texts["ttft_over_time.png"].title == "TTFT over time per policy, with the scenario's events"
    plain = figures.render_figures(tmp_path, {"round_robin": records["round_robin"]}, SLO, summary)
    assert plain["ttft_cdf.png"].title.endswith("body of the distribution")  # no target: the zoom panel
    assert plain["ttft_over_time.png"].title.endswith("(the scenario has no timed events)")
    with pytest.raises(ValueError, match="gif"):
        write_results(tmp_path / "x", {}, records, SLO, fmt="gif")
    assert not (tmp_path / "x").exists()


def test_policy_styles_tell_policies_apart_beyond_colour() -> None:
    names = ["round_robin", "netkv", "cache_load", "least_loaded"]
    styles = plotting.policy_styles(names)
    assert styles["netkv"]["linestyle"] == "-" and styles["netkv"]["color"] == TARGET_COLOUR
    dashes = [styles[n]["linestyle"] for n in names if n != "netkv"]
    assert len(set(map(str, dashes))) == 3 and "-" not in dashes
    # the target lies under the baselines, so a baseline on top of it stays visible
    assert all(styles[n]["zorder"] > styles["netkv"]["zorder"] for n in names if n != "netkv")


def test_intervals() -> None:
    lo, hi = figures.mean_interval([1.0, 2.0, 3.0, 4.0])
    half = figures.Z95 * np.std([1, 2, 3, 4], ddof=1) / 2.0
    assert (lo, hi) == pytest.approx((2.5 - half, 2.5 + half))
    assert all(math.isnan(v) for v in figures.mean_interval([1.0, NAN]))
    values = np.arange(1, 1001, dtype=float)  # p99 = 990: ranks 990 -+ 1.96 sqrt(9.9)
    assert figures.quantile_interval(values, 0.99) == (983.0, 997.0)
    assert figures.quantile_interval(values[:30], 0.99) == (28.0, 30.0)  # few values: up to the maximum
    assert all(math.isnan(v) for v in figures.quantile_interval([], 0.5))


def test_quantile_levels_stop_where_the_sample_does() -> None:
    assert figures.quantile_levels(30)[-1] == pytest.approx(0.96)
    assert figures.quantile_levels(1000)[-1] == pytest.approx(0.999)


def test_time_windows_resolve_spans_within_limits() -> None:
    assert timeline.time_windows(100.0, 10_000) == pytest.approx(4.0)  # a 25th of the run
    assert timeline.time_windows(100.0, 10_000, [(10.0, 16.0, "e0")]) == pytest.approx(3.0)  # half the span
    assert timeline.time_windows(100.0, 60) == pytest.approx(20.0)  # >= 12 requests per window
    x, y = timeline.windowed_mean([0.5, 1.5, 1.7, 3.9], [1.0, 2.0, 4.0, NAN], 1.0, 4.0)
    assert list(x) == [0.5, 1.5, 2.5, 3.5]
    assert y[0] == 1.0 and y[1] == 3.0 and math.isnan(y[2]) and math.isnan(y[3])


# -- scenario spans ------------------------------------------------------------------------------
def test_scenario_spans_from_builtin_scenarios() -> None:
    from scheduler.model.config import build_config
    from scheduler.model.scenario import load_scenario
    from topology.model import FatTree

    tree = FatTree(build_config().topology)
    sc = load_scenario("link-failure", tree)
    spans = timeline.scenario_spans(sc.actions(tree, 400.0, 100.0), 400.0, sc.events, tree.link_name)
    assert spans == [(0.0, 400.0, "e0 flow, 32 flows at 120 Gbit/s | 16 GPUs in 4 servers -> 16 GPUs in 4 servers"),
                     (30.0, 50.0, "link p1a0<->p1t1 down")]
    flap = load_scenario("decode-flap", tree)
    spans = timeline.scenario_spans(flap.actions(tree, 100.0, 100.0), 100.0, flap.events)
    e0 = [(a, b) for a, b, label in spans if label.startswith("e0 burst, 32 flows greedy")]
    # the 32 flows' union, per cycle; the last cycle's flows stop after the horizon, as they run
    assert e0 == [(0.7, 15.7), (30.7, 45.7), (60.7, 75.7), (90.7, 105.7)]
    assert "p0t1s1+p2t1s1 -> p0t1s0+p2t1s0" in spans[0][2]


def test_scenario_spans_merge_a_fast_burst() -> None:
    from scheduler.model.scenario import Action

    actions = []
    for k in range(timeline.MAX_SPANS_PER_EVENT + 1):
        actions += [Action(2.0 * k, "flow_start", f"e0.0#{k}", 0, 1),
                    Action(2.0 * k + 1, "flow_stop", f"e0.0#{k}", 0, 1)]
    spans = timeline.scenario_spans(actions, 10_000.0)
    assert len(spans) == 1
    start, end, label = spans[0]
    assert (start, end) == (0.0, 2.0 * timeline.MAX_SPANS_PER_EVENT + 1)
    assert label.endswith(f"[{timeline.MAX_SPANS_PER_EVENT + 1} on/off spans, drawn as one]")


# -- link series ---------------------------------------------------------------------------------
def test_link_series_binning_and_csv(tmp_path: Path) -> None:
    from scheduler.results.replot import read_link_series

    n = 2 * heatmap.MAX_HEATMAP_COLUMNS + 1
    times = 0.5 * np.arange(1, n + 1)
    util = np.zeros((n, 2))
    util[:, 1] = 1.0
    util[:4, 0] = [0.2, 0.4, 0.6, 0.8]
    binned = heatmap.LinkSeries(times, ["a->b", "b->a"], util, "polls").binned()
    assert len(binned.times_s) == math.ceil(n / 3) <= heatmap.MAX_HEATMAP_COLUMNS
    assert binned.utilisation[0].tolist() == pytest.approx([(0.2 + 0.4 + 0.6) / 3, 1.0])  # 3 polls a column
    assert binned.times_s[0] == pytest.approx(1.0) and "mean of 3 samples per column" in binned.source
    assert np.all(np.diff(binned.times_s) > 0)
    path = tmp_path / resultfiles.LINK_CSV
    path.write_bytes(binned.csv_bytes())
    back = read_link_series(path)
    assert back.link_names == ["a->b", "b->a"]
    assert np.allclose(back.utilisation, binned.utilisation, atol=1e-4)
    assert path.read_text().splitlines()[1].endswith(",0.4,1")  # compact: no trailing zeros


# -- summary.json of an experiment (both backends) -----------------------------------------------
SUMMARY_HEAD = ["kind", "backend", "provenance", "config", "policies", "comparison_target", "comparison", "ablation"]
SUMMARY_TAIL = ["scenario_spans", "link_utilisation"]
EMULATE_SECTIONS = ["fidelity", "calibration", "emulation", "simulate_reference", "agreement", "transfer_agreement",
                    "paired_transfer_agreement"]


def _small_experiment():
    from scheduler.model.config import build_config
    from scheduler.study.experiment import prepare

    return prepare(build_config(), None, "decode-flap", "round-robin,netkv", 8, 0, tune=False)


def _fake_run(exp) -> tuple[dict, dict[str, list[RequestRecord]]]:
    from scheduler.results.summary import policy_summary

    records = {spec.name: [dataclasses.replace(rec(spec.name, r.req_id, 0.5 + 0.1 * k, tier=k % 4),
                                               arrival_s=r.arrival_s) for r in exp.requests]
               for k, spec in enumerate(exp.policies)}
    policies = {name: policy_summary(recs, exp.slo(), {"load_weight": 1.0}, [], 0.1, after={"events": 3})
                for name, recs in records.items()}
    return policies, records


def test_policy_summary_orders_sections_and_drops_the_absent() -> None:
    from scheduler.results.summary import policy_summary

    recs = make_records()["netkv"]
    entry = policy_summary(recs, SLO, {"w": 1.0}, [{"weight": 1.0}], 1.5,
                           measured={"reroute": {"n": 1}, "faults": None},
                           after={"replay_lag_s": {"p50": 0.0}, "agreement": None, "oracle_error": {"n": 2}})
    metrics = list(summarize_policy(recs, SLO))
    assert list(entry) == [*metrics, "reroute", "params", "tuning", "wall_s", "replay_lag_s", "oracle_error"]
    assert entry["params"] == {"w": 1.0} and entry["wall_s"] == 1.5 and entry["reroute"] == {"n": 1}


def test_write_experiment_writes_the_simulate_folder(tmp_path: Path) -> None:
    from scheduler.results.summary import write_experiment

    exp, info = _small_experiment()
    policies, records = _fake_run(exp)
    links = heatmap.LinkSeries(np.array([0.0, 0.5]), [exp.tree.link_name(i) for i in range(exp.tree.n_links)],
                               np.zeros((2, exp.tree.n_links)), "polls")
    path, summary = write_experiment(tmp_path / "run", "simulate", exp, info, policies, records, target="netkv",
                                     provenance={"command": "test"}, links=links, link_policy="netkv")
    assert list(summary) == [*SUMMARY_HEAD, *SUMMARY_TAIL]
    assert summary["kind"] == summary["backend"] == "simulate" and summary["comparison_target"] == "netkv"
    assert summary["link_utilisation"] == {"policy": "netkv", "source": "polls", "file": resultfiles.LINK_CSV}
    assert summary["config"]["trace"] is info and summary["config"]["policies"] == ["round-robin", "netkv"]
    assert summary["scenario_spans"], "decode-flap's events are drawn"
    on_disk = json.loads((path / "summary.json").read_text())
    assert list(on_disk) == list(summary) and on_disk["policies"]["netkv"]["events"] == 3
    assert "round-robin" in on_disk["comparison"] and (path / resultfiles.LINK_CSV).exists()
    with (path / "requests.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 2 * len(exp.requests)


def test_write_emulation_keeps_the_emulate_sections(tmp_path: Path) -> None:
    from scheduler.emulate.results import TELEMETRY_SOURCE, write_emulation

    exp, info = _small_experiment()
    policies, records = _fake_run(exp)
    n = exp.tree.n_links
    ev = {"calibration": {"tiers": {"2": {"time_ratio": 1.1}}}, "fidelity": {"warning": None},
          "fabric": {"up_s": 1.0}, "hosts": {"agents": 8}, "simulate_reference": policies, "agreement": {},
          "transfer_agreement": {}, "paired_transfer_agreement": {"by_tier": {}}, "telemetry_csv": b"t,link\n",
          "telemetry_rows": [(0, 0, 10.0, np.zeros(n)), (0, 0, 10.0, np.ones(n)), (0, 0, 10.5, np.ones(n))],
          "oracle_rows": {}, "telemetry_path": {"source": "prometheus", "scrape_interval_s": 1.0},
          "settings": {"time_scale": 2.0, "derived_time_scale": True}, "fidelity_misses": ["tier 2: oracle error 17%"]}
    path, summary = write_emulation(tmp_path / "emu", exp, info, policies, records, ev, 2.5e-5, 2.0, target="netkv",
                                    provenance=None)
    assert list(summary) == [*SUMMARY_HEAD, *EMULATE_SECTIONS, *SUMMARY_TAIL]
    assert summary["emulation"] == {"scale": 2.5e-5, "time_scale": 2.0, "fabric": {"up_s": 1.0},
                                    "hosts": {"agents": 8}, "telemetry_path": ev["telemetry_path"],
                                    "settings": ev["settings"], "fidelity_misses": ev["fidelity_misses"]}
    assert summary["link_utilisation"] == {"source": TELEMETRY_SOURCE, "file": resultfiles.LINK_CSV}
    assert json.loads((path / "calibration.json").read_text()) == ev["calibration"]
    assert (path / "telemetry.csv").read_bytes() == b"t,link\n"
    link_rows = (path / resultfiles.LINK_CSV).read_text().splitlines()
    assert len(link_rows) == 1 + 2 and link_rows[-1].startswith("0.5")  # the poll that repeats a time is dropped


# -- netkv report --out --------------------------------------------------------------------------
def test_report_out_is_a_markdown_file_or_a_folder(tmp_path: Path) -> None:
    from scheduler.study.report import ReportError, report_paths

    assert report_paths(tmp_path / "doc.md") == (tmp_path / "doc.md", tmp_path / "doc")
    assert report_paths(tmp_path / "rep") == (tmp_path / "rep" / "results.md", tmp_path / "rep" / "results")
    (tmp_path / "made").mkdir()
    assert report_paths(tmp_path / "made") == (tmp_path / "made" / "results.md", tmp_path / "made" / "results")
    (tmp_path / "old.md").write_text("previous report\n")  # a report is regenerated in place
    assert report_paths(tmp_path / "old.md")[0] == tmp_path / "old.md"
    (tmp_path / "file").write_text("x")
    (tmp_path / "figs.md").write_text("x")
    (tmp_path / "figs").write_text("not a folder")
    for out, why in [(tmp_path / "file", "is not a folder"), (tmp_path / "figs.md", "where the figures go"),
                     (Path("/proc/netkv-nope.md"), "cannot write in /proc")]:
        with pytest.raises(ReportError, match=f"--out {out}: .*{why}"):
            report_paths(out)


def test_report_into_a_folder_writes_results_md_and_figures(tmp_path: Path, monkeypatch) -> None:
    """A folder (new or existing) gets results.md and results/ with the figures the markdown links."""
    from scheduler.study import report

    def render(plan, results, fig_dir, command, wall_s, fig_link):
        (fig_dir / "load.png").write_bytes(PNG_MAGIC)
        return f"![load]({fig_link}/load.png)\n"

    monkeypatch.setattr(report, "run_plan", lambda *a, **k: {})
    monkeypatch.setattr(report, "render", render)
    for out in (tmp_path / "rep", tmp_path / "rep", tmp_path / "other.md"):  # twice: a rerun replaces it
        md = report.generate(out, quick=True, progress=False, log=lambda m: None)
        link = md.read_text().split("(")[1].rstrip(")\n")
        assert (md.parent / link).read_bytes() == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "other.md", "rep"]
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["results", "results.md"]
