"""The six-step pipeline, shortened to a few iterations per step: every artifact passes from step to
step, and each step's output exists and loads (tools/run_pipeline.py --quick); a step's command, stopped
with the pipeline or left behind by it, stops too."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detnas_d2.arch_io import load_arch_record
from detnas_d2.audit.claim import write_report
from detnas_d2.file_io import read_json_lines
from detnas_d2.pipeline import Step, StepFailed
from detnas_d2.search_space import get_space

ROOT = Path(__file__).resolve().parents[1]
# The steps' processes on one thread each: steadier (and much faster) on cores other processes share.
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    cmd = [sys.executable, str(ROOT / "tools/run_pipeline.py"), "--quick", "--output-dir", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


@pytest.mark.slow
def test_every_step_writes_what_the_next_one_reads(pipeline):
    out, _ = pipeline
    for step in ("1_cls_supernet", "2_det_supernet", "4_cls_subnet", "5_det_subnet"):
        ckpt = torch.load(out / step / "model_final.pth", map_location="cpu", weights_only=False)
        assert any(k.startswith("backbone.") for k in ckpt["model"]), step
        assert json.loads((out / step / "eval_results.json").read_text()), step
    # supernet checkpoints hold every choice of a layer, subnet checkpoints one
    det_supernet = torch.load(
        out / "2_det_supernet/model_final.pth", map_location="cpu", weights_only=False
    )
    assert any(".choices.3." in k for k in det_supernet["model"])
    det_subnet = torch.load(
        out / "5_det_subnet/model_final.pth", map_location="cpu", weights_only=False
    )
    assert not any(".choices." in k for k in det_subnet["model"])

    best = load_arch_record(str(out / "3_search/best_arch.yaml"))
    space = get_space(best.space)
    assert len(best.arch) == space.num_layers and best.metadata["flops"] > 0
    candidates = read_json_lines(out / "3_search/candidates.jsonl")
    assert tuple(max(candidates, key=lambda c: c["score"])["arch"]) == best.arch
    assert len({tuple(c["arch"]) for c in candidates}) == len(candidates)
    # steps 4 to 6 ran the searched arch
    for step in ("4_cls_subnet", "5_det_subnet", "6_eval"):
        assert str(out / "3_search/best_arch.yaml") in (out / step / "command.txt").read_text()
    assert "bbox" in json.loads((out / "6_eval/eval_results.json").read_text())


# A space of the user's own: one YAML file naming the module that registers its block type, both outside
# the package.
USER_SPACE = f"""
name: user-toy
imports: [{ROOT / "tests" / "user_blocks.py"}]
stem: {{channels: 16}}
blocks:
  - {{name: conv3, type: PlainConvBlock, kernel_size: 3}}
  - {{name: conv5, type: PlainConvBlock, kernel_size: 5}}
  - {{name: mb3_e3, type: InvertedResidual, kernel_size: 3, expansion: 3}}
stages:
  - {{channels: 32, units: 2}}
  - {{channels: 64, units: 2}}
  - {{channels: 96, units: 2}}
  - {{channels: 128, units: 1}}
