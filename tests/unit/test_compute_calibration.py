"""The compute model against Vidur's profiled GPUs (docs/calibration.md): the default constants
must keep every profiled prefill and decode point within the calibration tolerance."""
from __future__ import annotations

import pytest

from scheduler.model.config import GPU_PRESETS, ConfigError, build_config
from scheduler.model.timing import TimingModel
from scheduler.study.compute_calibration import (
    DECODE_BATCHES,
    PREFILL_TOKENS,
    TOLERANCE,
    compare,
    load_table,
    main,
)


def test_extracted_table_covers_both_gpus_and_every_size():
    points = load_table()
    a100 = {(p.phase, p.tokens) for p in points if p.gpu == "a100-sxm" and p.full}
    assert a100 == {("prefill", n) for n in PREFILL_TOKENS} | {("decode", b) for b in DECODE_BATCHES}
    assert {p.gpu for p in points} == {"a100-sxm", "h100-sxm"}


def test_calibrated_model_within_tolerance_of_every_profiled_point():
    rows = compare(load_table())
    worst = max(rows, key=lambda c: abs(c.error))
    assert abs(worst.error) <= TOLERANCE, (worst.point, worst.ours_s)


@pytest.mark.parametrize("override", ["timing.prefill_mfu=0.5", "timing.decode_hbm_efficiency=0.6",
                                      "timing.prefill_kv_save_s_per_gb=0"])
def test_drifted_constant_leaves_the_tolerance(override):
    assert max(abs(c.error) for c in compare(load_table(), [override])) > TOLERANCE
    assert main(["--set", override]) == 1


def test_a100_preset_selectable_and_slower_than_h100():
    assert "a100-sxm" in GPU_PRESETS
    a100 = TimingModel(build_config("llama-3-8b", "a100-sxm"))
    h100 = TimingModel(build_config("llama-3-8b", "h100-sxm"))
    assert a100.prefill_s(8192) > 2 * h100.prefill_s(8192)  # 312 vs 989 TFLOP/s peak
    assert a100.decode_step_s(0) > h100.decode_step_s(0)
    assert a100.kv_capacity_tokens == h100.kv_capacity_tokens  # both 80 GB


def test_kv_save_term_charges_new_tokens_only_and_validates():
    timing = TimingModel(build_config())
    assert timing.prefill_kv_save_s(8192, 4096) == pytest.approx(timing.prefill_kv_save_s(4096))
    free = TimingModel(build_config(overrides=["timing.prefill_kv_save_s_per_gb=0"]))
    assert timing.prefill_s(4096) - free.prefill_s(4096) == pytest.approx(timing.prefill_kv_save_s(4096))
    with pytest.raises(ConfigError, match=r"timing\.prefill_kv_save_s_per_gb"):
        build_config(overrides=["timing.prefill_kv_save_s_per_gb=-1"])
