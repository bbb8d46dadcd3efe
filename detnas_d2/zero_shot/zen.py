"""Zen-NAS's Zen-score (Lin et al., "Zen-NAS: A Zero-Shot NAS for High-Performance Image Recognition",
ICCV 2021; reference implementation idstcv/ZenNAS, `ZeroShotProxy/compute_zen_score.py`).

The Zen-score measures a network's expressivity at initialisation: how much its pre-pooling feature map
moves under a small perturbation of the input, corrected for the scale BN takes away. With Gaussian
weights (std 1), BN weights 1 and biases 0, BN in train mode (batch statistics), random images x and
noise e (standard Gaussian), gamma = 0.01:

    Zen = log E_batch ||f(x) - f(x + gamma e)||_1  +  sum over BN layers i of log sqrt(mean_j var_ij)

where f is the deepest feature map and var_ij the batch variance of channel j at the input of BN layer
i, here measured on the forward of x (the paper's definition; the reference reads BN's running
variance after the momentum updates of its two forwards, which mixes in the initial 1). The reference removes residual
links; a ShuffleNetV2 unit's pass-through half is no sum but half of its output, so it stays. The score
is the mean over repeats.
"""

import math
from typing import List

import torch
from torch import nn

__all__ = ["MIXUP_GAMMA", "zen_score"]

MIXUP_GAMMA = 1e-2  # the reference's default perturbation size


@torch.no_grad()
def zen_score(
    backbone: nn.Module, images: torch.Tensor, noise: torch.Tensor, gamma: float = MIXUP_GAMMA
) -> float:
    """The Zen-score (module doc) of `backbone` (Gaussian-initialised) on `images`, perturbed by
    `gamma * noise`."""
    backbone.train()
    bns = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    variances: List[torch.Tensor] = []

    def record(module, inputs):
        variances.append(inputs[0].var(dim=(0, 2, 3)).mean())

    hooks = [bn.register_forward_pre_hook(record) for bn in bns]
    try:
        clean = backbone(images)
    finally:
        for hook in hooks:
            hook.remove()
    perturbed = backbone(images + gamma * noise)
    deepest = list(clean)[-1]
    delta = (clean[deepest] - perturbed[deepest]).abs().sum(dim=(1, 2, 3)).mean()
    return math.log(delta.item()) + sum(0.5 * math.log(v.item()) for v in variances)
