"""Launching a training through submitit, as Detectron2's and other FAIR projects' SLURM launchers do
(tools/submit.py; pip install detnas-d2[slurm]).

`TrainingJob(main, args)` is a `submitit.helpers.Checkpointable`: on the cluster it runs one task per
node, which starts `args.num_gpus` processes itself (`launch`, as under tools/slurm_train.sbatch), with
--num-machines, --machine-rank and --dist-url taken from the job's SLURM environment (one machine with a
free local port outside SLURM: submitit's local and debug executors). When SLURM preempts the job or its
time limit nears, submitit calls `checkpoint()`, which requeues the same job with --resume: it restarts
from OUTPUT_DIR/last_checkpoint with the model, optimizer, schedule, path sampler and data stream of
that iteration, so the requeued run ends as an uninterrupted one would (README, Stopping and
resuming); at most SOLVER.CHECKPOINT_PERIOD iterations are trained twice. A first run with --resume and
no checkpoint starts from MODEL.WEIGHTS, so a requeue that comes before the first checkpoint is safe too.
"""

import copy
import logging
import os
from typing import Callable, Dict, Mapping, Optional

from .launch import launch
from .slurm import slurm_launch_args

try:
    import submitit
except ImportError as e:  # an optional dependency: the rest of the package runs without it
    raise ImportError(
        "launching through submitit needs it: pip install 'detnas-d2[slurm]' (or submitit)"
    ) from e

__all__ = ["EXECUTORS", "TrainingJob", "job_launch_args", "build_executor", "submit_training"]

logger = logging.getLogger(__name__)

EXECUTORS = (
    "auto",
    "slurm",
    "local",
    "debug",
)  # submitit's: auto picks slurm where sbatch exists, else local


def job_launch_args(env: Mapping[str, str]) -> Dict:
    """{num_machines, machine_rank, dist_url} of this job's task: SLURM's (one task per node), else one
    machine with a free local port."""
    return slurm_launch_args(env) or {"num_machines": 1, "machine_rank": 0, "dist_url": "auto"}


class TrainingJob(submitit.helpers.Checkpointable):
    """One node's task of a training: `main(args)` in `args.num_gpus` processes (module doc)."""

    def __init__(self, main: Callable, args):
        self.main = main
        self.args = args

    def __call__(self):
        args = copy.deepcopy(self.args)
        for key, value in job_launch_args(os.environ).items():
            setattr(args, key, value)
        logger.info(
            f"submitit task: machine {args.machine_rank} of {args.num_machines}, {args.num_gpus} "
            f"processes, {args.dist_url}, resume {args.resume}"
        )
        return launch(
            self.main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )

    def checkpoint(self, *args, **kwargs) -> "submitit.helpers.DelayedSubmission":
        """Called by submitit on preemption or time-out: the same training again, with --resume."""
        requeued = copy.deepcopy(self.args)
        requeued.resume = True
        logger.warning("submitit: requeueing the training with --resume")
        return submitit.helpers.DelayedSubmission(type(self)(self.main, requeued))


def build_executor(
    folder: str,
    executor: str = "auto",
    nodes: int = 1,
    gpus_per_node: int = 8,
    timeout_min: int = 60 * 24,
    max_requeues: int = 30,
    partition: str = "",
    cpus_per_task: int = 0,
    mem_gb: float = 0,
    signal_delay_s: int = 120,
    name: str = "detnas",
    slurm_args: Optional[Dict] = None,
) -> "submitit.Executor":
    """A submitit executor for TrainingJob: `nodes` x one task with `gpus_per_node` GPUs; SLURM signals the
    job `signal_delay_s` before `timeout_min`; a job is requeued after at most `max_requeues` time-outs
    (preemptions do not count). `slurm_args`: any other slurm_* parameter of submitit."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown submitit executor '{executor}'; choose one of {list(EXECUTORS)}")
    if nodes < 1 or gpus_per_node < 0 or timeout_min < 1:
        raise ValueError(
            f"need nodes >= 1, gpus per node >= 0, timeout >= 1 min; got {nodes}, {gpus_per_node}, "
            f"{timeout_min}"
        )
    if executor != "slurm" and executor != "auto" and nodes > 1:
        raise ValueError(
            f"the {executor} executor runs on this machine only: --nodes 1 (got {nodes})"
        )
    cluster = None if executor == "auto" else executor
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=max_requeues)
    params = {
        "name": name,
        "nodes": nodes,
        "tasks_per_node": 1,
        "gpus_per_node": gpus_per_node,
        "timeout_min": timeout_min,
    }
    if cpus_per_task:
        params["cpus_per_task"] = cpus_per_task
    if mem_gb:
        params["mem_gb"] = mem_gb
    if ex.cluster == "slurm":
        params["slurm_signal_delay_s"] = signal_delay_s
        if partition:
            params["slurm_partition"] = partition
        params.update(
            {
                f"slurm_{k}" if not k.startswith("slurm_") else k: v
                for k, v in (slurm_args or {}).items()
            }
        )
    ex.update_parameters(**params)
    return ex


def submit_training(executor: "submitit.Executor", main: Callable, args) -> "submitit.Job":
    """Submit `main(args)` (train_net's) as a TrainingJob."""
    job = executor.submit(TrainingJob(main, args))
    logger.info(f"Submitted job {job.job_id} ({executor.cluster}), logs in {executor.folder}")
    return job
