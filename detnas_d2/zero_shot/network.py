"""The network a zero-shot score is computed on: an arch's subnet backbone built with the project's
builder (BN, nothing frozen), its weights drawn from a seeded Gaussian, and seeded random input.

Initialisation is paired: every conv's weights are drawn from a generator seeded by (seed, the module's
name, and for a searchable layer the block it holds), so two archs that share a block at a layer start
with the same weights there, and every arch sees the same random images for a seed. Their scores differ
by their blocks, not by the draw (common random numbers, as MODEL.DETNAS.PAIRED_INIT for training).
"""

import zlib
from typing import Sequence, Tuple

import torch
from detectron2.layers import ShapeSpec
from torch import nn

from ..modeling import build_detnas_subnet_backbone
from ..search_space import arch_to_str

__all__ = ["build_scoring_backbone", "gaussian_init", "layer_of", "random_images"]

LAYER_PREFIX = "layers."  # a subnet's searchable layer i holds its modules under `layers.{i}.`


def build_scoring_backbone(cfg, arch: Sequence[int]) -> nn.Module:
    """The subnet backbone of `arch` in the space of `cfg` (MODEL.DETNAS.*), on the CPU. The scores are
    defined on BN networks: MODEL.DETNAS.NORM is replaced by plain BN (SyncBN needs a process group,
    frozen BN has no batch statistics), nothing is frozen and the weights are those of `gaussian_init`."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.DETNAS.ARCH = arch_to_str(arch)
    cfg.MODEL.DETNAS.NORM = "BN"
    cfg.MODEL.DETNAS.PAIRED_INIT = False
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return build_detnas_subnet_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))


def layer_of(name: str) -> int:
    """The searchable layer a module of a subnet belongs to (by its name), -1 for the stem and the rest."""
    if not name.startswith(LAYER_PREFIX):
        return -1
    return int(name[len(LAYER_PREFIX) :].split(".", 1)[0])


def _generator(*key) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32("/".join(map(str, key)).encode()))


@torch.no_grad()
def gaussian_init(
    backbone: nn.Module, arch: Sequence[int], seed: Tuple[int, int], std: float = 1.0
):
    """Conv and linear weights N(0, std^2) (paired, module doc), biases 0, BN and GN weights 1 and
    biases 0 with fresh running statistics: the initialisation of MAE-DET's and Zen-NAS's scores."""
    for name, module in backbone.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            layer = layer_of(name)
            block = arch[layer] if layer >= 0 else -1
            weight = torch.randn(module.weight.shape, generator=_generator(*seed, name, block))
            module.weight.copy_(weight.to(module.weight) * std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()


def random_images(
    seed: Tuple[int, int], count: int, batch_size: int, channels: int, size: int, device
) -> Tuple[torch.Tensor, ...]:
    """`count` batches of `batch_size` standard Gaussian images (channels x size x size), the same for
    every arch for a seed."""
    generator = _generator(*seed, "images")
    return tuple(
        torch.randn((batch_size, channels, size, size), generator=generator).to(device)
        for _ in range(count)
    )
