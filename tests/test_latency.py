"""Latency lookup tables (detnas_d2/latency/): prediction = table sum, refusal of a table of another
device or input size, a tiny table build (width 0.25, 32x32, 2 repeats) through the command line, and
a table read without loading the timing harness; a broken table, or one of another input size than
the search's model, is one line naming the file and the fix."""

import json
import os
import random
import subprocess
import sys
import time

import detnas_d2  # noqa: F401

import pytest
import torch

from detnas_d2.config import get_detnas_cfg
from detnas_d2.input_size import parse_input_size
from detnas_d2.latency import LatencyTable, LatencyTableMismatch
from detnas_d2.latency.cli import main
from detnas_d2.latency.timing import build_table
from detnas_d2.search import ArchConstraints
from detnas_d2.search_space import PAPER_BLOCKS, get_space, space_from_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_table():
    return build_table(get_space("small", 0.25), "32x32", "cpu", warmup=1, repeats=2, validate=2)


def test_tiny_table_is_stamped_and_predicts_its_sum(tiny_table):
    t = tiny_table
    m = t.meta
    assert m["device"] == "cpu" and m["device_name"] and m["torch_version"] == torch.__version__
    assert (
        m["threads"] == torch.get_num_threads() and m["input_size"] == [32, 32] and m["batch"] == 1
    )
    assert m["space"] == "small" and m["width_mult"] == 0.25 and m["fold_bn"] is True
    assert len(t.layers_ms) == 20 and all(len(r) == len(PAPER_BLOCKS) for r in t.layers_ms)
    assert t.stem_ms > 0 and all(v > 0 for r in t.layers_ms for v in r)
    rng = random.Random(0)
    for _ in range(5):
        arch = get_space("small").random_arch(rng)
        expected = t.stem_ms + sum(t.layers_ms[i][c] for i, c in enumerate(arch))
        assert t.predict(arch) == pytest.approx(expected, rel=1e-12)
        stages = t.per_stage(arch)
        assert list(stages) == ["stem", "res2", "res3", "res4", "res5"]
        assert sum(stages.values()) == pytest.approx(expected, rel=1e-12)
        assert stages["res2"] == pytest.approx(sum(t.layers_ms[i][arch[i]] for i in range(4)))
    lo, hi = t.range_ms()
    assert lo <= t.predict(arch) <= hi
    v = t.validation
    assert (
        v["num_archs"] == 2
        and len(v["measured_ms"]) == 2
        and v["worst_abs_error_pct"] >= v["mean_abs_error_pct"]
    )
    with pytest.raises(ValueError, match="19 layers"):
        t.predict(arch[:19])


def _table(device="cpu", size=(32, 32), tail="none"):
    meta = {
        "device": device,
        "device_name": "Test Device",
        "torch_version": torch.__version__,
        "threads": 1,
        "input_size": list(size),
        "batch": 1,
        "space": "small",
        "width_mult": 0.25,
        "norm": "BN",
        "fold_bn": True,
        "warmup": 1,
        "repeats": 1,
        "tail": tail,
        "stage_of_layer": get_space("small").stage_of_layer(),
    }
    layers = [[1.0 + i + 0.1 * c for c in range(4)] for i in range(20)]
    return LatencyTable(meta, 0.5, layers, tail, 2.0 if tail != "none" else 0.0)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_save_load_round_trip(tmp_path, suffix):
    t = _table(tail="classifier")
    path = str(tmp_path / ("table" + suffix))
    t.save(path)
    u = LatencyTable.load(
        path, expect_device="cpu", expect_input_size="32x32", expect_space=get_space("small", 0.25)
    )
    arch = [3] * 20
    expected = 0.5 + sum(1.3 + i for i in range(20)) + 2.0
    assert u.predict(arch) == pytest.approx(t.predict(arch)) == pytest.approx(expected)
    assert u.per_stage(arch)["head"] == 2.0 and u.meta == t.meta


def test_load_refuses_another_device_or_input_size(tmp_path):
    path = str(tmp_path / "cpu.json")
    _table("cpu", (32, 32)).save(path)
    with pytest.raises(LatencyTableMismatch) as e:
        LatencyTable.load(path, expect_device="cuda")
    assert (
        "device 'cpu'" in str(e.value)
        and "expected 'cuda'" in str(e.value)
        and path in str(e.value)
    )
    with pytest.raises(LatencyTableMismatch) as e:
        LatencyTable.load(path, expect_device="cpu", expect_input_size=(64, 48))
    assert "input size 32x32" in str(e.value) and "expected 64x48" in str(e.value)
    with pytest.raises(LatencyTableMismatch, match="width 0.25, expected 'small' width 1.0"):
        LatencyTable.load(path, expect_space=get_space("small"))
    LatencyTable.load(
        path, expect_device=torch.device("cpu"), expect_input_size=32
    )  # the same: accepted
    with open(path, "w") as f:
        json.dump({"format": "something else"}, f)
    with pytest.raises(ValueError, match="not a detnas-d2 latency table"):
        LatencyTable.load(path)


