"""Exact training resume: a run killed with SIGKILL between checkpoints and resumed with --resume ends
with the weights of an uninterrupted run, bit for bit (CPU, one thread per process, fixed seed)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KILL_AFTER = "model_0000019.pth"


def _command(out_dir, num_gpus, opts, resume=False):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train_net.py"),
        "--config-file",
        os.path.join(ROOT, "configs", "Toy", "cls_supernet.yaml"),
        "--num-gpus",
        str(num_gpus),
    ]
    return cmd + (["--resume"] if resume else []) + opts + ["OUTPUT_DIR", str(out_dir)]


def _env(num_gpus):
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _run(out_dir, num_gpus, opts, resume=False):
    proc = subprocess.run(
        _command(out_dir, num_gpus, opts, resume),
        env=_env(num_gpus),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout


def _run_and_kill(out_dir, num_gpus, opts):
    """Start a run and SIGKILL it (launcher and workers) once the checkpoint KILL_AFTER is complete."""
    proc = subprocess.Popen(
        _command(out_dir, num_gpus, opts),
        env=_env(num_gpus),
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tag = out_dir / "last_checkpoint"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if tag.exists() and tag.read_text().strip() == KILL_AFTER:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (
        f"the run was not killed mid-way (exit {proc.returncode})"
    )
    assert not (out_dir / "model_final.pth").exists()


def _weights(out_dir):
    return torch.load(out_dir / "model_final.pth", map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow
@pytest.mark.parametrize("num_gpus", [1, 2], ids=["1 process", "2 gloo processes"])
def test_killed_run_resumes_to_the_uninterrupted_weights(tmp_path, num_gpus, toy_training_opts):
    _run(tmp_path / "straight", num_gpus, toy_training_opts)
    _run_and_kill(tmp_path / "killed", num_gpus, toy_training_opts)
    log = _run(tmp_path / "killed", num_gpus, toy_training_opts, resume=True)
    assert "resumes at batch 20" in log, log[-3000:]
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    assert straight.keys() == resumed.keys()
    differing = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not differing, (
        f"{len(differing)} of {len(straight)} tensors differ, first {differing[:3]}"
    )


def test_corrupt_checkpoint_names_the_file_and_the_way_back(tmp_path):
    from torch import nn

    from detnas_d2.checkpoint import DetNASCheckpointer, UnreadableCheckpointError

    checkpointer = DetNASCheckpointer(nn.Linear(2, 2), save_dir=str(tmp_path))
    checkpointer.save("model_0000009")
    checkpointer.save("model_0000019")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000019.pth"
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # written atomically
    (tmp_path / "model_0000019.pth").write_bytes(b"truncated")
    way_back = r"model_0000019\.pth cannot be read as a checkpoint: it is a text file.*'model_0000009\.pth'"
    with pytest.raises(UnreadableCheckpointError, match=way_back):
        checkpointer.resume_or_load("", resume=True)
    # the same checkpointer loads the fallback (Detectron2 main keeps state of a load that raised)
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")  # the fallback the message gives
    assert checkpointer.resume_or_load("", resume=True) is not None


def test_deleted_last_checkpoint_names_the_way_back(tmp_path):
    from torch import nn

    from detnas_d2.checkpoint import DetNASCheckpointer, UnreadableCheckpointError

    checkpointer = DetNASCheckpointer(nn.Linear(2, 2), save_dir=str(tmp_path))
    for name in ("model_0000009", "model_0000019", "model_0000029"):
        checkpointer.save(name)
    (tmp_path / "model_0000029.pth").unlink()
    message = r"model_0000029\.pth: no such checkpoint file\. To resume .*'model_0000019\.pth'"
    with pytest.raises(UnreadableCheckpointError, match=message):
        checkpointer.resume_or_load("", resume=True)
    (tmp_path / "last_checkpoint").write_text("model_0000019.pth")
    assert checkpointer.resume_or_load("", resume=True) is not None
    for name in ("model_0000009", "model_0000019"):
        (tmp_path / f"{name}.pth").unlink()
    with pytest.raises(
        UnreadableCheckpointError, match="No other checkpoint is in its folder: start again"
    ):
        checkpointer.resume_or_load("", resume=True)
