"""Launching through submitit (detnas_d2/engine/submit.py, tools/submit.py): the job's launch arguments,
the requeue with --resume, and, with submitit's local executor, a training interrupted as SLURM preempts a
job (submitit's signal), requeued and resumed, ending with the weights of an uninterrupted run, bit for
bit."""

import argparse
import os
import signal
import time

import detnas_d2  # noqa: F401  (compat shims, registrations)
from detnas_d2 import submit_net

import pytest
import torch

from detnas_d2.engine import parse_args
from detnas_d2.engine.submit import TrainingJob, build_executor, job_launch_args, submit_training
from detnas_d2.train_net import main as train_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _args(out_dir, opts):
    config = os.path.join(ROOT, "configs", "Toy", "cls_supernet.yaml")
    return parse_args(
        ["--config-file", config, "--num-gpus", "1", *opts, "OUTPUT_DIR", str(out_dir)], env={}
    )


def _record(args):
    return args  # what the job launched with (one process: launch returns main's result)


def test_job_launch_args_come_from_slurm_or_one_local_machine():
    assert job_launch_args({}) == {"num_machines": 1, "machine_rank": 0, "dist_url": "auto"}
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "1",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
    }
    got = job_launch_args(slurm)
    assert (got["num_machines"], got["machine_rank"]) == (2, 1)
    assert got["dist_url"].startswith("tcp://gpu07:")


def test_job_runs_main_with_the_job_launch_arguments_and_requeues_with_resume(
    tmp_path, toy_training_opts
):
    args = _args(tmp_path, toy_training_opts)
    args.num_machines, args.machine_rank, args.dist_url = (
        3,
        2,
        "tcp://elsewhere:1",
    )  # the submitting host's
    job = TrainingJob(_record, args)
    ran = job()
    assert (ran.num_machines, ran.machine_rank, ran.dist_url) == (1, 0, "auto") and not ran.resume
    requeued = job.checkpoint()
    assert isinstance(requeued.function, TrainingJob) and requeued.function.main is _record
    assert requeued.function.args.resume and not job.args.resume  # the job itself is left as it was
    assert vars(requeued.function.args) == {**vars(args), "resume": True}


def test_executor_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown submitit executor 'pbs'"):
        build_executor(str(tmp_path), "pbs")
    with pytest.raises(ValueError, match="runs on this machine only"):
        build_executor(str(tmp_path), "local", nodes=2)
    executor = build_executor(str(tmp_path / "%j"), "local", gpus_per_node=0, timeout_min=5)
    assert executor.cluster == "local"


def _weights(out_dir):
    return torch.load(
        os.path.join(out_dir, "model_final.pth"), map_location="cpu", weights_only=True
    )["model"]


def _task_pids(controller_pid):
    """The processes started by the local executor's controller: the job's tasks."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == controller_pid:
            pids.append(int(entry))
    return pids


def _wait_for_checkpoint(out_dir, name, job, timeout_s=300):
    tag = os.path.join(out_dir, "last_checkpoint")
    deadline = time.time() + timeout_s
    while time.time() < deadline and not job.done():
        if os.path.exists(tag) and open(tag).read().strip() == name:
            return
        time.sleep(0.01)
    raise AssertionError(
        f"{name} was not written before the job ended (state {job.state}): {job.stderr()}"
    )


@pytest.mark.slow
def test_preempted_job_is_requeued_and_resumes_to_the_uninterrupted_weights(
    tmp_path, monkeypatch, toy_training_opts
):
    monkeypatch.setenv(
        "OMP_NUM_THREADS", "1"
    )  # the jobs' processes: one thread, so runs repeat bit for bit
    executor = build_executor(
        str(tmp_path / "jobs" / "%j"), "local", gpus_per_node=0, timeout_min=10
    )
    straight = submit_training(
        executor, train_main, _args(tmp_path / "straight", toy_training_opts)
    )
    preempted = submit_training(
        executor, train_main, _args(tmp_path / "preempted", toy_training_opts)
    )
    _wait_for_checkpoint(tmp_path / "preempted", "model_0000009.pth", preempted)
    # What SLURM does before a preemption or the time limit: the job's task gets submitit's signal (USR2).
    tasks = _task_pids(preempted._process.pid)
    assert len(tasks) == 1, tasks
    os.kill(tasks[0], signal.SIGUSR2)
    for job in (straight, preempted):
        job.result()  # raises if the job failed
    log = (tmp_path / "preempted" / "log.txt").read_text()
    assert "requeueing the training with --resume" in preempted.stderr() + preempted.stdout() + log
    resumed_at = [
        int(line.split("resumes at batch ")[1].split()[0])
        for line in log.splitlines()
        if "resumes at batch" in line
    ]
    assert resumed_at and 10 <= resumed_at[0] < 40, log[-3000:]
    straight_w, resumed_w = _weights(tmp_path / "straight"), _weights(tmp_path / "preempted")
    assert straight_w.keys() == resumed_w.keys()
    differing = [k for k in straight_w if not torch.equal(straight_w[k], resumed_w[k])]
    assert not differing, (
        f"{len(differing)} of {len(straight_w)} tensors differ, first {differing[:3]}"
    )


def test_tool_submits_with_the_training_options(tmp_path, monkeypatch, capsys):
    tool = submit_net
    submitted = {}

    def fake_submit(executor, main, args):
        submitted.update(executor=executor, main=main, args=args)
        return argparse.Namespace(job_id="1")

    monkeypatch.setattr(tool, "submit_training", fake_submit)
    config = os.path.join(ROOT, "configs", "Toy", "cls_supernet.yaml")
    rc = tool.main(
        [
            "--executor",
            "local",
            "--job-dir",
            str(tmp_path / "%j"),
            "--num-gpus",
            "2",
            "--timeout-min",
            "30",
            "--config-file",
            config,
            "SOLVER.MAX_ITER",
            "7",
        ]
    )
    assert rc == 0 and submitted["main"] is train_main
    args = submitted["args"]
    assert (args.config_file, args.num_gpus, args.opts) == (config, 2, ["SOLVER.MAX_ITER", "7"])
    assert submitted["executor"].cluster == "local" and "Submitted job 1" in capsys.readouterr().out
