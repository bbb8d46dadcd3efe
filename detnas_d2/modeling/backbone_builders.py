"""Backbone builders registered in Detectron2's BACKBONE_REGISTRY (set MODEL.BACKBONE.NAME to one).

Options: MODEL.DETNAS.{SPACE (a shipped space or a space file), WIDTH_MULT, BLOCK_STYLE, NORM, OUT_FEATURES,
PAIRED_INIT}, MODEL.DETNAS.ARCH (subnets only),
MODEL.BACKBONE.FREEZE_AT (0: train everything; Detectron2's default 2 freezes the stem and res2),
MODEL.FPN.{IN_FEATURES, OUT_CHANNELS, NORM, FUSE_TYPE} for the FPN forms.

- build_detnas_{supernet,subnet}_backbone: the plain backbone (classification, C4 heads).
- build_detnas_{supernet,subnet}_fpn_backbone: FPN with P2-P6 (max-pool on top), for Faster R-CNN.
- build_detnas_{supernet,subnet}_retinanet_fpn_backbone: FPN from FPN.IN_FEATURES (C3-C5) with P6/P7
  computed from res5, for RetinaNet.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7

from ..arch_io import load_arch
from ..search_space import space_from_cfg
from .backbone import ShuffleNetV2Subnet, ShuffleNetV2Supernet

__all__ = [
    "build_detnas_supernet_backbone",
    "build_detnas_subnet_backbone",
    "build_detnas_supernet_fpn_backbone",
    "build_detnas_subnet_fpn_backbone",
    "build_detnas_supernet_retinanet_fpn_backbone",
    "build_detnas_subnet_retinanet_fpn_backbone",
]


def _init_seed(cfg):
    """The seed of MODEL.DETNAS.PAIRED_INIT (the run's SEED); None when it is off."""
    if not cfg.MODEL.DETNAS.PAIRED_INIT:
        return None
    if cfg.SEED < 0:
        raise ValueError(
            f"MODEL.DETNAS.PAIRED_INIT draws the backbone's initial weights from SEED, but SEED is {cfg.SEED} "
            "(a random seed per run): set SEED to a non-negative integer, the same for the runs to pair"
        )
    return cfg.SEED


@BACKBONE_REGISTRY.register()
def build_detnas_supernet_backbone(cfg, input_shape: ShapeSpec):
    """The supernet; no arch is selected (set_arch, RandomPathHook or the search select one)."""
    d = cfg.MODEL.DETNAS
    if d.ARCH.strip():
        raise ValueError(
            f"MODEL.DETNAS.ARCH is set ({d.ARCH}), but {cfg.MODEL.BACKBONE.NAME} builds a supernet, which "
            "holds every arch: leave ARCH empty (MODEL.DETNAS.REFERENCE_ARCH sets the arch supernet "
            "evaluation runs), or train the subnet with a build_detnas_subnet_* backbone"
        )
    backbone = ShuffleNetV2Supernet(
        space_from_cfg(cfg), d.NORM, d.OUT_FEATURES, input_shape.channels, _init_seed(cfg)
    )
    return backbone.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_detnas_subnet_backbone(cfg, input_shape: ShapeSpec):
    """The subnet of MODEL.DETNAS.ARCH (an arch file or comma-separated block ids)."""
    d = cfg.MODEL.DETNAS
    space = space_from_cfg(cfg)
    if not d.ARCH.strip():
        raise ValueError(
            f"MODEL.DETNAS.ARCH is empty, but {cfg.MODEL.BACKBONE.NAME} builds a subnet: set it to an arch "
            "file (e.g. the result of search_net.py) or comma-separated block ids"
        )
    arch = load_arch(d.ARCH, space)
    backbone = ShuffleNetV2Subnet(
        space, arch, d.NORM, d.OUT_FEATURES, input_shape.channels, _init_seed(cfg)
    )
    return backbone.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


def _fpn(cfg, bottom_up, top_block):
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    available = bottom_up.output_shape()
    if not in_features or any(f not in available for f in in_features):
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES {in_features} must be a non-empty list of backbone features "
            f"{list(available)} (MODEL.DETNAS.OUT_FEATURES), e.g. res2-res5 for Faster R-CNN, "
            "res3-res5 for RetinaNet"
        )
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def _retinanet_fpn(cfg, bottom_up):
    if "res5" not in bottom_up.output_shape():
        raise ValueError(
            "a RetinaNet FPN computes P6/P7 from res5: add res5 to MODEL.DETNAS.OUT_FEATURES"
        )
    top_block = LastLevelP6P7(bottom_up.output_shape()["res5"].channels, cfg.MODEL.FPN.OUT_CHANNELS)
    return _fpn(cfg, bottom_up, top_block)


@BACKBONE_REGISTRY.register()
def build_detnas_supernet_fpn_backbone(cfg, input_shape: ShapeSpec):
    return _fpn(cfg, build_detnas_supernet_backbone(cfg, input_shape), LastLevelMaxPool())


@BACKBONE_REGISTRY.register()
def build_detnas_subnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    return _fpn(cfg, build_detnas_subnet_backbone(cfg, input_shape), LastLevelMaxPool())


@BACKBONE_REGISTRY.register()
def build_detnas_supernet_retinanet_fpn_backbone(cfg, input_shape: ShapeSpec):
    return _retinanet_fpn(cfg, build_detnas_supernet_backbone(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_detnas_subnet_retinanet_fpn_backbone(cfg, input_shape: ShapeSpec):
    return _retinanet_fpn(cfg, build_detnas_subnet_backbone(cfg, input_shape))
