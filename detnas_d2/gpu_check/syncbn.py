"""Part "syncbn": a SyncBN config built and trained by DetNASTrainer in one process.

The toy supernet detector (configs/Toy/det_supernet.yaml) with MODEL.DETNAS.NORM and MODEL.FPN.NORM
SyncBN, as the COCO configs have them. On CUDA it trains inside a one-process NCCL group, so that NCCL
starts on this GPU (a barrier and an all-reduce run) and SyncBN takes its distributed branch; with one
process SyncBN normalises with the local batch, as BN does. Synchronising statistics across GPUs needs
several GPUs and is not checked.
"""

import math
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from ..config import get_detnas_cfg
from ..config_files import config_file
from ..engine import DetNASTrainer
from ..engine.launch import resolve_dist_url
from .results import CheckContext, PartReport

__all__ = ["run", "one_process_group"]

_CONFIG = "configs/Toy/det_supernet.yaml"
_ITERS = {False: 20, True: 3}


@contextmanager
def one_process_group(device: torch.device):
    """Inside: a one-process NCCL group on `device` (CUDA); nothing on CPU, where SyncBN runs without one
    (a gloo group would make it refuse CPU tensors, as in multi-process CPU runs)."""
    if device.type != "cuda" or dist.is_initialized():
        yield False
        return
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", init_method=resolve_dist_url("auto", 1), world_size=1, rank=0)
    try:
        yield True
    finally:
        dist.destroy_process_group()


def run(ctx: CheckContext, report: PartReport):
    iters = _ITERS[ctx.quick]
    cfg = get_detnas_cfg(
        config_file(_CONFIG),
        [
            "MODEL.DETNAS.NORM",
            "SyncBN",
            "MODEL.FPN.NORM",
            "SyncBN",
            "SOLVER.MAX_ITER",
            str(iters),
            "SOLVER.IMS_PER_BATCH",
            "4",
            "SOLVER.CHECKPOINT_PERIOD",
            str(10 * iters),
            "DATASETS.TEST",
            "()",
            "DETNAS.BN_RECALIB.IMAGES",
            "0",
            "MODEL.DEVICE",
            str(ctx.device),
            "OUTPUT_DIR",
            str(ctx.folder("syncbn")),
        ],
    )
    with one_process_group(ctx.device) as grouped:
        if grouped:
            value = torch.ones(1, device=ctx.device)
            dist.barrier()
            dist.all_reduce(value)
            report.check(
                "NCCL: a one-process group starts, a barrier and an all-reduce run",
                value.item() == 1.0,
            )
        trainer = DetNASTrainer(cfg)
        layers = [m for m in trainer.model.modules() if isinstance(m, nn.SyncBatchNorm)]
        before = [m.running_mean.clone() for m in layers]
        trainer.resume_or_load(resume=False)
        trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    changed = sum(not torch.equal(b, m.running_mean) for b, m in zip(before, layers))
    report.data.update(
        {
            "config": _CONFIG,
            "syncbn_layers": len(layers),
            "iterations": len(losses),
            "loss_first": losses[0],
            "loss_last": losses[-1],
            "layers_with_new_statistics": changed,
            "process_group": "nccl, 1 process" if grouped else "none",
        }
    )
    report.check("the config builds SyncBatchNorm layers", len(layers) > 0, f"{len(layers)} layers")
    report.check(
        "training losses are finite",
        all(math.isfinite(v) for v in losses),
        f"{len(losses)} iterations, {losses[0]:.3f} -> {losses[-1]:.3f}",
    )
    report.check(
        "SyncBN layers updated their running statistics", changed > 0, f"{changed} of {len(layers)}"
    )
    report.table(
        "SyncBN (toy supernet detector, backbone and FPN SyncBN)",
        [
            "SyncBN layers",
            "process group",
            "iterations",
            "loss first",
            "loss last",
            "statistics updated",
        ],
        [
            [
                len(layers),
                report.data["process_group"],
                len(losses),
                f"{losses[0]:.4f}",
                f"{losses[-1]:.4f}",
                f"{changed} of {len(layers)}",
            ]
        ],
    )
