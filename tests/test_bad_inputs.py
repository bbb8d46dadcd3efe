"""Bad inputs of train_net.py and search_net.py as a user gives them: each is one line on stderr and exit
status 2 (the traceback with DETNAS_DEBUG=1), and a refused run writes nothing in its OUTPUT_DIR.

The search cases run the entry points in this process on a search folder made with a fake fitness (no
model is loaded: they are refused before), so they take seconds."""

import json
import os
import subprocess
import sys

import detnas_d2  # noqa: F401  (compat shims, registrations)
from detnas_d2 import search_net, submit_net, train_net

import pytest
from detectron2.data import DatasetCatalog
from detectron2.utils import comm
from log_capture import captured_log

from detnas_d2.arch_io import ArchError, load_arch
from detnas_d2.config import frozen_cfg
from detnas_d2.data.datasets import DatasetError
from detnas_d2.data.toy import ToyDataError, ensure_toy_data
from detnas_d2.engine import parse_args
from detnas_d2.engine.checks import changed_settings, check_training
from detnas_d2.gpu_check.command import main as gpu_check
from detnas_d2.pipeline import QUICK_OVERRIDES
from detnas_d2.recalibration import InputBatches
from detnas_d2.run_lock import RunLock
from detnas_d2.search import (
    ArchConstraints,
    EvolutionSearch,
    FinalistSettings,
    ScoringSettings,
    SearchSettings,
)
from detnas_d2.search.runner import STATE_FILE, check_search
from detnas_d2.search.settings import changed_supernets, file_sha256
from detnas_d2.search_space import get_space, space_from_cfg
from detnas_d2.user_errors import DEBUG_ENV, UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEARCH_CONFIG = os.path.join(REPO, "configs", "Toy", "search_det.yaml")
SUBNET_CONFIG = os.path.join(REPO, "configs", "Toy", "det_subnet.yaml")