"""


@pytest.mark.slow
def test_six_toy_steps_on_a_space_of_the_users_own(tmp_path):
    (tmp_path / "user_space.yaml").write_text(USER_SPACE)
    out = tmp_path / "pipeline"
    cmd = [
        sys.executable,
        str(ROOT / "tools/run_pipeline.py"),
        "--quick",
        "--output-dir",
        str(out),
        "MODEL.DETNAS.SPACE",
        str(tmp_path / "user_space.yaml"),
        "DETNAS.SEARCH.FLOPS_MIN",
        "0",  # the toy band is the small space's
        "DETNAS.SEARCH.FLOPS_MAX",
        "0",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    best = load_arch_record(str(out / "3_search/best_arch.yaml"))
    space = get_space(best.space)
    assert space.name == "user-toy" and best.space_digest == space.digest
    assert len(best.arch) == 7 and best.metadata["flops"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["searched_subnet"]["arch"] == list(best.arch)
    # the supernet holds the three candidates of every layer, the retrained subnet the searched ones
    supernet = torch.load(
        out / "2_det_supernet/model_final.pth", map_location="cpu", weights_only=False
    )["model"]
    assert any(".choices.2." in k for k in supernet)
    subnet = torch.load(
        out / "5_det_subnet/model_final.pth", map_location="cpu", weights_only=False
    )
    assert not any(".choices." in k for k in subnet["model"])
    assert json.loads((out / "6_eval/eval_results.json").read_text())


@pytest.mark.slow
def test_summary_names_every_step_and_the_subnet(pipeline):
    out, stdout = pipeline
    summary = json.loads((out / "summary.json").read_text())
    assert [r["metric"] for r in summary["steps"]] == [
        "top-1",
        "bbox AP",
        "best score",
        "top-1",
        "bbox AP",
        "bbox AP",
    ]
    assert summary["searched_subnet"]["arch"] == list(
        load_arch_record(str(out / "3_search/best_arch.yaml")).arch
    )
    assert "searched subnet" in stdout and "6. evaluation of the subnet detector" in stdout


@pytest.mark.slow
def test_second_run_says_what_it_reuses(pipeline):
    out, _ = pipeline
    cmd = [
        sys.executable,
        str(ROOT / "tools/run_pipeline.py"),
        "--quick",
        "--reuse",
        "--output-dir",
        str(out),
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=ONE_THREAD
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("reusing") == 6
    assert "$ " not in proc.stdout  # no step ran again


@pytest.mark.slow
def test_study_retrains_four_archs_and_tabulates_them(pipeline, tmp_path):
    """tools/study.py --quick on the pipeline's output: the classification search, then the four archs
    retrained (classification, then detection from it) and one table."""
    from detnas_d2.config import get_detnas_cfg
    from detnas_d2.flops import get_flops_table

    out, _ = pipeline
    cmd = [
        sys.executable,
        str(ROOT / "tools/study.py"),
        "--quick",
        "--pipeline-dir",
        str(out),
        "--output-dir",
        str(tmp_path),
        "--cls-opts",
        "SOLVER.BASE_LR 0.05",
        "--det-opts",
        "SOLVER.BASE_LR 0.01",
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=ONE_THREAD
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = {r["arch"]: r for r in json.loads((tmp_path / "study.json").read_text())}
    assert list(rows) == ["det-search", "cls-search", "all-3x3", "random"]
    best = load_arch_record(str(out / "3_search/best_arch.yaml"))
    cls_best = load_arch_record(str(tmp_path / "cls_search/best_arch.yaml"))
    assert rows["det-search"]["ids"] == ",".join(map(str, best.arch))
    assert rows["cls-search"]["ids"] == ",".join(map(str, cls_best.arch))
    assert set(rows["all-3x3"]["ids"].split(",")) == {"0"}
    # the classification search kept the detection search's FLOPs limit; the random arch matches its FLOPs
    cfg = get_detnas_cfg(str(ROOT / "configs/Toy/search_det.yaml"))
    table = get_flops_table(
        get_space(best.space, cfg.MODEL.DETNAS.WIDTH_MULT), cfg.DETNAS.SEARCH.INPUT_SIZE
    )
    assert rows["cls-search"]["flops"] == table.flops(cls_best.arch) <= cfg.DETNAS.SEARCH.FLOPS_MAX
    assert (
        abs(rows["random"]["flops"] - rows["det-search"]["flops"])
        <= 0.02 * rows["det-search"]["flops"]
    )
    # ... and is none of the other three (the quick search's best arch is often the first random draw)
    assert rows["random"]["ids"] not in {
        rows[n]["ids"] for n in ("det-search", "cls-search", "all-3x3")
    }
    for name, row in rows.items():
        assert 0.0 <= row["top1"] <= 100.0 and row["AP"] == row["AP"], name  # AP not NaN
        det_cmd = (tmp_path / name / "seed0/det_subnet/command.txt").read_text()
        assert (
            str(tmp_path / name / "arch.yaml") in det_cmd
            and "cls_subnet/model_final.pth" in det_cmd
        )
        # each step with its own options (--cls-opts / --det-opts), after the config's
        cls_cmd = (tmp_path / name / "seed0/cls_subnet/command.txt").read_text()
        assert "SOLVER.BASE_LR 0.05" in cls_cmd and "SOLVER.BASE_LR 0.01" not in cls_cmd
        assert "SOLVER.BASE_LR 0.01" in det_cmd and "SOLVER.BASE_LR 0.05" not in det_cmd
    table_text = (tmp_path / "study.md").read_text()
    assert "bbox AP" in table_text and all(f"| {name}" in table_text for name in rows)
    assert "step 4 with SOLVER.BASE_LR 0.05; step 5 with SOLVER.BASE_LR 0.01" in table_text
    # one seed: no significance test (it needs >= 2 seeds per arch)
    assert "p (det-search better)" in table_text
    assert [r.get("p_det_search_better") for r in rows.values()] == [None] * 4


def test_study_report_tests_det_search_unpaired_and_paired_by_seed(tmp_path):
    from detnas_d2.flops import get_flops_table

    space = get_space("small", 0.25)
    archs = {"det-search": (1,) * 20, "all-3x3": (0,) * 20}
    # det-search 1 AP above all-3x3 in each of 5 seeds, whose offsets (10, 20, ...) both share
    runs = {
        "det-search": [{"seed": s, "top1": 90.0, "AP": 10.0 * s + 1} for s in range(1, 6)],
        "all-3x3": [{"seed": s, "top1": 90.0, "AP": 10.0 * s} for s in range(1, 6)],
    }
    text = write_report(tmp_path, archs, runs, get_flops_table(space, 128), 128)
    row = json.loads((tmp_path / "study.json").read_text())[1]
    assert row["p_det_search_better"] > 0.4  # unpaired: within the seeds' spread
    assert row["p_det_search_better_paired"] == pytest.approx(
        1 / 32
    )  # paired: 5 of 5 seeds, 1 in 2^5
    assert " 0.031 |" in text and "p paired by seed" in text
    assert (
        row["p_det_search_worse_paired"] == pytest.approx(1.0) and row["p_det_search_worse"] > 0.4
    )


@pytest.fixture
def step_folder(tmp_path, monkeypatch):
    """A folder to run fake steps from: their modules (python -m) and an empty config."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "unused.yaml").write_text("")
    return tmp_path


