"""Submit a training step through submitit (docs/slurm_submitit.md): the options of train_net.py, plus
where and how long to run. One task per node starts --num-gpus processes; on preemption or time-out the
job is requeued with --resume and continues exactly from its last checkpoint.

    python tools/submit.py --nodes 2 --num-gpus 8 --partition gpu --timeout-min 4320 \
        --job-dir output/submitit/%j --config-file configs/COCO-Detection/supernet_small_FPN_1x.yaml \
        MODEL.WEIGHTS output/imagenet/supernet_small/model_final.pth
    python tools/submit.py --executor local --num-gpus 1 --wait --config-file configs/Toy/cls_supernet.yaml

Needs submitit (pip install 'detnas-d2[slurm]').
"""

import argparse
import sys

import detnas_d2  # noqa: F401  (compat shims, registrations)

from detnas_d2.config import get_detnas_cfg
from detnas_d2.config_files import config_file
from detnas_d2.engine import parse_args
from detnas_d2.engine.submit import EXECUTORS, build_executor, submit_training
from detnas_d2.train_net import main as train_main
from detnas_d2.user_errors import UserError, reporting_user_errors


def get_parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0] + " Other options go to train_net.py (see its --help).",
        allow_abbrev=False,
    )
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="auto",
        help="slurm; local (this machine, for tests); debug (in this process); auto: slurm where "
        "sbatch exists, else local",
    )
    p.add_argument(
        "--job-dir", default="output/submitit/%j", help="submitit's logs and pickles (%%j: job id)"
    )
    p.add_argument("--nodes", type=int, default=1, help="machines; --num-gpus processes on each")
    p.add_argument(
        "--timeout-min", type=int, default=60 * 24, help="time limit of one run of the job"
    )
    p.add_argument("--partition", default="", help="SLURM partition")
    p.add_argument(
        "--cpus-per-task", type=int, default=0, help="CPU cores per node (0: SLURM's default)"
    )
    p.add_argument("--mem-gb", type=float, default=0, help="memory per node (0: SLURM's default)")
    p.add_argument(
        "--signal-delay-s",
        type=int,
        default=120,
        help="SLURM signals the job this long before its time limit, to requeue it",
    )
    p.add_argument(
        "--max-requeues", type=int, default=30, help="time-outs after which the job is not requeued"
    )
    p.add_argument("--name", default="detnas", help="job name")
    p.add_argument("--wait", action="store_true", help="wait for the job to end (and fail with it)")
    return p


def main(argv=None) -> int:
    ours, rest = get_parser().parse_known_args(argv)
    with reporting_user_errors("submit.py"):  # a bad option or config: before anything is queued
        args = parse_args(rest, env={})  # the job's own SLURM environment sets the launch arguments
        try:
            args.config_file = config_file(args.config_file)
        except FileNotFoundError as e:
            raise UserError(str(e)) from None
        get_detnas_cfg(args.config_file, args.opts)
    try:
        executor = build_executor(
            ours.job_dir,
            ours.executor,
            nodes=ours.nodes,
            gpus_per_node=args.num_gpus,
            timeout_min=ours.timeout_min,
            max_requeues=ours.max_requeues,
            partition=ours.partition,
            cpus_per_task=ours.cpus_per_task,
            mem_gb=ours.mem_gb,
            signal_delay_s=ours.signal_delay_s,
            name=ours.name,
        )
    except ValueError as e:
        print(f"submit.py: error: {e}", file=sys.stderr)
        return 2
    job = submit_training(executor, train_main, args)
    print(
        f"Submitted job {job.job_id} ({executor.cluster}): {ours.nodes} node(s) x {args.num_gpus} GPU(s), "
        f"logs in {ours.job_dir.replace('%j', str(job.job_id))}"
    )
    if ours.wait:
        job.result()
        print(f"Job {job.job_id} finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
