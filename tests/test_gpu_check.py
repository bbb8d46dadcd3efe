"""The GPU check (tools/gpu_check.py, detnas_d2/gpu_check/) in its CPU quick mode: every part runs and
reports finite numbers in gpu_check.json and gpu_check.md; a part that raises or runs past its budget is
reported as failed with a one-line error while the others still run, and the command exits 1."""

import json
import math
import time

import detnas_d2  # noqa: F401  (compat shims, registrations)

import pytest
import torch

from detnas_d2.gpu_check import PARTS, Part, main

QUICK = ["--device", "cpu", "--quick"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    rc = main(QUICK + ["--output-dir", str(out)])
    return (
        rc,
        json.loads((out / "gpu_check.json").read_text()),
        (out / "gpu_check.md").read_text(),
        out,
    )


def _numbers(value):
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _numbers(v)


@pytest.mark.slow
def test_quick_run_reports_every_part_with_finite_numbers(quick_run):
    rc, report, _, out = quick_run
    parts = {p["name"]: p for p in report["parts"]}
    failed = {name: p["error"] for name, p in parts.items() if p["status"] != "ok"}
    assert rc == 0 and report["ok"] and not failed, failed
    assert list(parts) == [p.name for p in PARTS]
    for name, part in parts.items():
        assert part["tables"] and part["tables"][0]["rows"], name
        assert all(math.isfinite(x) for x in _numbers(part["data"])), name
        assert 0 <= part["seconds"] <= part["budget_s"], name
    assert report["environment"]["device"] == "cpu" and report["environment"]["quick"] is True
    assert any("NCCL across GPUs" in n for n in report["not_checked"])
    assert (out / "gpu_check.log").stat().st_size > 0 and (
        out / "work" / "latency" / "latency_table.json"
    ).exists()


@pytest.mark.slow
def test_quick_run_measures_what_the_check_promises(quick_run):
    _, report, _, _ = quick_run
    parts = {p["name"]: p for p in report["parts"]}
    toy = parts["toy_steps"]["data"]
    assert toy["step1_fp32"]["same_paths_as_cpu"] and toy["step2_fp32"]["same_paths_as_cpu"]
    assert toy["step2_fp32"]["loss_last"] < toy["step2_fp32"]["loss_first"]
    steps = parts["step_costs"]["data"]
    for task, step in (("imagenet", 1), ("coco", 2)):
        variants = steps[task]["variants"]["fp32"]
        assert steps[task]["supernet_step"] == step and set(variants) == {
            "subnet",
            "supernet, same arch",
            "supernet, sampled paths",
        }
        assert all(
            v["s_per_iter"] > 0 and v["peak_memory_mb"] is None for v in variants.values()
        )  # no CUDA
    assert steps["imagenet"]["supernet_max_iter"] == 150000 and steps["coco"]["ims_per_batch"] == 16
    assert parts["data_pipeline"]["data"]["coco"]["images_per_s"] > 0
    search = parts["search_scoring"]["data"]
    shipped = next(p for name, p in search["protocols"].items() if name.startswith("shipped"))
    assert (shipped["recalib_images"], shipped["eval_images"]) == (4000, 5000) and shipped[
        "gpu_hours"
    ] > 0
    assert all(s > 0 for s in search["seconds_per_image"].values())
    projection = parts["projection"]["data"]
    assert (
        set(projection["gpu_hours"]) == {"1", "2", "3", "4", "5"}
        and projection["steps_1_3_complete"]
    )
    assert (
        sum(projection["paper_gpu_days"].values()) == 44
        and "arXiv:1903.10979" in projection["paper_source"]
    )
    assert parts["syncbn"]["data"]["syncbn_layers"] > 0
    latency = parts["latency_table"]["data"]["validation"]
    assert latency["held_out"] and latency["num_archs"] == 4
    export = parts["export"]["data"]
    assert (
        export["torchscript"]["ok"]
        and export["onnx"]["ok"]
        and min(export["onnx"]["detections"]) > 0
    )
    goals = [g for p in report["parts"] for g in p["goals"]]
    assert any(g["met"] is None and "AMP" in g["name"] for g in goals)  # said, not hidden, on CPU


@pytest.mark.slow
def test_markdown_has_a_section_per_part(quick_run):
    _, report, markdown, _ = quick_run
    assert markdown.startswith("# GPU check: CPU") and "quick mode" in markdown
    for part in report["parts"]:
        assert f"(`{part['name']}`): ok" in markdown
    assert (
        "## What one GPU cannot check" in markdown and "| precision | model | s/iter |" in markdown
    )


def _broken(ctx, report):
    report.data["before"] = 1.0
    raise RuntimeError("the injected failure\nwith a second line")


def _slow(ctx, report):
    time.sleep(30)


def _bad_number(ctx, report):
    report.data["ratio"] = float("nan")
    report.table("t", ["a"], [[1]])


def test_failing_parts_are_reported_and_the_others_still_run(tmp_path, capsys):
    extra = (
        Part("broken", "raises", _broken, 60, 60),
        Part("slow", "runs past its budget", _slow, 1, 1),
        Part("nan", "reports NaN", _bad_number, 60, 60),
    )
    parts = extra + tuple(p for p in PARTS if p.name == "latency_table")
    start = time.perf_counter()
    rc = main(QUICK + ["--output-dir", str(tmp_path)], parts=parts)
    assert rc == 1 and time.perf_counter() - start < 60
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {p["name"]: (p["status"], p["error"]) for p in report["parts"]}
    assert status["broken"] == ("failed", "RuntimeError: the injected failure")
    assert status["slow"] == ("failed", "PartTimeout: ran past its budget of 1 s")
    assert status["nan"][0] == "failed" and "non-finite numbers: ratio" in status["nan"][1]
    assert status["latency_table"] == ("ok", "")
    assert not report["ok"] and report["parts"][0]["data"]["before"] == 1.0
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert (
        "Some parts FAILED" in markdown
        and "Error: `RuntimeError: the injected failure`" in markdown
    )
    printed = capsys.readouterr().out
    assert "[1/4] broken: FAILED: RuntimeError: the injected failure" in printed
    assert "1 of 4 parts passed, 3 FAILED" in printed


def test_cuda_without_a_gpu_and_bad_parts_are_refused(tmp_path, capsys):
    if not torch.cuda.is_available():
        assert main(["--output-dir", str(tmp_path)]) == 2
        assert "sees no CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(QUICK + ["--parts", "no_such_part", "--output-dir", str(tmp_path)])
    assert "invalid choice: 'no_such_part'" in capsys.readouterr().err
