"""Launch arguments from simulated SLURM environments, and train_net.py's command line under SLURM."""

import os
import shutil
import subprocess
import sys

from detnas_d2 import train_net

import pytest

from detnas_d2.engine.slurm import expand_nodelist, slurm_launch_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "nodelist,hosts",
    [
        ("node07", ["node07"]),
        ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
        ("a[1-2],b3", ["a1", "a2", "b3"]),
        ("gpu-[001-003]-x", ["gpu-001-x", "gpu-002-x", "gpu-003-x"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("r[1-2]c[09-10]", ["r1c09", "r1c10", "r2c09", "r2c10"]),
        ("x.cluster,y[2,5].cluster", ["x.cluster", "y2.cluster", "y5.cluster"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize(
    "nodelist,message",
    [
        ("", "empty"),
        ("node[01-", r"unmatched '\['"),
        ("node[a-b]", "bad range 'a-b'"),
        ("n[5-3]", "descending"),
        ("a,,b", "empty entry"),
    ],
)
def test_bad_nodelist(nodelist, message):
    with pytest.raises(ValueError, match=message):
        expand_nodelist(nodelist)


def srun_env(**extra):
    env = {
        "SLURM_JOB_ID": "123456",
        "SLURM_PROCID": "1",
        "SLURM_NODEID": "1",
        "SLURM_NNODES": "2",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
    }
    env.update(extra)
    return env


def test_multi_and_single_node():
    args = slurm_launch_args(srun_env())
    # Port from the job id (20000 + id % 20000): the same on every node, another for another job.
    assert args == {"num_machines": 2, "machine_rank": 1, "dist_url": "tcp://gpu07:23456"}
    assert slurm_launch_args(srun_env(SLURM_NODEID="0"))["dist_url"] == args["dist_url"]
    assert slurm_launch_args(srun_env(SLURM_JOB_ID="123457"))["dist_url"] != args["dist_url"]
    assert slurm_launch_args(srun_env(MASTER_PORT="29500"))["dist_url"] == "tcp://gpu07:29500"
    # The step's own node list wins over the job's (a step on part of the allocation).
    step = srun_env(
        SLURM_STEP_NODELIST="gpu08",
        SLURM_STEP_NUM_NODES="1",
        SLURM_STEP_NUM_TASKS="1",
        SLURM_NODEID="0",
    )
    assert slurm_launch_args(step)["num_machines"] == 1 and slurm_launch_args(step)[
        "dist_url"
    ].startswith("tcp://gpu08:")
    single = {
        "SLURM_JOB_ID": "77",
        "SLURM_PROCID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NNODES": "1",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NODELIST": "node3",
    }
    assert slurm_launch_args(single) == {
        "num_machines": 1,
        "machine_rank": 0,
        "dist_url": "tcp://node3:20077",
    }


def test_outside_srun_and_bad_task_layout():
    assert slurm_launch_args({}) is None
    assert (
        slurm_launch_args({"SLURM_JOB_ID": "5"}) is None
    )  # salloc shell / batch script without srun
    with pytest.raises(ValueError, match="16 tasks on 2 nodes.*one task per node"):
        slurm_launch_args(srun_env(SLURM_NTASKS="16"))
    with pytest.raises(ValueError, match="names 3 hosts, SLURM says 2 nodes"):
        slurm_launch_args(srun_env(SLURM_JOB_NODELIST="a[1-3]"))


def test_train_net_takes_slurm_values_unless_given():
    args = train_net.parse_args(["--num-gpus", "8", "--config-file", "x.yaml"], env=srun_env())
    assert (args.num_gpus, args.num_machines, args.machine_rank) == (8, 2, 1)
    assert args.dist_url.startswith("tcp://gpu07:")
    args = train_net.parse_args(["--machine-rank", "0", "--dist-url", "tcp://h:1"], env=srun_env())
    assert (args.num_machines, args.machine_rank, args.dist_url) == (2, 0, "tcp://h:1")
    args = train_net.parse_args(
        [], env={}
    )  # no SLURM: Detectron2's defaults, a free port on one machine
    assert (args.num_machines, args.machine_rank, args.dist_url) == (1, 0, "auto")
    args = train_net.parse_args(["--num-machines", "2"], env={})  # several machines: no "auto"
    assert args.dist_url.startswith("tcp://") and args.dist_url != "auto"
    single = {
        "SLURM_JOB_ID": "77",
        "SLURM_PROCID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NNODES": "1",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NODELIST": "node3",
    }
    assert (
        train_net.parse_args([], env=single).dist_url == "tcp://node3:20077"
    )  # srun: the job's port


@pytest.mark.slow
def test_dist_url_help_names_the_defaults():
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_net.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    help_text = " ".join(result.stdout.split())
    assert "'auto' (a free port on 127.0.0.1" in help_text and "SLURM's srun" in help_text


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_sbatch_script_is_valid_bash_with_requeue():
    script = os.path.join(REPO, "tools", "slurm_train.sbatch")
    subprocess.run(["bash", "-n", script], check=True)
    text = open(script).read()
    assert "#SBATCH --requeue" in text and "--resume" in text and "--ntasks-per-node=1" in text
