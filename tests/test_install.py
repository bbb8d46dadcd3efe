"""A non-editable install (pip install <checkout>, not -e) runs the pipeline from any folder: the steps
run the installed package (python -m detnas_d2.train_net / search_net) with its packaged configs."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Not copied: what is not source (environments, outputs, builds) and the link setup.py makes.
LEFT_OUT = {
    ".git",
    ".venv",
    "output",
    "datasets",
    "build",
    "dist",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
}


def _source_ignore(folder, names):
    left_out = {n for n in names if n in LEFT_OUT or n.endswith(".egg-info")}
    if Path(folder) == REPO / "detnas_d2":
        left_out.add("configs")
    return left_out


def _run(cmd, cwd, timeout, env=None):
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert result.returncode == 0, f"{cmd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_non_editable_install_runs_the_quick_pipeline_from_another_folder(tmp_path):
    # A fresh environment on this one's packages (torch, Detectron2, pip, setuptools) through a .pth
    # line: that adds their folder alone, without running its .pth files, so not this checkout's
    # editable install of detnas_d2.
    venv = tmp_path / "venv"
    _run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv],
        tmp_path,
        120,
    )
    python = venv / "bin" / "python"
    site = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, 60
    )
    Path(site.strip(), "test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    source = (
        tmp_path / "source"
    )  # a copy: the build writes build/ and the configs link into its source
    shutil.copytree(REPO, source, ignore=_source_ignore)
    _run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "-q",
            source,
        ],
        tmp_path,
        300,
    )
    shutil.rmtree(source)  # nothing may still point at it

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    package = Path(
        _run([python, "-c", "import detnas_d2; print(detnas_d2.__file__)"], elsewhere, 120).strip()
    )
    assert package.is_relative_to(venv) and not package.resolve().is_relative_to(REPO), package
    assert (package.parent / "configs" / "Toy" / "det_subnet.yaml").is_file()

    one_thread = dict(
        os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"
    )  # steadier on shared cores
    stdout = _run(
        [python, REPO / "tools" / "run_pipeline.py", "--quick", "--output-dir", "out"],
        elsewhere,
        900,
        one_thread,
    )
    assert "DetNAS pipeline (toy, quick) finished" in stdout
    out = elsewhere / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert [r["metric"] for r in summary["steps"]] == [
        "top-1",
        "bbox AP",
        "best score",
        "top-1",
        "bbox AP",
        "bbox AP",
    ]
    assert "bbox" in json.loads((out / "6_eval" / "eval_results.json").read_text())
    assert (out / "3_search" / "best_arch.yaml").is_file() and (
        out / "5_det_subnet" / "model_final.pth"
    ).is_file()
    command = (out / "1_cls_supernet" / "command.txt").read_text().split()
    assert command[:3] == [str(python), "-m", "detnas_d2.train_net"]
    config = Path(command[command.index("--config-file") + 1])
    assert config.is_relative_to((package.parent / "configs").resolve())  # the packaged copy