def search_argv(out, weights, *opts, resume=False):
    return (
        ["--config-file", SEARCH_CONFIG]
        + (["--resume"] if resume else [])
        + QUICK_OVERRIDES["search"]
        + ["MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(out), *opts]
    )


def folder_contents(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def stopped_search(tmp_path):
    """(OUTPUT_DIR, weights) of a search stopped after 2 of its 6 candidates: config.yaml beside its
    state, scored with a fake fitness on the supernet file `weights` (any bytes: it is never loaded)."""
    weights = tmp_path / "supernet.pth"
    weights.write_bytes(b"the first supernet")
    out = tmp_path / "search"
    cfg = frozen_cfg(
        parse_args(search_argv(out, weights, "DETNAS.SEARCH.MAX_CANDIDATES", "2"), env={})
    )
    space = space_from_cfg(cfg)
    scoring = ScoringSettings.from_cfg(cfg)
    search = EvolutionSearch(
        SearchSettings.from_cfg(cfg),
        space,
        ArchConstraints.from_cfg(cfg, space),
        str(out / STATE_FILE),
        scoring=scoring,
        finalists=FinalistSettings.from_cfg(cfg, scoring),
    )
    out.mkdir()
    search.run(lambda archs: [{"score": float(sum(arch))} for arch in archs])
    (out / "config.yaml").write_text(cfg.dump())
    assert len(search.history) == 2
    return out, weights


def refused(run, argv, capsys):
    """The one line `run(argv)` ends with (exit status 2)."""
    with pytest.raises(SystemExit) as stop:
        run(argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "\n" not in err and "Traceback" not in err, err
    return err


# ---- a search's folder -------------------------------------------------------------------------------


def test_a_resume_on_other_supernet_weights_is_refused_and_writes_nothing(stopped_search, capsys):
    out, weights = stopped_search
    before = folder_contents(out)
    weights.write_bytes(b"another supernet at the same path")
    line = refused(search_net.run, search_argv(out, weights, resume=True), capsys)
    assert f"MODEL.WEIGHTS {weights} (sha256 " in line and "other supernet weights" in line
    assert (
        "Resume with the weights it started with, or start a new search in another OUTPUT_DIR"
        in line
    )
    assert folder_contents(out) == before


def test_a_search_started_before_supernet_contents_were_recorded_resumes_with_a_warning(
    stopped_search,
):
    out, weights = stopped_search
    state = json.loads((out / STATE_FILE).read_text())
    del state["fingerprint"]["weights_sha256"]
    (out / STATE_FILE).write_text(json.dumps(state))
    cfg = frozen_cfg(parse_args(search_argv(out, weights, resume=True), env={}))
    with captured_log("detnas_d2.search.evolution") as log:
        check_search(cfg, resume=True)
    assert (
        "MODEL.WEIGHTS cannot be checked to be the file the search started with" in log.getvalue()
    )
    space = space_from_cfg(cfg)
    scoring = ScoringSettings.from_cfg(cfg)
    resumed = EvolutionSearch(
        SearchSettings.from_cfg(cfg),
        space,
        ArchConstraints.from_cfg(cfg, space),
        str(out / STATE_FILE),
        scoring=scoring,
        resume=True,
        finalists=FinalistSettings.from_cfg(cfg, scoring),
    )
    assert resumed.state.fingerprint["weights_sha256"] == file_sha256(str(weights))  # saved with it


def test_ensemble_and_finalist_supernets_are_checked_by_contents_too():
    saved = {
        "weights": ["a.pth", "b.pth"],
        "weights_sha256": ["1" * 64, "2" * 64],
        "finalists": {"topk": 2, "weights": ["c.pth"], "weights_sha256": ["3" * 64]},
    }
    current = json.loads(json.dumps(saved))
    assert changed_supernets(saved, current) == []
    current["weights_sha256"][1] = "4" * 64
    current["finalists"]["weights_sha256"] = ["5" * 64]
    assert changed_supernets(saved, current) == [
        f"DETNAS.SEARCH.ENSEMBLE_WEIGHTS b.pth (sha256 {'2' * 12} when the search started, {'4' * 12} now)",
        f"DETNAS.SEARCH.FINALISTS.WEIGHTS c.pth (sha256 {'3' * 12} when the search started, {'5' * 12} now)",
    ]
    current["weights"][1] = "moved.pth"  # another path: a change of the settings, reported as such
    assert len(changed_supernets(saved, current)) == 1


def test_refused_searches_leave_config_yaml_and_the_rest_as_they_were(stopped_search, capsys):
    out, weights = stopped_search
    before = folder_contents(out)
    line = refused(
        search_net.run, search_argv(out, weights), capsys
    )  # a new search over a stopped one
    assert "already holds a search: pass --resume" in line
    assert folder_contents(out) == before
    line = refused(
        search_net.run, search_argv(out, weights, "DETNAS.SEARCH.TOPK", "1", resume=True), capsys
    )
    assert "cannot be resumed with these: topk: 2 -> 1" in line
    assert folder_contents(out) == before


def test_records_of_a_search_without_its_state_are_not_overwritten(stopped_search, capsys):
    out, weights = stopped_search
    (out / STATE_FILE).unlink()
    before = folder_contents(out)
    for resume in (False, True):
        line = refused(search_net.run, search_argv(out, weights, resume=resume), capsys)
        assert (
            f"holds the records of a search (search_state.json.bak) but no {STATE_FILE}: copy"
            in line
        )
        assert folder_contents(out) == before


def test_a_second_search_into_a_folder_in_use_is_refused(stopped_search, capsys):
    out, weights = stopped_search
    with RunLock(str(out), command="the first search"):
        before = folder_contents(out)
        line = refused(search_net.run, search_argv(out, weights, resume=True), capsys)
        assert (
            f"is in use by another run (pid {os.getpid()} " in line and "the first search" in line
        )
        assert folder_contents(out) == before


@pytest.mark.parametrize(
    "opts, message",
    [
        (["DETNAS.SEARCH.EVAL_IMAGES", "-5"], "DETNAS.SEARCH.EVAL_IMAGES must be >= 0"),
        (["DETNAS.SEARCH.EVAL_BATCH_SIZE", "0"], "DETNAS.SEARCH.EVAL_BATCH_SIZE must be >= 1"),
        (["DETNAS.BN_RECALIB.IMAGES", "0"], "DETNAS.BN_RECALIB.IMAGES must be >= 1"),
        (["DETNAS.BN_RECALIB.BATCH_SIZE", "-1"], "DETNAS.BN_RECALIB.BATCH_SIZE must be >= 1"),
        (["DETNAS.SEARCH.POPULATION", "0"], "DETNAS.SEARCH.POPULATION must be >= 1"),
        (["DETNAS.SEARCH.TOPK", "-1"], "DETNAS.SEARCH.TOPK must be >= 1"),
        (["DETNAS.SEARCH.EVAL_DATASET", "toy_det_serch"], "did you mean toy_det_search"),
    ],
)
def test_counts_and_datasets_of_the_search_are_checked(tmp_path, capsys, opts, message):
    weights = tmp_path / "supernet.pth"
    weights.write_bytes(b"a supernet")
    line = refused(search_net.run, search_argv(tmp_path / "out", weights, *opts), capsys)
    assert message in line
    assert not (tmp_path / "out").exists()


def test_weights_that_are_a_folder_are_named_so(tmp_path, capsys):
    line = refused(search_net.run, search_argv(tmp_path / "out", tmp_path), capsys)
    assert f"MODEL.WEIGHTS {tmp_path}: a folder, not a checkpoint file" in line


# ---- training --------------------------------------------------------------------------------------


def test_training_does_not_start_over_a_finished_training_without_resume(tmp_path, capsys):
    out = tmp_path / "train"
    out.mkdir()
    for name, data in (
        ("model_0000004.pth", b"4"),
        ("model_final.pth", b"final"),
        ("last_checkpoint", b"x"),
    ):
        (out / name).write_bytes(data)
    (out / "config.yaml").write_text("the finished training's")
    before = folder_contents(out)
    argv = ["--config-file", SUBNET_CONFIG, "OUTPUT_DIR", str(out)]
    line = refused(train_net.run, argv, capsys)
    assert (
        f"OUTPUT_DIR {out} holds a training's checkpoints (last_checkpoint, model_0000004.pth"
        in line
    )
    assert "pass --resume to continue that training, or give another OUTPUT_DIR" in line
    assert folder_contents(out) == before
    cfg = frozen_cfg(parse_args(argv, env={}))
    check_training(cfg, resume=True, eval_only=False)  # continuing it is fine
    check_training(cfg, resume=False, eval_only=True)  # so is evaluating in it


def test_a_resume_with_other_settings_names_them(tmp_path):
    argv = ["--config-file", SUBNET_CONFIG, "OUTPUT_DIR", str(tmp_path)]
    (tmp_path / "config.yaml").write_text(frozen_cfg(parse_args(argv, env={})).dump())
    assert changed_settings(frozen_cfg(parse_args(argv, env={}))) == []
    changed = frozen_cfg(
        parse_args(argv + ["SOLVER.BASE_LR", "0.5", "SOLVER.STEPS", "(7,)"], env={})
    )
    assert changed_settings(changed) == [
        "SOLVER.BASE_LR: 0.04 -> 0.5",
        "SOLVER.STEPS: [1300] -> [7]",
    ]
    check_training(changed, resume=True, eval_only=False)  # no checkpoint yet: nothing to continue
    (tmp_path / "last_checkpoint").write_text("model_0000004.pth")
    with pytest.raises(UserError) as refused_resume:
        check_training(changed, resume=True, eval_only=False)
    line = str(refused_resume.value)
    assert (
        "--resume would continue the training in" in line and "SOLVER.BASE_LR: 0.04 -> 0.5" in line
    )
    assert "SOLVER.STEPS" not in line.split("(a resume may change only")[0]  # a schedule may change
    assert "Resume with its settings, or train anew in another OUTPUT_DIR" in line
    extended = frozen_cfg(
        parse_args(argv + ["SOLVER.MAX_ITER", "4000", "SOLVER.STEPS", "(3000,)"], env={})
    )
    check_training(extended, resume=True, eval_only=False)  # extending the schedule continues
    check_training(changed, resume=False, eval_only=True)  # evaluating is not resuming


@pytest.mark.slow
def test_a_diverging_training_is_one_line_and_keeps_its_folder(tmp_path, capsys):
    out = tmp_path / "out"
    config = os.path.join(REPO, "configs", "Toy", "cls_supernet.yaml")
    opts = ["SOLVER.BASE_LR", "1e6", "SOLVER.MAX_ITER", "20", "SOLVER.WARMUP_ITERS", "0"]
    opts += ["DATASETS.TEST", "()"]
    line = refused(train_net.run, ["--config-file", config, "OUTPUT_DIR", str(out), *opts], capsys)
    assert line.startswith("train_net.py: error: the training diverged (")
    assert "lower SOLVER.BASE_LR" in line
    log = (out / "log.txt").read_text()  # Detectron2 logs the error too: as one line
    assert "Loss became infinite or NaN" in log and "Traceback" not in log
    assert (out / "config.yaml").is_file() and not (out / ".lock").exists()


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.DETNAS.ARCH", "9,9,9"], "arch '9,9,9': item 0: unknown block id 9"),
        (["MODEL.DETNAS.ARCH", REPO], f"arch {REPO} is a folder: give an arch file"),
        (["MODEL.DETNAS.SPACE", "huge"], "unknown search space 'huge'"),
        (["MODEL.FOO", "1"], "command line: no config key MODEL.FOO; check its spelling"),
        (["SOLVER.MAX_ITR", "1"], "no config key SOLVER.MAX_ITR; did you mean SOLVER.MAX_ITER?"),
        (
            ["SOLVER.MAX_ITER", "abc"],
            "SOLVER.MAX_ITER takes an int (default 1500), got 'abc' (str)",
        ),
        (["SOLVER.MAX_ITER"], "KEY VALUE pairs; 'SOLVER.MAX_ITER' has no value"),
        (
            ["SOLVER.MAX_ITER", "MODEL.WEIGHTS", "w.pth"],
            "SOLVER.MAX_ITER has no value (the next item is the key",
        ),
        (
            ["DATASETS.TRAIN", "('toy_det_trian',)"],
            "DATASETS.TRAIN: no dataset 'toy_det_trian' is registered; did",
        ),
        (
            ["SOLVER.IMS_PER_BATCH", "0"],
            "SOLVER.IMS_PER_BATCH 0: the images per iteration of all processes",
        ),
        (["SOLVER.MAX_ITER", "0"], "SOLVER.MAX_ITER must be >= 1, got 0"),
    ],
)
def test_config_and_arch_errors_are_one_line_and_write_nothing(tmp_path, capsys, opts, message):
    out = tmp_path / "out"
    line = refused(
        train_net.run, ["--config-file", SUBNET_CONFIG, "OUTPUT_DIR", str(out), *opts], capsys
    )
    assert line.startswith("train_net.py: error: "), line
    assert message in line
    assert not out.exists()


def test_config_file_errors_name_the_file(tmp_path, capsys):
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text(f"_BASE_: {SUBNET_CONFIG}\nMODEL:\n  DETNAS:\n    SPAC: small\n")
    bad_yaml = tmp_path / "bad_yaml.yaml"
    bad_yaml.write_text("SOLVER:\n  MAX_ITER: [1\n")
    for path, message in (
        (
            bad_key,
            f"config file {bad_key}: no config key MODEL.DETNAS.SPAC; did you mean MODEL.DETNAS.SPACE?",
        ),
        (bad_yaml, f"config file {bad_yaml}: not valid YAML ("),
        (tmp_path / "none.yaml", f"config {tmp_path / 'none.yaml'} not found"),
    ):
        assert message in refused(train_net.run, ["--config-file", str(path)], capsys)


@pytest.mark.parametrize(
    "launch_args, message",
    [
        (["--num-gpus", "0"], "--num-gpus 0: give the number of processes per machine, at least 1"),
        (["--num-gpus", "-2"], "--num-gpus -2"),
        (["--num-machines", "0"], "--num-machines 0: give at least 1"),
        (
            ["--num-machines", "2", "--machine-rank", "2", "--dist-url", "tcp://h:1"],
            "--machine-rank 2",
        ),
        (
            ["--num-machines", "2", "--dist-url", "auto"],
            "--dist-url auto works on one machine only",
        ),
    ],
)
def test_launch_arguments_that_start_nothing_are_refused(tmp_path, capsys, launch_args, message):
    for run in (train_net.run, search_net.run):
        line = refused(
            run, ["--config-file", SUBNET_CONFIG, *launch_args, "OUTPUT_DIR", str(tmp_path)], capsys
        )
        assert message in line


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ArchError, match="unknown block id 9"):
        train_net.run(
            [
                "--config-file",
                SUBNET_CONFIG,
                "MODEL.DETNAS.ARCH",
                "9,9,9",
                "OUTPUT_DIR",
                str(tmp_path),
            ]
        )


