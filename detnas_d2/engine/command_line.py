"""The command line of train_net.py and search_net.py: Detectron2's arguments, with the launch arguments
defaulting to SLURM's under `srun` (engine/slurm.py) and --dist-url to a free local port on one machine;
`run_command` parses it, checks the config and launches the processes, and reports a user error of any
process (a bad option, config key or value, a refused output folder) as one line with exit status 2
(detnas_d2.user_errors; DETNAS_DEBUG=1 shows the traceback)."""

import os
from typing import Callable, Mapping, Optional

from detectron2.engine import default_argument_parser

from ..config import get_detnas_cfg
from ..config_files import config_file
from ..user_errors import UserError, reporting_user_errors
from .launch import launch
from .slurm import apply_slurm_env, slurm_launch_args

__all__ = ["check_launch_args", "parse_args", "run_command"]

DIST_URL_HELP = (
    "initialization URL of torch.distributed, e.g. tcp://<host of machine rank 0>:<port>. Default: under "
    "SLURM's srun, tcp://<first host of the job>:<port from MASTER_PORT or the job id>; otherwise, on one "
    "machine, 'auto' (a free port on 127.0.0.1, so concurrent runs on one machine do not collide); with "
    "--num-machines > 1 give it explicitly"
)


def parse_args(argv=None, env: Optional[Mapping[str, str]] = None):
    """Detectron2's command-line arguments (train_net.py, search_net.py); under `srun`, --num-machines,
    --machine-rank and --dist-url default to SLURM's values, else to Detectron2's defaults, except that
    --dist-url defaults to "auto" (a free local port, see `launch`) on one machine."""
    parser = default_argument_parser()
    defaults = {k: parser.get_default(k) for k in ("num_machines", "machine_rank", "dist_url")}
    for action in parser._actions:
        if action.dest == "dist_url":
            action.help = DIST_URL_HELP
    parser.set_defaults(num_machines=None, machine_rank=None, dist_url=None)
    args = parser.parse_args(argv)
    env = os.environ if env is None else env
    try:  # a ValueError: the job's SLURM environment (node list, tasks per node)
        slurm = slurm_launch_args(env)
        if args.dist_url is None and slurm is None and (args.num_machines or 1) == 1:
            args.dist_url = "auto"
        args = apply_slurm_env(args, env, defaults)
    except ValueError as e:
        raise UserError(str(e)) from None
    return check_launch_args(args)


def check_launch_args(args):
    """`args` if --num-gpus, --num-machines and --machine-rank can start a run, else a UserError."""
    if args.num_gpus < 1:
        raise UserError(
            f"--num-gpus {args.num_gpus}: give the number of processes per machine, at least 1 (one per "
            "GPU; without CUDA they run on the CPU)"
        )
    if args.num_machines < 1:
        raise UserError(f"--num-machines {args.num_machines}: give at least 1")
    if not 0 <= args.machine_rank < args.num_machines:
        raise UserError(
            f"--machine-rank {args.machine_rank}: this machine's rank among --num-machines "
            f"{args.num_machines}, from 0 to {args.num_machines - 1}"
        )
    return args


def run_command(main: Callable, argv=None, program: str = ""):
    """train_net.py / search_net.py: parse the command line, check the config (a bad file or option
    stops here, before worker processes start), then `main(args)` in --num-gpus processes on this
    machine (`launch`). A UserError of this process or of a worker ends the command as one line on stderr and
    exit status 2 (`program`: the command's name in it, default the script's)."""
    with reporting_user_errors(program):
        args = parse_args(argv)
        try:
            args.config_file = config_file(args.config_file)
        except FileNotFoundError as e:
            raise UserError(str(e)) from None
        # Checked once here rather than in every worker (a single process reads it in main at once).
        if args.num_gpus * args.num_machines > 1:
            get_detnas_cfg(args.config_file, args.opts)
        print("Command Line Args:", args)
        return launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
