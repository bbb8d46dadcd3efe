"""Backbone constructors that take plain arguments instead of a config, for Detectron2 LazyConfig files
(configs/LazyConfigs/, docs/paper_settings.md):

    from detectron2.config import LazyCall as L
    from detectron2.modeling.backbone import FPN
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool
    from detnas_d2.modeling.lazy_backbones import detnas_subnet_backbone

    backbone = L(FPN)(
        bottom_up=L(detnas_subnet_backbone)(arch="output/search/best_arch.yaml", norm="SyncBN",
                                            out_features=["res2", "res3", "res4", "res5"]),
        in_features="${.bottom_up.out_features}", out_channels=256, norm="SyncBN",
        top_block=L(LastLevelMaxPool)(),
    )

The module is the one `build_detnas_subnet_backbone` builds from MODEL.DETNAS, with the same parameter
names, so a checkpoint of the yacs configs loads into a LazyConfig model and back.
"""

from typing import Optional, Sequence, Union

from ..arch_io import load_arch
from ..search_space import get_space
from .backbone import ShuffleNetV2Subnet

__all__ = ["detnas_subnet_backbone", "stage_channels"]


def detnas_subnet_backbone(
    arch: Union[str, Sequence[int]],
    space: str = "small",
    width_mult: float = 1.0,
    block_style: str = "",
    norm: str = "BN",
    out_features: Optional[Sequence[str]] = None,
    in_channels: int = 3,
    freeze_at: int = 0,
) -> ShuffleNetV2Subnet:
    """The subnet of `arch` (an arch file of any supported format, comma-separated block ids or names,
    or a sequence of ids) in search space `space` (MODEL.DETNAS.SPACE: a shipped space's name or a space
    file; `width_mult`, `block_style`: MODEL.DETNAS.WIDTH_MULT / BLOCK_STYLE), with `norm` layers
    (MODEL.DETNAS.NORM), returning the stage outputs `out_features` (None: all of them); `freeze_at` as
    MODEL.BACKBONE.FREEZE_AT (0: everything trains)."""
    search_space = get_space(space, width_mult, block_style)
    subnet = ShuffleNetV2Subnet(
        search_space, load_arch(arch, search_space), norm, out_features, in_channels
    )
    return subnet.freeze(freeze_at)


def stage_channels(space: str = "small", width_mult: float = 1.0, stage: str = "res5") -> int:
    """The output channels of `stage` (a stage output, e.g. res5) in a space: what a RetinaNet's P6 conv
    takes."""
    search_space = get_space(space, width_mult)
    if stage not in search_space.out_features:
        raise ValueError(
            f"space '{search_space.name}' has no stage {stage}: {search_space.out_features}"
        )
    return search_space.stage_out[search_space.out_features.index(stage)]
