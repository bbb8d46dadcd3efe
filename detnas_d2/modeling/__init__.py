"""DetNAS backbones (supernet, subnet, FPN forms registered in BACKBONE_REGISTRY), the block registry
(DETNAS_BLOCK_REGISTRY: the types a space file names) and heads."""

from .backbone import (
    ShuffleNetV2Subnet,
    ShuffleNetV2Supernet,
    find_detnas_backbone,
    find_supernet,
    set_model_arch,
    subnet_state_dict_from_supernet,
)
from .backbone_builders import (
    build_detnas_subnet_backbone,
    build_detnas_subnet_fpn_backbone,
    build_detnas_subnet_retinanet_fpn_backbone,
    build_detnas_supernet_backbone,
    build_detnas_supernet_fpn_backbone,
    build_detnas_supernet_retinanet_fpn_backbone,
)
from .blocks import DETNAS_BLOCK_REGISTRY, Stem, build_block, check_space_blocks
from .bn import bn_layers
from .classifier import DetNASClassifier
from .heads import ClassifierHead
from .inverted_residual import InvertedResidual

__all__ = [
    "DETNAS_BLOCK_REGISTRY",
    "ClassifierHead",
    "InvertedResidual",
    "DetNASClassifier",
    "ShuffleNetV2Subnet",
    "ShuffleNetV2Supernet",
    "Stem",
    "bn_layers",
    "build_block",
    "check_space_blocks",
    "build_detnas_subnet_backbone",
    "build_detnas_subnet_fpn_backbone",
    "build_detnas_subnet_retinanet_fpn_backbone",
    "build_detnas_supernet_backbone",
    "build_detnas_supernet_fpn_backbone",
    "build_detnas_supernet_retinanet_fpn_backbone",
    "find_detnas_backbone",
    "find_supernet",
    "set_model_arch",
    "subnet_state_dict_from_supernet",
]