@pytest.mark.slow
def test_a_workers_user_error_is_one_line_of_the_launcher(tmp_path):
    """Two processes: rank 0 refuses the arch before anything is written; the launcher exits 2 quietly."""
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "detnas_d2.train_net",
        "--num-gpus",
        "2",
        "--config-file",
        SUBNET_CONFIG,
    ]
    proc = subprocess.run(
        command + ["MODEL.DETNAS.ARCH", "9,9,9", "OUTPUT_DIR", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert errors == [
        "train_net.py: error: arch '9,9,9': item 0: unknown block id 9 (ids 0-3: shuffle_3x3, "
        "shuffle_5x5, shuffle_7x7, shuffle_xception)"
    ], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not out.exists()


# ---- data and arch files -------------------------------------------------------------------------


def test_a_missing_builtin_dataset_names_detectron2_datasets():
    with pytest.raises(DatasetError) as error:
        DatasetCatalog.get("coco_2017_val")
    message = str(error.value)
    assert "dataset 'coco_2017_val': " in message and "instances_val2017.json not found" in message
    assert "DETECTRON2_DATASETS" in message and "the folder that holds coco/" in message


def test_an_unwritable_toy_root_is_one_line_naming_it(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("DETNAS_TOY_ROOT", str(blocker / "toy"))
    with pytest.raises(
        ToyDataError, match=f"cannot write the toy dataset to {blocker}/toy .*DETNAS_TOY_ROOT"
    ):
        ensure_toy_data("det", seed=7)


def test_a_folder_given_as_an_arch_file_is_named_a_folder(tmp_path):
    with pytest.raises(ArchError, match=f"arch {tmp_path} is a folder: give an arch file"):
        load_arch(str(tmp_path), get_space("small"))
    assert issubclass(ArchError, UserError) and issubclass(ArchError, ValueError)


# ---- tools -------------------------------------------------------------------------------------------


def test_submit_checks_the_config_before_it_queues_a_job(tmp_path, capsys):
    jobs = tmp_path / "jobs"
    for opts, message in (
        (["MODEL.FOO", "1"], "no config key MODEL.FOO"),
        (["--num-gpus", "0"], "--num-gpus 0"),
    ):
        argv = [
            "--executor",
            "local",
            "--job-dir",
            str(jobs),
            "--config-file",
            SUBNET_CONFIG,
            *opts,
        ]
        assert message in refused(submit_net.main, argv, capsys)
    assert not jobs.exists()


def test_gpu_check_on_the_cpu_needs_quick(tmp_path, capsys):
    assert gpu_check(["--device", "cpu", "--output-dir", str(tmp_path / "out")]) == 2
    assert "--device cpu runs the check at tiny sizes only: add --quick" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_process_without_a_batch_of_its_own_iterates_over_none(monkeypatch):
    """Fewer recalibration or evaluation batches than processes (e.g. a search resumed with more
    processes on few images): the process without a share runs no batch instead of failing."""
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    dicts = DatasetCatalog.get("toy_det_search")[:4]
    for cache_bytes in (0, 1 << 30):
        batches = InputBatches(dicts, lambda d: d, 4, True, 0, cache_bytes)
        assert (len(batches), list(batches), batches.num_images) == (0, [], 0)
