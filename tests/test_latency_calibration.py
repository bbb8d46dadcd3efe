"""Latency-table calibration (detnas_d2/latency/calibration.py): a table whose sums miss whole backbones by
a known line (measured = 1.1 x sum + 0.3 ms) is calibrated back to it and predicts held-out archs;
build_table fits on its fit archs and validates on others, before and after; the calibrated prediction is
what predict, per_stage, range_ms and the additive costs (latency bands, latency sampling) give; a table
of format v1 still loads, uncalibrated, and says so."""

import json
import logging
import random

import detnas_d2  # noqa: F401  (compat shims before detectron2 imports)

import pytest
import torch

from detnas_d2.engine.sampling import FlopsBinSampler, LatencyCosts
from detnas_d2.flops import get_flops_table
from detnas_d2.latency import LatencyTable
from detnas_d2.latency import timing as latency_timing
from detnas_d2.latency.calibration import CalibrationError, fit_line
from detnas_d2.search import ArchConstraints
from detnas_d2.search_space import get_space

SPACE = get_space("small", 0.25)
SCALE, OFFSET = 1.1, 0.3  # the bias to recover: whole backbones take 1.1 x the table's sum + 0.3 ms


def _table():
    g = random.Random(0)
    meta = {
        "device": "cpu",
        "device_name": "Test Device",
        "torch_version": torch.__version__,
        "threads": 1,
        "input_size": [32, 32],
        "batch": 1,
        "space": "small",
        "width_mult": 0.25,
        "norm": "BN",
        "fold_bn": True,
        "warmup": 1,
        "repeats": 1,
        "tail": "none",
        "stage_of_layer": SPACE.stage_of_layer(),
    }
    layers = [
        [g.uniform(0.2, 2.0) for _ in range(SPACE.max_choices)] for _ in range(SPACE.num_layers)
    ]
    return LatencyTable(meta, 0.5, layers)


def _archs(n, seed):
    rng = random.Random(seed)
    return [SPACE.random_arch(rng) for _ in range(n)]


def test_calibration_recovers_a_known_bias_and_predicts_held_out_archs():
    table = _table()
    fit, held_out = _archs(12, 1), _archs(30, 2)
    noise = random.Random(3)
    measured = [
        (SCALE * table.sum_ms(a) + OFFSET) * (1 + noise.uniform(-0.005, 0.005)) for a in fit
    ]
    c = table.calibrate(fit, measured)
    assert c["scale"] == pytest.approx(SCALE, rel=0.03) and c["offset_ms"] == pytest.approx(
        OFFSET, abs=0.5
    )
    truth = [SCALE * table.sum_ms(a) + OFFSET for a in held_out]
    before = [abs(table.sum_ms(a) - t) / t for a, t in zip(held_out, truth)]
    after = [abs(table.predict(a) - t) / t for a, t in zip(held_out, truth)]
    assert min(before) > 0.08  # the sum alone misses every arch by about 10%
    assert max(after) < 0.01

    exact = _table()
    exact.calibrate(fit, [SCALE * exact.sum_ms(a) + OFFSET for a in fit])
    assert exact.scale == pytest.approx(SCALE, rel=1e-9) and exact.offset_ms == pytest.approx(
        OFFSET, abs=1e-9
    )


def test_calibrated_prediction_everywhere():
    table = _table()
    table.calibrate(_archs(12, 1), [SCALE * table.sum_ms(a) + OFFSET for a in _archs(12, 1)])
    fixed, layers = table.additive_ms()
    for arch in _archs(5, 4):
        expected = SCALE * table.sum_ms(arch) + OFFSET
        assert table.predict(arch) == pytest.approx(expected, rel=1e-9)
        assert sum(table.per_stage(arch).values()) == pytest.approx(expected, rel=1e-9)
        assert fixed + sum(layers[i][c] for i, c in enumerate(arch)) == pytest.approx(
            expected, rel=1e-9
        )
    lo, hi = table.range_ms()
    assert lo == pytest.approx(SCALE * (0.5 + sum(min(r) for r in table.layers_ms)) + OFFSET)
    assert hi == pytest.approx(SCALE * (0.5 + sum(max(r) for r in table.layers_ms)) + OFFSET)
    assert "calibrated 1.1000 x sum + 0.3000 ms" in table.describe()

    # A latency limit holds the calibrated prediction, not the sum.
    limit = (lo + hi) / 2
    constraints = ArchConstraints(
        get_flops_table(SPACE, 32), SPACE, 32, latency=table, latency_max_ms=limit
    )
    rng = random.Random(5)
    drawn = [constraints.sample(rng) for _ in range(50)]
    assert all(table.predict(a) <= limit for a in drawn)


