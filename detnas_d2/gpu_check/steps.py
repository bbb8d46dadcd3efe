"""Timed training steps of a config's model on one in-memory batch: what the GPU step alone costs.

The model and optimizer are DetNASTrainer's (build_model, detnas_d2.solver), the step is Detectron2's
SimpleTrainer.run_step, or AMPTrainer.run_step with SOLVER.AMP.ENABLED, as in training: forward,
backward, metrics (a non-finite loss raises FloatingPointError), optimizer step. The batch is the same
every iteration, so data loading is left out (the data-pipeline part measures it).
"""

import gc
import itertools
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils.events import EventStorage

from ..engine import DetNASTrainer
from ..modeling import set_model_arch

__all__ = ["StepTiming", "time_training_steps", "release_memory"]


@dataclass
class StepTiming:
    seconds: List[float]  # per timed iteration
    losses: List[float]  # total loss of every iteration, warm-up included
    peak_memory_mb: Optional[float]  # CUDA: the most memory allocated by tensors; None on CPU
    batch: int

    @property
    def s_per_iter(self) -> float:
        return statistics.median(self.seconds)

    @property
    def images_per_s(self) -> float:
        return self.batch / self.s_per_iter

    def to_dict(self) -> Dict:
        return {
            "s_per_iter": round(self.s_per_iter, 6),
            "s_per_iter_min": round(min(self.seconds), 6),
            "s_per_iter_max": round(max(self.seconds), 6),
            "images_per_s": round(self.images_per_s, 3),
            "peak_memory_mb": None
            if self.peak_memory_mb is None
            else round(self.peak_memory_mb, 1),
            "iterations": len(self.seconds),
            "batch": self.batch,
        }


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def time_training_steps(
    cfg,
    batch: Sequence[Dict],
    iters: int,
    warmup: int,
    path: Optional[Callable[[int], Sequence[int]]] = None,
) -> StepTiming:
    """Seconds of each of `iters` training steps after `warmup` untimed ones on `batch`; `path(i)`:
    the supernet's path of iteration i (None: a subnet, or a supernet whose path is set already)."""
    device = torch.device(cfg.MODEL.DEVICE)
    model = DetNASTrainer.build_model(cfg)
    optimizer = DetNASTrainer.build_optimizer(cfg, model)
    trainer_class = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
    trainer = trainer_class(model, itertools.repeat(list(batch)), optimizer)
    seconds, losses = [], []
    release_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with EventStorage(0) as storage:
            trainer.storage = storage
            for i in range(warmup + iters):
                storage.iter = trainer.iter = i
                if path is not None:
                    set_model_arch(model, path(i))
                _sync(device)
                start = time.perf_counter()
                trainer.run_step()
                _sync(device)
                if i >= warmup:
                    seconds.append(time.perf_counter() - start)
                losses.append(float(storage.history("total_loss").latest()))
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    finally:
        del trainer, optimizer, model
        release_memory(device)
    return StepTiming(seconds, losses, peak, len(batch))
