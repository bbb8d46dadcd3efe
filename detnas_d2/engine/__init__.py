"""Training: the trainer, random-path hook and samplers, launch (CPU/GPU, SLURM)."""

from .command_line import parse_args, run_command
from .hooks import RandomPathHook
from .launch import create_ddp_model, launch
from .sampling import (
    FlopsBinSampler,
    UniformPathSampler,
    build_path_sampler,
    path_rng,
    reference_arch,
)
from .slurm import apply_slurm_env, expand_nodelist, slurm_launch_args
from .trainer import DetNASTrainer, evaluation_arch

__all__ = [
    "DetNASTrainer",
    "FlopsBinSampler",
    "RandomPathHook",
    "UniformPathSampler",
    "apply_slurm_env",
    "build_path_sampler",
    "create_ddp_model",
    "evaluation_arch",
    "expand_nodelist",
    "launch",
    "parse_args",
    "path_rng",
    "reference_arch",
    "run_command",
    "slurm_launch_args",
]
