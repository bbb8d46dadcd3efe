"""The command line of train_net.py and search_net.py: Detectron2's arguments, with the launch arguments
defaulting to SLURM's under `srun` (engine/slurm.py) and --dist-url to a free local port on one machine."""

import os
from typing import Mapping, Optional

from detectron2.engine import default_argument_parser

from .slurm import apply_slurm_env, slurm_launch_args

__all__ = ["parse_args"]

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
    if args.dist_url is None and slurm_launch_args(env) is None and (args.num_machines or 1) == 1:
        args.dist_url = "auto"
    return apply_slurm_env(args, env, defaults)
