"""Which layout a checkpoint's state dict is in, found from its keys, and the state dict inside a
checkpoint's container: shared by the conversions of MMRazor's layout (`mmrazor`) and of the official
DetNAS code's (`official`). Pure functions over state dicts; see docs/design.md ("Checkpoint layouts").

Layouts:

- ``detnas-d2`` (ours): a ShuffleNetV2 under some prefix, ``<p>stem.conv.*``, ``<p>layers.<i>.*`` (a subnet)
  or ``<p>layers.<i>.choices.<id>.*`` (a supernet); classifier ``head.conv`` / ``head.linear``; Detectron2's
  FPN, RPN and ROI heads.
- ``mmrazor-1.x``: ``[architecture.]backbone.conv1.{conv,bn}``, ``backbone.layers.<stage>.<block>._candidates.
  <name>.branch1|branch2...`` (a fixed subnet keeps its one chosen candidate), ``backbone.layers.4`` (the
  640->1024 conv of the classifier), ``head.fc`` (mmcls), ``neck`` / ``rpn_head`` / ``roi_head.bbox_head``
  (MMDetection Faster R-CNN FPN with ``Shared4Conv1FCBBoxHead``).
- ``mmrazor-0.x``: the same modules with ``.choices.`` instead of ``._candidates.``, under
  ``architecture.model.``.
- ``official-detnas`` (Megvii: ShuffleNet-Series ``DetNAS/network.py``, DetNAS ``Supernet-ImageNet/
  detnasnet.py``, its maskrcnn_benchmark backbone): ``[module.][backbone.body.]first_conv.{conv,bn}``,
  ``features.<i>[.<choice>].{conv.<j>,proj_conv}.<module>`` (module names in `official`, they name the
  blocks), ``last_conv.{conv,bn}``, ``fc.fc``. Another network than MMRazor's: it loads into a model of
  block style ``official`` (search_space.py), whose parameters have the same names as ours.
- ``official-oneshot`` (ShuffleNet-Series ``OneShot``, SPOS with searched channel widths): detected and
  refused (`official.MegviiLayoutError`): its mid channels are not those of the DetNAS space.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

__all__ = [
    "FORMATS",
    "LAYOUTS_TRIED",
    "DETNAS_STEM",
    "Conversion",
    "UnknownLayoutError",
    "unwrap_state_dict",
    "stem_key",
    "detect_format",
    "key_group",
]

FORMATS = ("detnas-d2", "mmrazor-1.x", "mmrazor-0.x", "official-detnas", "official-oneshot")
LAYOUTS_TRIED = (
    "detnas-d2 (a key '<prefix>stem.conv.weight')",
    "MMRazor 1.x / 0.x DetNAS or SPOS, classifier or MMDetection detector "
    "('[architecture.[model.]]backbone.conv1.conv.weight')",
    "official DetNAS / ShuffleNet-Series, classifier, supernet or maskrcnn_benchmark detector "
    "('[module.][backbone.body.]first_conv.conv.weight')",
    "official ShuffleNet-Series OneShot ('[module.]first_conv.0.weight' with 'features.<i>.branch_main')",
)
MMRAZOR_STEM = "backbone.conv1.conv.weight"
OFFICIAL_STEM = "first_conv.conv.weight"
ONESHOT_STEM = "first_conv.0.weight"
DETNAS_STEM = "stem.conv.weight"
# Containers: mmengine / mmcv ('state_dict'), Detectron2 / fvcore ('model'), other trainers.
_CONTAINER_KEYS = ("state_dict", "model", "model_state", "net", "module")


class UnknownLayoutError(ValueError):
    """No known layout matches the keys; the message names the layouts tried and the file's first keys."""


