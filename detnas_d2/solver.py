"""Optimizer and LR schedule for every detnas-d2 model (classification and detection).

`build_optimizer` is Detectron2's SGD with its parameter groups (SOLVER.WEIGHT_DECAY_NORM for the
parameters of all norm layers, then SOLVER.WEIGHT_DECAY_BIAS / BIAS_LR_FACTOR, when set, for every bias,
norm biases included) plus one more group: depthwise conv weights get SOLVER.WEIGHT_DECAY_DEPTHWISE
(None: SOLVER.WEIGHT_DECAY); MMRazor's ImageNet recipe gives them none (`dwconv_decay_mult=0`).

Supernets: the blocks that a path leaves out get no gradient (`p.grad is None`; the optimizer's
`zero_grad()` sets grads to None). `torch.optim.SGD` skips such parameters entirely, weight decay and
momentum included, in both its for-loop and foreach paths. Gradient clipping (SOLVER.CLIP_GRADIENTS,
Detectron2's per-parameter clippers) is applied to the parameters that have a gradient only: torch's
clip_grad_value_ fails on a grad-less one. Nothing here adds decay or momentum outside the step.

`build_lr_scheduler` adds SOLVER.LR_SCHEDULER_NAME "WarmupLinearDecay" (after the warm-up, linear to 0
at SOLVER.MAX_ITER) next to Detectron2's "WarmupMultiStepLR" and "WarmupCosineLR". All are
Detectron2 `LRMultiplier`s over fvcore param schedulers, so `hooks.LRScheduler` checkpoints them and
training resumes with the right LR.
"""

import logging
from typing import Any, Dict, List

import torch
from detectron2.solver import build_lr_scheduler as build_d2_lr_scheduler
from detectron2.solver.build import (
    _create_gradient_clipper,
    get_default_optimizer_params,
    reduce_param_groups,
)
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import LinearParamScheduler

__all__ = ["build_optimizer", "build_lr_scheduler", "get_optimizer_params", "is_depthwise_conv"]

logger = logging.getLogger(__name__)


def is_depthwise_conv(module: torch.nn.Module) -> bool:
    """A conv whose every group sees one input channel (groups == in_channels > 1)."""
    return (
        isinstance(module, torch.nn.modules.conv._ConvNd)
        and module.groups > 1
        and module.groups == module.in_channels
    )


def get_optimizer_params(
    model: torch.nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    weight_decay_bias: float,
    weight_decay_depthwise: float,
    bias_lr_factor: float = 1.0,
) -> List[Dict[str, Any]]:
    """`detectron2.solver.build.get_default_optimizer_params` plus a depthwise-weight group."""
    params = get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay=weight_decay,
        weight_decay_norm=weight_decay_norm,
        bias_lr_factor=bias_lr_factor,
        weight_decay_bias=weight_decay_bias,
    )
    depthwise_weights = [
        m.weight for m in model.modules() if is_depthwise_conv(m) and m.weight.requires_grad
    ]
    if not depthwise_weights:
        return params
    # reduce_param_groups expands to per-parameter settings where later entries override earlier ones.
    return reduce_param_groups(
        params + [{"params": depthwise_weights, "weight_decay": weight_decay_depthwise}]
    )


def _sgd_class(cfg):
    """torch SGD, or with SOLVER.CLIP_GRADIENTS a subclass clipping each parameter's gradient first."""
    if not cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
        return torch.optim.SGD
    clip = _create_gradient_clipper(cfg.SOLVER.CLIP_GRADIENTS)

    class SGDWithGradientClip(torch.optim.SGD):
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        clip(p)
            return super().step(closure)

    return SGDWithGradientClip


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum over `get_optimizer_params`, with optional gradient clipping."""
    solver = cfg.SOLVER
    wd_depthwise = solver.WEIGHT_DECAY_DEPTHWISE
    if wd_depthwise is None:
        wd_depthwise = solver.WEIGHT_DECAY
    params = get_optimizer_params(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
        weight_decay_depthwise=wd_depthwise,
        bias_lr_factor=solver.BIAS_LR_FACTOR,
    )
    logger.info(
        "SGD parameter groups: "
        + "; ".join(
            f"{len(g['params'])} tensors lr={g['lr']:g} weight_decay={g['weight_decay']:g}"
            for g in params
        )
    )
    return _sgd_class(cfg)(
        params,
        lr=solver.BASE_LR,
        momentum=solver.MOMENTUM,
        nesterov=solver.NESTEROV,
        weight_decay=solver.WEIGHT_DECAY,
    )


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> LRMultiplier:
    """Detectron2's schedulers plus "WarmupLinearDecay"."""
    solver = cfg.SOLVER
    if solver.LR_SCHEDULER_NAME != "WarmupLinearDecay":
        return build_d2_lr_scheduler(cfg, optimizer)
    if solver.MAX_ITER <= 0:
        raise ValueError(
            f"SOLVER.MAX_ITER must be positive for WarmupLinearDecay, got {solver.MAX_ITER}"
        )
    schedule = WarmupParamScheduler(
        LinearParamScheduler(start_value=1.0, end_value=0.0),
        solver.WARMUP_FACTOR,
        min(solver.WARMUP_ITERS / solver.MAX_ITER, 1.0),
        solver.WARMUP_METHOD,
    )
    return LRMultiplier(optimizer, multiplier=schedule, max_iter=solver.MAX_ITER)
