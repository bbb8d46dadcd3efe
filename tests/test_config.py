"""Config loading: keys of the previous release renamed with a warning, arch options as YAML lists."""

import os

import detnas_d2  # noqa: F401  (compat shims before detectron2 imports)

import pytest
from log_capture import captured_log

from detnas_d2.config import RENAMED_KEYS, ConfigError, get_detnas_cfg

OLD_SEARCH_CONFIG = """\
_BASE_: "{base}"
MODEL:
  DETNAS:
    ARCH: [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]
TEST:
  BN_RECALIB_IMAGES: 96
SEARCH:
  POPULATION: 7
  FITNESS: "bbox_AP"
  BN_RECALIB_DATASET: "toy_det_train"
  BN_RECALIB_BATCH_SIZE: 8
  EVAL_IMAGES: 12
"""


def test_old_keys_read_into_new_places_with_warnings(tmp_path):
    path = tmp_path / "old.yaml"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path.write_text(
        OLD_SEARCH_CONFIG.format(base=os.path.join(root, "configs", "Toy", "det_supernet.yaml"))
    )
    # not caplog: once another test ran Detectron2's setup_logger, detnas_d2 records no longer propagate
    with captured_log("detnas_d2.config") as log:
        cfg = get_detnas_cfg(str(path), ["SEARCH.TOPK", "3", "TEST.BN_RECALIB_BATCH_SIZE", "4"])
    assert cfg.DETNAS.SEARCH.POPULATION == 7 and cfg.DETNAS.SEARCH.EVAL_IMAGES == 12
    assert cfg.DETNAS.SEARCH.TOPK == 3
    assert (cfg.DETNAS.BN_RECALIB.DATASET, cfg.DETNAS.BN_RECALIB.IMAGES) == ("toy_det_train", 96)
    assert cfg.DETNAS.BN_RECALIB.BATCH_SIZE == 4  # the command line comes last
    assert cfg.MODEL.DETNAS.ARCH == "0,1,2,3,0,1,2,3,0,1,2,3,0,1,2,3,0,1,2,3"  # a YAML list of ids
    warnings = log.getvalue()
    assert "config key SEARCH.POPULATION is deprecated; use DETNAS.SEARCH.POPULATION" in warnings
    assert "command line: config key SEARCH.TOPK is deprecated; use DETNAS.SEARCH.TOPK" in warnings
    assert "SEARCH.FITNESS is deprecated; it is no longer used" in warnings
    assert "SEARCH" not in cfg


def test_every_renamed_key_has_a_place():
    cfg = get_detnas_cfg()
    for old, new in RENAMED_KEYS.items():
        if new is not None:
            node = cfg
            for part in new.split("."):
                node = node[part]  # KeyError names a key that went nowhere


def test_unknown_key_and_odd_options_fail_clearly(tmp_path):
    with pytest.raises(
        ConfigError,
        match="no config key DETNAS.SEARCH.POPULATON; did you mean DETNAS.SEARCH.POPULATION",
    ):
        get_detnas_cfg("", ["DETNAS.SEARCH.POPULATON", "3"])
    with pytest.raises(ValueError, match="KEY VALUE pairs; 'DETNAS.SEARCH.TOPK' has no value"):
        get_detnas_cfg("", ["DETNAS.SEARCH.TOPK"])


def test_an_int_for_a_float_option_and_a_number_for_a_string_option_are_read_as_meant(tmp_path):
    path = tmp_path / "ints.yaml"
    path.write_text("DETNAS:\n  SEARCH:\n    LATENCY_MAX_MS: 25\n    LATENCY_INPUT_SIZE: 224\n")
    cfg = get_detnas_cfg(str(path), ["SOLVER.BASE_LR", "1", "DETNAS.SEARCH.FLOPS_MAX", "300000000"])
    assert cfg.DETNAS.SEARCH.LATENCY_MAX_MS == 25.0 and isinstance(
        cfg.DETNAS.SEARCH.LATENCY_MAX_MS, float
    )
    assert cfg.DETNAS.SEARCH.LATENCY_INPUT_SIZE == "224"
    assert isinstance(cfg.SOLVER.BASE_LR, float) and cfg.DETNAS.SEARCH.FLOPS_MAX == 3e8
    cfg = get_detnas_cfg(
        "",
        [
            "DETNAS.SEARCH.LATENCY_MAX_MS",
            "100",
            "DETNAS.SEARCH.LATENCY_INPUT_SIZE",
            "128",
            "MODEL.DETNAS.ARCH",
            "3",
            "SOLVER.MAX_ITER",
            "7",
        ],
    )
    assert (cfg.DETNAS.SEARCH.LATENCY_MAX_MS, cfg.DETNAS.SEARCH.LATENCY_INPUT_SIZE) == (
        100.0,
        "128",
    )
    assert (cfg.MODEL.DETNAS.ARCH, cfg.SOLVER.MAX_ITER) == ("3", 7)
    with pytest.raises(
        ConfigError, match="SOLVER.MAX_ITER takes an int"
    ):  # a fraction for an int: no plain meaning
        get_detnas_cfg("", ["SOLVER.MAX_ITER", "7.5"])