def test_parse_input_size():
    assert parse_input_size("800x1333") == (800, 1333) and parse_input_size(224) == (224, 224)
    assert parse_input_size("64") == (64, 64) and parse_input_size([3, 4]) == (3, 4)
    with pytest.raises(ValueError, match="HxW"):
        parse_input_size("big")


def test_command_line_tiny_table_is_fast(tmp_path, capsys):
    out = str(tmp_path / "t.yaml")
    start = time.perf_counter()
    rc = main(
        [
            "--space",
            "small",
            "--width-mult",
            "0.25",
            "--input-size",
            "32x32",
            "--device",
            "cpu",
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--validate",
            "2",
            "--tail",
            "classifier",
            "--num-classes",
            "5",
            "--head-channels",
            "64",
            "--output",
            out,
        ]
    )
    assert rc == 0 and time.perf_counter() - start < 30
    t = LatencyTable.load(out, expect_device="cpu", expect_input_size="32x32")
    assert t.tail == "classifier" and t.tail_ms > 0 and "head" in t.per_stage([0] * 20)
    assert t.validation["num_archs"] == 2
    printed = capsys.readouterr().out
    assert "mean |error|" in printed and "Wrote" in printed


def test_command_line_errors(tmp_path, capsys):
    out = str(tmp_path / "t.json")
    assert main(["--input-size", "huge", "--output", out]) == 2
    assert "HxW" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["--input-size", "32", "--device", "cuda", "--output", out]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert (
            main(["--input-size", "32", "--width-mult", "0.25", "--clock", "cpu", "--output", out])
            == 2
        )
        assert "one thread" in capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_reading_a_table_loads_neither_the_timing_harness_nor_export(tmp_path):
    path = str(tmp_path / "t.json")
    _table().save(path)
    code = (
        "import sys\n"
        "from detnas_d2.latency import LatencyTable\n"
        f"assert LatencyTable.load({path!r}, expect_input_size='32x32').predict([0] * 20) > 0\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('detnas_d2'))))\n"
    )
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = result.stdout.split()
    assert "detnas_d2.latency.table" in loaded
    heavy = (
        "detnas_d2.latency.timing",
        "detnas_d2.export",
        "detnas_d2.checkpoint",
        "detnas_d2.modeling.bn_fold",
    )
    assert not [m for m in loaded if m.startswith(heavy)]


@pytest.mark.slow
def test_module_command_line_help():
    command = [sys.executable, "-m", "detnas_d2.latency", "--help"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--input-size" in result.stdout and "--clock" in result.stdout


# ---- bad tables ---------------------------------------------------------------------------------------


def _broken_tables(good):
    short = dict(good, layers_ms=good["layers_ms"][:19])
    no_size = dict(good, meta={k: v for k, v in good["meta"].items() if k != "input_size"})
    return {
        "cut.json": (json.dumps(good)[:200], r"cannot be read \(JSONDecodeError: "),
        "nan.json": (
            json.dumps(dict(good, stem_ms=float("nan"))),
            "1 negative or non-finite ms, e.g. nan",
        ),
        "short.json": (
            json.dumps(short),
            "layers_ms is 19 rows of \\[4\\] entries, space 'small' has 20 layers",
        ),
        "no_size.json": (json.dumps(no_size), "lacks meta.input_size"),
        "bad.yaml": ("format: [unclosed\n", r"cannot be read \(\w+Error"),
        "binary.json": (b"\xff\xfe\x00\x81", "is not text"),
    }


def test_a_broken_table_is_one_line_naming_the_file(tmp_path):
    for name, (content, message) in _broken_tables(_table().to_dict()).items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(ValueError, match=message) as error:
            LatencyTable.load(str(path))
        assert str(path) in str(error.value) and "\n" not in str(error.value)
        assert "python -m detnas_d2.latency" in str(error.value)


def test_search_refuses_a_table_of_another_input_size(tmp_path):
    path = str(tmp_path / "lat64.json")
    _table(size=(64, 64)).save(path)
    opts = [
        "DETNAS.SEARCH.LATENCY_TABLE",
        path,
        "DETNAS.SEARCH.LATENCY_MAX_MS",
        "1000",
    ]  # an int: read as ms
    for config, size in (
        ("search_det.yaml", "128x128"),
        ("search_cls.yaml", "48x48"),
    ):  # the test inputs
        cfg = get_detnas_cfg(os.path.join(ROOT, "configs", "Toy", config), opts)
        message = rf"measured with input size 64x64, expected {size}: .* --input-size {size} "
        with pytest.raises(LatencyTableMismatch, match=message):
            ArchConstraints.from_cfg(cfg, space_from_cfg(cfg))
    cfg = get_detnas_cfg(
        os.path.join(ROOT, "configs", "Toy", "search_det.yaml"),
        opts + ["DETNAS.SEARCH.LATENCY_INPUT_SIZE", "64x64"],
    )  # deployed at 64x64
    constraints = ArchConstraints.from_cfg(cfg, space_from_cfg(cfg))
    assert constraints.latency.input_size == (64, 64) and constraints.latency_max_ms == 1000.0