def test_step_shows_progress_and_keeps_the_full_output(step_folder):
    tmp_path = step_folder
    script = tmp_path / "fake_step.py"
    script.write_text(
        "import sys, pathlib\n"
        "print('[12/01 10:00:00 d2.engine]: Starting training')\n"
        "print('[12/01 10:00:01 d2.utils.events]:  eta: 0:00:09  iter: 19  total_loss: 1.6')\n"
        "print('[12/01 10:00:02 detnas_d2.search.outputs]: Generation 0 done (4 candidates, 4 in all)')\n"
        "pathlib.Path(sys.argv[-1], 'done.txt').write_text('x')\n"
    )
    out = tmp_path / "step"
    step = Step("fake", "a fake step", "fake_step", "unused.yaml", out, [], out / "done.txt")
    lines = []
    step.run(log=lines.append)
    progress = [line for line in lines if line.startswith("  [fake]")]
    assert progress == [
        "  [fake] eta: 0:00:09  iter: 19  total_loss: 1.6",
        "  [fake] Generation 0 done (4 candidates, 4 in all)",
    ]
    assert "Starting training" in (out / "stdout.txt").read_text()  # everything stays in the file


@pytest.mark.slow
def test_stopped_step_continues_with_resume_when_reused(step_folder):
    """A step stopped before its artifact: with `reuse` and the same command it continues (`--resume`,
    its folder and log kept); with another command, or without `reuse`, it starts again in an emptied
    folder; once finished, `reuse` keeps it."""
    tmp_path = step_folder
    script = tmp_path / "fake_train.py"
    script.write_text(  # parses its command line as train_net.py does (Detectron2's argument parser)
        "import sys, pathlib\n"
        "from detectron2.engine import default_argument_parser\n"
        "args = default_argument_parser().parse_args()\n"
        "out = pathlib.Path(args.opts[args.opts.index('OUTPUT_DIR') + 1])\n"
        "resumed = args.resume\n"
        "print('resumed' if resumed else 'fresh', 'checkpoint' if (out / 'ckpt').exists() else 'no checkpoint')\n"
        "(out / 'ckpt').write_text('x')\n"
        "if resumed or 'finish' in args.opts:\n"
        "    (out / 'model_final.pth').write_text('x')\n"
        "else:\n"
        "    sys.exit(1)  # stopped halfway\n"
    )
    out = tmp_path / "step"

    def step(*opts):
        return Step(
            "fake",
            "a fake step",
            "fake_train",
            "unused.yaml",
            out,
            list(opts),
            out / "model_final.pth",
        )

    with pytest.raises(StepFailed):
        step().run(reuse=True, log=lambda m: None)
    lines = []
    step().run(reuse=True, log=lines.append)
    assert "continuing the stopped run" in lines[0] and "--resume" in lines[0]
    assert (out / "stdout.txt").read_text().splitlines() == [
        "fresh no checkpoint",
        "resumed checkpoint",
    ]
    assert "--resume" not in (out / "command.txt").read_text()  # the command a later start compares
    step().run(reuse=True, log=lines.append)
    assert "reusing" in lines[-1]

    step("finish").run(reuse=True, log=lines.append)  # another command: a new run, not this one's
    assert (out / "stdout.txt").read_text().splitlines() == ["fresh no checkpoint"]
    with pytest.raises(StepFailed):
        step().run(reuse=False, log=lambda m: None)  # without reuse: from scratch even if stopped
    assert (out / "stdout.txt").read_text().splitlines() == ["fresh no checkpoint"]