def test_latency_sampling_bins_over_the_calibrated_prediction():
    table = _table()
    table.calibrate(_archs(12, 1), [SCALE * table.sum_ms(a) + OFFSET for a in _archs(12, 1)])
    sampler = FlopsBinSampler(SPACE, LatencyCosts(table), 0.0, 0.0, num_bins=4)
    lo, hi = table.range_ms()
    assert (sampler.flops_min, sampler.flops_max) == pytest.approx((lo, hi))
    rng = random.Random(6)
    for _ in range(20):
        assert lo - 1e-9 <= table.predict(sampler(rng)) <= hi + 1e-9


def test_fit_refuses_what_no_line_fits():
    with pytest.raises(CalibrationError, match="at least 2 archs"):
        fit_line([1.0], [1.0])
    with pytest.raises(CalibrationError, match="all equal"):
        fit_line([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(CalibrationError, match="scale is"):
        fit_line([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])


def test_build_table_fits_on_its_fit_archs_and_validates_on_others(monkeypatch):
    """build_table with timings replaced by known ones: blocks cost what the table above holds, whole
    backbones 1.1 x their sum + 0.3 ms."""
    reference = _table()
    entry_ms = [reference.stem_ms] + [v for row in reference.layers_ms for v in row]

    def fake_round_robin(entries, device, warmup, repeats, min_repeat_ms, clock):
        n = len(entry_ms)
        return entry_ms + [
            SCALE * reference.sum_ms(model.arch) + OFFSET for model, _ in entries[n:]
        ]

    monkeypatch.setattr(latency_timing, "measure_round_robin", fake_round_robin)
    lines = []
    table = latency_timing.build_table(
        SPACE,
        "32x32",
        "cpu",
        warmup=1,
        repeats=1,
        fit_archs=6,
        validate=8,
        seed=0,
        log=lines.append,
    )
    assert table.scale == pytest.approx(SCALE) and table.offset_ms == pytest.approx(OFFSET)
    v = table.validation
    fit_archs = table.calibration["archs"]
    assert (
        v["num_archs"] == 8
        and v["held_out"]
        and not set(v["archs"]) & set(fit_archs)
        and len(fit_archs) == 4 + 6
    )
    assert fit_archs[:4] == [
        ",".join([str(b)] * 20) for b in range(4)
    ]  # the one-block archs, then random
    assert (
        v["calibrated"]
        and v["mean_abs_error_pct"] < 1e-6
        and v["uncalibrated"]["mean_abs_error_pct"] > 8
    )
    assert v["uncalibrated"]["mean_error_pct"] < -8  # the sum under-predicts
    assert any(
        "table sum mean |error|" in line and "calibrated mean |error| 0.00%" in line
        for line in lines
    )

    def flat_round_robin(entries, device, warmup, repeats, min_repeat_ms, clock):
        return entry_ms + [5.0] * (len(entries) - len(entry_ms))  # no spread: no line through them

    monkeypatch.setattr(latency_timing, "measure_round_robin", flat_round_robin)
    lines = []
    table = latency_timing.build_table(
        SPACE, "32x32", "cpu", warmup=1, repeats=1, fit_archs=4, validate=2, log=lines.append
    )
    assert table.calibration is None and not table.validation["calibrated"]
    assert any(line.startswith("No calibration") for line in lines)
    with pytest.raises(ValueError, match="must be >= 0"):
        latency_timing.build_table(SPACE, "32x32", "cpu", fit_archs=-1)


def test_calibration_round_trips_and_a_v1_table_loads_uncalibrated(tmp_path):
    table = _table()
    table.calibrate(_archs(4, 1), [SCALE * table.sum_ms(a) + OFFSET for a in _archs(4, 1)])
    path = str(tmp_path / "v2.yaml")
    table.save(path)
    loaded = LatencyTable.load(path)
    assert loaded.calibration["archs"] == table.calibration["archs"]
    assert (loaded.scale, loaded.offset_ms) == pytest.approx((table.scale, table.offset_ms))
    arch = _archs(1, 9)[0]
    assert loaded.predict(arch) == pytest.approx(table.predict(arch))

    old = _table().to_dict()
    old["format"] = "detnas-d2-latency-table-v1"
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(old))
    logger = logging.getLogger("detnas_d2.latency.table")
    records = []
    handler = logging.Handler()
    handler.emit = records.append  # caplog misses it once setup_logger stopped propagation
    logger.addHandler(handler)
    try:
        v1 = LatencyTable.load(str(path))
    finally:
        logger.removeHandler(handler)
    assert v1.calibration is None and v1.predict(arch) == pytest.approx(v1.sum_ms(arch))
    assert "uncalibrated" in v1.describe()
    assert any("format v1, without calibration" in r.getMessage() for r in records)