@dataclass
class Conversion:
    """A state dict in our layout and what its conversion did."""

    format: str  # one of FORMATS
    state: Dict[str, torch.Tensor]  # in our layout
    # a subnet's blocks (None: a supernet, or no backbone layers)
    arch: Optional[Tuple[int, ...]] = None
    is_supernet: bool = False
    # classifier | detector | backbone (what the file holds besides the backbone)
    form: str = "backbone"
    # wrapper prefix stripped from the file's keys ('architecture.', 'module.', ...)
    prefix: str = ""
    rows: List[Tuple[str, str, int]] = field(default_factory=list)  # (file keys, our keys, tensors)
    # file key group -> tensors without a place
    dropped: Dict[str, int] = field(default_factory=dict)
    # the network the tensors are for (search_space.py, block styles); None: unknown
    block_style: Optional[str] = "mmrazor"


def _is_tensor_dict(obj) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def unwrap_state_dict(checkpoint) -> Tuple[Dict[str, torch.Tensor], str]:
    """(state dict, container key) of a loaded checkpoint: ``{'state_dict': ...}`` (mmengine, mmcv),
    ``{'model': ...}`` (Detectron2), a few other trainers' keys, or a bare state dict (container '')."""
    if _is_tensor_dict(checkpoint):
        return dict(checkpoint), ""
    if isinstance(checkpoint, dict):
        for key in _CONTAINER_KEYS:
            if _is_tensor_dict(checkpoint.get(key)):
                return dict(checkpoint[key]), key
        found = {k: type(v).__name__ for k, v in checkpoint.items()}
        raise UnknownLayoutError(
            f"no state dict found: the checkpoint is a dict with {found}, none of them a mapping of names "
            f"to tensors under {list(_CONTAINER_KEYS)}"
        )
    raise UnknownLayoutError(
        f"no state dict found: the checkpoint is a {type(checkpoint).__name__}, not a dict"
    )


def stem_key(state) -> Optional[str]:
    """The one key '<prefix>stem.conv.weight' of our layout, or None (more than one raises)."""
    stems = [k for k in state if k == DETNAS_STEM or k.endswith("." + DETNAS_STEM)]
    if len(stems) > 1:
        raise ValueError(
            f"expected one ShuffleNetV2 backbone (a key '<prefix>{DETNAS_STEM}'), found {len(stems)}: {stems}"
        )
    return stems[0] if stems else None


def mmrazor_prefix(state) -> Optional[str]:
    for key in state:
        if key.endswith(MMRAZOR_STEM):
            return key[: -len(MMRAZOR_STEM)]
    return None


def official_prefix(state) -> Optional[str]:
    for key in state:
        if key.endswith(OFFICIAL_STEM):
            return key[: -len(OFFICIAL_STEM)]
    return None


def oneshot_prefix(state) -> Optional[str]:
    for key in state:
        if (
            key.endswith(ONESHOT_STEM)
            and key[: -len(ONESHOT_STEM)] + "features.0.branch_main.0.weight" in state
        ):
            return key[: -len(ONESHOT_STEM)]
    return None


def detect_format(state: Dict[str, torch.Tensor]) -> str:
    """The layout of `state` (one of FORMATS); UnknownLayoutError names the layouts tried."""
    if stem_key(state) is not None:
        return "detnas-d2"
    prefix = mmrazor_prefix(state)
    if prefix is not None:
        layers = prefix + "backbone.layers."
        if any(k.startswith(layers) and ".choices." in k for k in state):
            return "mmrazor-0.x"
        return "mmrazor-1.x"
    if official_prefix(state) is not None:
        return "official-detnas"
    if oneshot_prefix(state) is not None:
        return "official-oneshot"
    keys = list(state)
    more = f" ... ({len(keys)} in all)" if len(keys) > 5 else ""
    raise UnknownLayoutError(
        "the keys match none of the layouts tried: "
        + "; ".join(LAYOUTS_TRIED)
        + f". The file's first keys: {keys[:5]}{more}"
    )


def key_group(key: str, depth: int) -> str:
    return ".".join(key.split(".")[:depth]) + ".*"