# A pipeline as tools/run_pipeline.py runs one (stop signals raise, the step passes them on), with one step
# that records the signal it gets and otherwise sleeps.
RUNNER = """
from detnas_d2.pipeline import Step
from detnas_d2.process import Stopped, raising_stop_signals, resend_signal

try:
    with raising_stop_signals():
        Step("slow", "a slow step", "slow_step", "unused.yaml", "out", [], "out/never").run()
except Stopped as stop:
    resend_signal(stop.signum)
"""
SLOW_STEP = """
import os, pathlib, signal, sys, time

out = pathlib.Path(sys.argv[-1])

def stop(signum, frame):
    (out / "stopped_by").write_text(str(signum))
    sys.exit(1)

signal.signal(signal.SIGTERM, stop)
(out / "pid").write_text(str(os.getpid()))
time.sleep(600)
"""


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _start_runner(folder):
    (folder / "runner.py").write_text(RUNNER)
    (folder / "slow_step.py").write_text(SLOW_STEP)
    (folder / "unused.yaml").write_text("")
    runner = subprocess.Popen(
        [sys.executable, "runner.py"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (folder / "out/pid").exists():
        assert runner.poll() is None and time.monotonic() < deadline, runner.stderr.read()[-3000:]
        time.sleep(0.2)
    time.sleep(0.2)  # the pid file is written: the step's handler is set
    return runner, int((folder / "out/pid").read_text())


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="finds processes through Linux's /proc"
)
def test_stopped_pipeline_passes_the_signal_to_its_step(tmp_path):
    """SIGTERM to the pipeline: its step gets SIGTERM (in its own process group, it would not see a signal
    sent to the pipeline's), ends, and the pipeline dies of the same signal."""
    runner, step_pid = _start_runner(tmp_path)
    assert (
        os.getpgid(step_pid) == step_pid != os.getpgid(runner.pid)
    )  # the step leads its own group
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=60) == -signal.SIGTERM, runner.stderr.read()[-3000:]
    assert (tmp_path / "out/stopped_by").read_text() == str(int(signal.SIGTERM))
    assert not _alive(step_pid)


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="finds processes through Linux's /proc"
)
def test_step_dies_with_a_killed_pipeline(tmp_path):
    """SIGKILL to the pipeline alone (nothing passes a signal on): its step dies with it."""
    runner, step_pid = _start_runner(tmp_path)
    runner.kill()
    runner.wait(timeout=60)
    deadline = time.monotonic() + 10
    while _alive(step_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(step_pid)
    if alive:
        os.kill(step_pid, signal.SIGKILL)
    assert not alive, "the step outlived its pipeline"
