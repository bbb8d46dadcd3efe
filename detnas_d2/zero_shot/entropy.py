"""MAE-DET's multi-scale entropy (Sun et al., "MAE-DET: Revisiting Maximum Entropy Principle in
Zero-Shot NAS for Efficient Object Detection", ICML 2022), following the reference implementation
(alibaba/lightweight-neural-architecture-search, `ComputeEntropyScore` and the blocks' `entropy_forward`).

A network at initialisation, seen as a Gaussian channel, carries an information of about the differential
entropy of its feature maps, which for Gaussian features is log(std) up to constants. The reference
computes it on the network made linear: Gaussian weights (std 1), random Gaussian images (std 1), BN and
ReLU skipped, and every conv's output divided by its own std (so nothing overflows); a block's log std is
the sum of its convs' log stds, residual links are skipped. A stage's entropy is the sum of the log stds of
every block up to the stage's end plus log(its channels); the score is the weighted sum of the stage
entropies over the five downsampling levels (strides 2 to 32), weights (0, 0, 1, 1, 6) by default: a
detector reads the deep, coarse features most. The score is the mean over repeats (4 in the reference).

Here the levels are the stem (stride 2) and the space's stages (res2..res5 at strides 4 to 32). The
backbone runs as built, with its BN and activation modules passed through and every conv's output divided
by its std; each conv on the main path adds log(std(output) / std(input)) (its gain: the log std of its
output for an input of std 1, as in the reference) to its level. The convs of a ShuffleNetV2 unit's
projection branch (`branch_proj`), the analogue of the reference's skipped residual projection, run (they
feed the concatenation) but add nothing; a unit's pass-through half is its skip link.
"""

import math
from contextlib import contextmanager
from typing import List, Sequence

import torch
from torch import nn

from .network import layer_of

__all__ = ["DEFAULT_STAGE_WEIGHTS", "SHORTCUT_MODULES", "multi_scale_entropy"]

DEFAULT_STAGE_WEIGHTS = (0.0, 0.0, 1.0, 1.0, 6.0)  # the reference's, strides 2, 4, 8, 16, 32
SHORTCUT_MODULES = ("branch_proj",)  # module names of shortcut branches: their convs add nothing
_PASSED_THROUGH = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.Hardswish,
    nn.SiLU,
)


def _identity(module, inputs, output):
    return inputs[0]


@contextmanager
def _linear_normalised(backbone: nn.Module, space, gains: List[float], ran: List[bool]):
    """Inside: norms and activations pass their input through, every conv's output is divided by its std
    and the log gain of each main-path conv is added to `gains[level]` (0: the stem, s + 1: stage s);
    `ran[level]` tells that one did."""
    stage_of = [spec.stage for spec in space.layers()]
    hooks = []

    def record(level):
        def hook(module, inputs, output):
            std = output.std()
            if level is not None:
                gains[level] += math.log(std.item()) - math.log(inputs[0].std().item())
                ran[level] = True
            return output / std

        return hook

    for name, module in backbone.named_modules():
        if isinstance(module, _PASSED_THROUGH):
            hooks.append(module.register_forward_hook(_identity))
        elif isinstance(module, nn.Conv2d):
            layer = layer_of(name)
            shortcut = any(part in SHORTCUT_MODULES for part in name.split("."))
            level = None if shortcut else (0 if layer < 0 else stage_of[layer] + 1)
            hooks.append(module.register_forward_hook(record(level)))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def level_channels(space) -> List[int]:
    """The channels of each level's output: the stem's, then every stage's."""
    last = {spec.stage: spec.out_channels for spec in space.layers()}
    return [space.stem_out] + [last[s] for s in sorted(last)]


@torch.no_grad()
def multi_scale_entropy(
    backbone: nn.Module, space, images: torch.Tensor, stage_weights: Sequence[float]
) -> float:
    """The multi-scale entropy (module doc) of `backbone` (a subnet of `space`, Gaussian-initialised) on
    `images`; `stage_weights`: one per level (the stem, then the stages)."""
    channels = level_channels(space)
    if len(stage_weights) != len(channels):
        raise ValueError(
            f"DETNAS.SEARCH.ZERO_SHOT.STAGE_WEIGHTS has {len(stage_weights)} weights, but space "
            f"'{space.name}' has {len(channels)} feature levels (the stem and {len(channels) - 1} "
            "stages): give one weight per level"
        )
    gains, ran = [0.0] * len(channels), [False] * len(channels)
    backbone.eval()
    with _linear_normalised(backbone, space, gains, ran):
        backbone(images)
    missing = [level for level, weight in enumerate(stage_weights) if weight and not ran[level]]
    if missing:
        raise ValueError(
            f"the backbone does not run feature level {missing[0]} (a stage after its deepest output): "
            "MODEL.DETNAS.OUT_FEATURES must include the last stage for the multi-scale entropy"
        )
    score, log_std = 0.0, 0.0
    for gain, width, weight in zip(gains, channels, stage_weights):
        log_std += gain  # the log std of the level's output: every conv before it on the main path
        score += weight * (log_std + math.log(width))
    return score
