"""Checkpoint layouts of the anchors, detected from a state dict's keys and converted to ours and back.

Pure functions over state dicts (nothing here reads a file or builds a model; `checkpoint.py` does both).

Layouts (see DESIGN.md, "Checkpoint layouts of the anchors"):

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
  ``features.<i>[.<choice>].{conv.<j>,proj_conv}.<module>`` (module names below, they name the blocks),
  ``last_conv.{conv,bn}``, ``fc.fc``. Another network than MMRazor's: it loads into a model of block style
  ``official`` (search_space.py), whose parameters have the same names as ours.
- ``official-oneshot`` (ShuffleNet-Series ``OneShot``, SPOS with searched channel widths): detected and
  refused (`MegviiLayoutError`): its mid channels are not those of the DetNAS space.

`to_detnas` converts any of them to our layout: the classifier form (``backbone.*``, ``head.*``) or, for a
detector, Detectron2's (``backbone.bottom_up.*``, ``backbone.fpn_*``, ``proposal_generator.rpn_head.*``,
``roi_heads.*``; of an official detector only the backbone). `to_mmrazor` and `to_official` are its exact
inverses. `block_arch` reads the blocks of a subnet from its tensors (its names, where the file has them,
must agree).
"""
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .search_space import BLOCK_IDS, BLOCKS, SPACES, SearchSpace, get_space

__all__ = [
    "FORMATS",
    "LAYOUTS_TRIED",
    "Conversion",
    "UnknownLayoutError",
    "MegviiLayoutError",
    "unwrap_state_dict",
    "detect_format",
    "to_detnas",
    "to_mmrazor",
    "to_official",
    "block_arch",
    "arch_difference",
    "flip_stem_channels",
    "stem_key",
    "infer_space",
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
_STEM = "stem.conv.weight"
# Containers: mmengine / mmcv ('state_dict'), Detectron2 / fvcore ('model'), other trainers.
_CONTAINER_KEYS = ("state_dict", "model", "model_state", "net", "module")
# MMRazor's candidate names and ours are the same (search_space.BLOCKS); the official code's:
OFFICIAL_BLOCKS = {"shufflenet_3x3": 0, "shufflenet_5x5": 1, "shufflenet_7x7": 2, "xception_3x3": 3}
_KERNEL_BLOCK = {3: 0, 5: 1, 7: 2}


class UnknownLayoutError(ValueError):
    """No known layout matches the keys; the message names the layouts tried and the file's first keys."""


class MegviiLayoutError(ValueError):
    """An official (Megvii) checkpoint that is detected but has no place in the DetNAS space (OneShot)."""


@dataclass
class Conversion:
    format: str  # one of FORMATS
    state: Dict[str, torch.Tensor]  # in our layout
    arch: Optional[Tuple[int, ...]] = None  # a subnet's blocks (None: a supernet, or no backbone layers)
    is_supernet: bool = False
    form: str = "backbone"  # classifier | detector | backbone (what the file holds besides the backbone)
    prefix: str = ""  # wrapper prefix stripped from the file's keys ('architecture.', 'module.', ...)
    rows: List[Tuple[str, str, int]] = field(default_factory=list)  # (file keys, our keys, tensors)
    dropped: Dict[str, int] = field(default_factory=dict)  # file key group -> tensors without a place
    block_style: Optional[str] = "mmrazor"  # the network the tensors are for (search_space.BLOCK_STYLES); None: unknown


# ---- containers and detection ---------------------------------------------------------------------


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
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
    raise UnknownLayoutError(f"no state dict found: the checkpoint is a {type(checkpoint).__name__}, not a dict")


def stem_key(state) -> Optional[str]:
    """The one key '<prefix>stem.conv.weight' of our layout, or None (more than one raises)."""
    stems = [k for k in state if k == _STEM or k.endswith("." + _STEM)]
    if len(stems) > 1:
        raise ValueError(f"expected one ShuffleNetV2 backbone (a key '<prefix>{_STEM}'), found {len(stems)}: {stems}")
    return stems[0] if stems else None


def _mmrazor_prefix(state) -> Optional[str]:
    for key in state:
        if key.endswith(MMRAZOR_STEM):
            return key[: -len(MMRAZOR_STEM)]
    return None


def _official_prefix(state) -> Optional[str]:
    for key in state:
        if key.endswith(OFFICIAL_STEM):
            return key[: -len(OFFICIAL_STEM)]
    return None


def _oneshot_prefix(state) -> Optional[str]:
    for key in state:
        if key.endswith(ONESHOT_STEM) and key[: -len(ONESHOT_STEM)] + "features.0.branch_main.0.weight" in state:
            return key[: -len(ONESHOT_STEM)]
    return None


def detect_format(state: Dict[str, torch.Tensor]) -> str:
    """The layout of `state` (one of FORMATS); UnknownLayoutError names the layouts tried."""
    if stem_key(state) is not None:
        return "detnas-d2"
    prefix = _mmrazor_prefix(state)
    if prefix is not None:
        layers = prefix + "backbone.layers."
        if any(k.startswith(layers) and ".choices." in k for k in state):
            return "mmrazor-0.x"
        return "mmrazor-1.x"
    if _official_prefix(state) is not None:
        return "official-detnas"
    if _oneshot_prefix(state) is not None:
        return "official-oneshot"
    keys = list(state)
    more = f" ... ({len(keys)} in all)" if len(keys) > 5 else ""
    raise UnknownLayoutError(
        "the keys match none of the layouts tried: " + "; ".join(LAYOUTS_TRIED)
        + f". The file's first keys: {keys[:5]}{more}"
    )


# ---- our backbone: blocks and structure ------------------------------------------------------------


def _block_from_keys(keys: Dict[str, torch.Tensor], where: str) -> int:
    """Block id of one of our blocks from its tensors (keys relative to the block: 'branch_main.<j>...')."""
    main = sorted({int(k.split(".")[1]) for k in keys if k.startswith("branch_main.")})
    if len(main) == 6:
        return BLOCK_IDS["shuffle_xception"]
    if len(main) == 3 and "branch_main.1.weight" in keys:
        kernel = keys["branch_main.1.weight"].shape[-1]
        if kernel in _KERNEL_BLOCK:
            return _KERNEL_BLOCK[kernel]
    raise ValueError(f"{where}: not a block of the DetNAS space (main-branch convs {main})")


def _split_layers(state: Dict[str, torch.Tensor], prefix: str):
    """{layer: {choice or None: {rest: tensor}}} of our backbone at `prefix` (choice None: a subnet)."""
    layers: Dict[int, Dict[Optional[int], Dict[str, torch.Tensor]]] = {}
    start = prefix + "layers."
    for key, value in state.items():
        if not key.startswith(start):
            continue
        layer, rest = key[len(start):].split(".", 1)
        choice = None
        if rest.startswith("choices."):
            _, choice, rest = rest.split(".", 2)
            choice = int(choice)
        layers.setdefault(int(layer), {}).setdefault(choice, {})[rest] = value
    return layers


def block_arch(state: Dict[str, torch.Tensor], prefix: str = "") -> Optional[Tuple[int, ...]]:
    """The blocks of the subnet at `prefix` in a state dict of our layout, read from its tensors (the
    main branch's conv count and depthwise kernel); None for a supernet or a state without layers."""
    layers = _split_layers(state, prefix)
    if not layers or any(None not in choices for choices in layers.values()):
        return None
    if sorted(layers) != list(range(len(layers))):
        raise ValueError(f"layers under '{prefix}layers.' are not numbered 0..{len(layers) - 1}: {sorted(layers)}")
    return tuple(_block_from_keys(layers[i][None], f"'{prefix}layers.{i}'") for i in range(len(layers)))


def _stage_starts(layers) -> List[int]:
    """Indices of the first layer of every stage: the stride-2 blocks, which have a projection branch."""
    starts = []
    for i in sorted(layers):
        choice = next(iter(layers[i].values()))
        if any(k.startswith("branch_proj.") for k in choice):
            starts.append(i)
    if not starts or starts[0] != 0:
        raise ValueError("the backbone's layer 0 has no projection branch: not a DetNAS ShuffleNetV2")
    return starts


def _shape_style(layers) -> Optional[str]:
    """'official' if every stride-2 unit's projection keeps its input channels, 'mmrazor' if it gives half
    of the unit's output, None if the shapes fit both or neither (search_space.BLOCK_STYLES)."""
    fits = {"official": True, "mmrazor": True}
    for i in _stage_starts(layers):
        block = next(iter(layers[i].values()))
        proj = block.get("branch_proj.1.weight")
        main = max((k for k in block if re.match(r"^branch_main\.\d+\.weight$", k)), key=_branch_index, default=None)
        if proj is None or main is None:
            return None
        total = proj.shape[0] + block[main].shape[0]
        fits["official"] &= proj.shape[0] == proj.shape[1]
        fits["mmrazor"] &= proj.shape[0] == total // 2
    styles = [name for name, ok in fits.items() if ok]
    return styles[0] if len(styles) == 1 else None


def infer_space(state: Dict[str, torch.Tensor], prefix: str = "") -> SearchSpace:
    """The search space (width and block style) of the backbone at `prefix` in a state dict of our layout,
    from its layer count, stem and stage output channels, and its projection branches' channels."""
    layers = _split_layers(state, prefix)
    stem = state.get(prefix + _STEM)
    if stem is None or not layers:
        raise ValueError(f"no backbone of our layout under '{prefix}'")
    starts = _stage_starts(layers)
    ends = starts[1:] + [len(layers)]
    depths = tuple(e - a for a, e in zip(starts, ends))
    stage_out = []
    for a, e in zip(starts, ends):  # output channels of a stride-2 unit: projection + main branch outputs
        block = next(iter(layers[a].values()))
        proj = max(int(k.split(".")[1]) for k in block if k.startswith("branch_proj.") and k.endswith("weight"))
        main = max(int(k.split(".")[1]) for k in block if k.startswith("branch_main.") and k.count(".") == 2)
        stage_out.append(block[f"branch_proj.{proj}.weight"].shape[0] + block[f"branch_main.{main}.weight"].shape[0])
    style = "official" if _shape_style(layers) == "official" else "mmrazor"
    for base in SPACES.values():
        if base.stage_depths != depths:
            continue
        space = get_space(base.name, stem.shape[0] / base.stem_channels, style)
        if space.stem_out == stem.shape[0] and list(space.stage_out) == stage_out:
            return space
    raise ValueError(
        f"no search space has stem {stem.shape[0]}, stage channels {stage_out} and blocks per stage {list(depths)}"
    )


def arch_difference(file_arch: Sequence[int], model_arch: Sequence[int], stage_depths: Sequence[int]) -> str:
    """'' if equal, else a sentence naming the first layer that differs (stage, block, both names)."""
    if len(file_arch) != len(model_arch):
        return f"the file's backbone has {len(file_arch)} layers, the model's {len(model_arch)}"
    for i, (a, b) in enumerate(zip(file_arch, model_arch)):
        if a != b:
            stage, block, start = 0, i, 0
            for s, depth in enumerate(stage_depths):
                if i < start + depth:
                    stage, block = s, i - start
                    break
                start += depth
            n = sum(x != y for x, y in zip(file_arch, model_arch))
            return (
                f"layer {i} (stage {stage} block {block}) is {BLOCKS[a]} in the file and {BLOCKS[b]} in "
                f"MODEL.DETNAS.ARCH ({n} of {len(file_arch)} layers differ)"
            )
    return ""


def flip_stem_channels(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A copy with the stem conv's input channels reversed (RGB <-> BGR input; exact)."""
    key = stem_key(state)
    if key is None:
        raise ValueError(f"no '<prefix>{_STEM}' to flip")
    out = dict(state)
    out[key] = state[key].flip(1)
    return out


# ---- MMRazor <-> ours: one key at a time -----------------------------------------------------------

_CONV_MODULE = re.compile(r"^(conv\.(weight|bias)|(bn|gn)\.(.+))$")


def _from_conv_module(rest: str) -> Optional[str]:
    """mmcv ConvModule tail ('conv.weight', 'bn.running_mean') -> Detectron2 Conv2d tail ('weight',
    'norm.running_mean')."""
    m = _CONV_MODULE.match(rest)
    if m is None:
        return None
    return m.group(2) if m.group(2) else "norm." + m.group(4)


def _to_conv_module(rest: str, norm_name: str = "bn") -> Optional[str]:
    if rest in ("weight", "bias"):
        return "conv." + rest
    if rest.startswith("norm."):
        return f"{norm_name}.{rest[5:]}"
    return None


def _block_rest_from_mmrazor(rest: str) -> Optional[str]:
    """Tail of a key inside one MMRazor candidate -> tail inside our block."""
    m = re.match(r"^branch1\.(\d+)\.(.+)$", rest)
    if m:
        tail = _from_conv_module(m.group(2))
        return f"branch_proj.{m.group(1)}.{tail}" if tail else None
    m = re.match(r"^branch2\.(\d+)\.(depthwise_conv|pointwise_conv)\.(.+)$", rest)
    if m:
        tail = _from_conv_module(m.group(3))
        j = 2 * int(m.group(1)) + (m.group(2) == "pointwise_conv")
        return f"branch_main.{j}.{tail}" if tail else None
    m = re.match(r"^branch2\.(\d+)\.(.+)$", rest)
    if m:
        tail = _from_conv_module(m.group(2))
        return f"branch_main.{m.group(1)}.{tail}" if tail else None
    return None


def _block_rest_to_mmrazor(rest: str, block: int) -> str:
    m = re.match(r"^branch_(proj|main)\.(\d+)\.(.+)$", rest)
    if m is None:
        raise ValueError(f"'{rest}' is not a key of a DetNAS block")
    branch, j, tail = m.group(1), int(m.group(2)), _to_conv_module(m.group(3))
    if tail is None:
        raise ValueError(f"'{rest}' is not a conv or norm tensor")
    if branch == "proj":
        return f"branch1.{j}.{tail}"
    if BLOCKS[block] == "shuffle_xception":
        return f"branch2.{j // 2}.{'pointwise_conv' if j % 2 else 'depthwise_conv'}.{tail}"
    return f"branch2.{j}.{tail}"


# Detector parts: (MMDetection key pattern, our key template) and back.
_NECK = re.compile(r"^neck\.(lateral_convs|fpn_convs)\.(\d+)\.(.+)$")
_RPN = {"rpn_conv": "conv", "rpn_cls": "objectness_logits", "rpn_reg": "anchor_deltas"}
_BBOX = re.compile(r"^roi_head\.bbox_head\.(shared_convs|shared_fcs)\.(\d+)\.(.+)$")
_PREDICTOR = {"fc_cls": "cls_score", "fc_reg": "bbox_pred"}


def _other_from_mmrazor(key: str) -> Optional[str]:
    """A non-backbone MMRazor/MMDetection/mmcls key -> ours (None: no place)."""
    m = _NECK.match(key)
    if m:
        kind = "fpn_lateral" if m.group(1) == "lateral_convs" else "fpn_output"
        tail = _from_conv_module(m.group(3))
        return f"backbone.{kind}{int(m.group(2)) + 2}.{tail}" if tail else None
    m = re.match(r"^rpn_head\.(rpn_conv|rpn_cls|rpn_reg)\.(weight|bias)$", key)
    if m:
        return f"proposal_generator.rpn_head.{_RPN[m.group(1)]}.{m.group(2)}"
    m = _BBOX.match(key)
    if m:
        i = int(m.group(2)) + 1
        if m.group(1) == "shared_fcs":
            return f"roi_heads.box_head.fc{i}.{m.group(3)}" if m.group(3) in ("weight", "bias") else None
        tail = _from_conv_module(m.group(3))
        return f"roi_heads.box_head.conv{i}.{tail}" if tail else None
    m = re.match(r"^roi_head\.bbox_head\.(fc_cls|fc_reg)\.(weight|bias)$", key)
    if m:
        return f"roi_heads.box_predictor.{_PREDICTOR[m.group(1)]}.{m.group(2)}"
    m = re.match(r"^head\.fc\.(weight|bias)$", key)
    if m:
        return f"head.linear.{m.group(1)}"
    return None


def _other_to_mmrazor(key: str, norm_name: str = "bn") -> Optional[str]:
    m = re.match(r"^backbone\.fpn_(lateral|output)(\d+)\.(.+)$", key)
    if m:
        kind = "lateral_convs" if m.group(1) == "lateral" else "fpn_convs"
        tail = _to_conv_module(m.group(3), norm_name)
        return f"neck.{kind}.{int(m.group(2)) - 2}.{tail}" if tail else None
    m = re.match(r"^proposal_generator\.rpn_head\.(conv|objectness_logits|anchor_deltas)\.(weight|bias)$", key)
    if m:
        return f"rpn_head.{ {v: k for k, v in _RPN.items()}[m.group(1)] }.{m.group(2)}"
    m = re.match(r"^roi_heads\.box_head\.(conv|fc)(\d+)\.(.+)$", key)
    if m:
        i = int(m.group(2)) - 1
        if m.group(1) == "fc":
            return f"roi_head.bbox_head.shared_fcs.{i}.{m.group(3)}" if m.group(3) in ("weight", "bias") else None
        tail = _to_conv_module(m.group(3), norm_name)
        return f"roi_head.bbox_head.shared_convs.{i}.{tail}" if tail else None
    m = re.match(r"^roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)$", key)
    if m:
        return f"roi_head.bbox_head.{ {v: k for k, v in _PREDICTOR.items()}[m.group(1)] }.{m.group(2)}"
    m = re.match(r"^head\.linear\.(weight|bias)$", key)
    if m:
        return f"head.fc.{m.group(1)}"
    return None


def _group(key: str, depth: int) -> str:
    return ".".join(key.split(".")[:depth]) + ".*"


# ---- MMRazor -> ours -------------------------------------------------------------------------------

_MMRAZOR_LAYER = re.compile(r"^backbone\.layers\.(\d+)\.(\d+)\.(?:(_candidates|choices)\.([A-Za-z0-9_]+)\.)?(.+)$")


def _mmrazor_to_detnas(state: Dict[str, torch.Tensor], fmt: str) -> Conversion:
    prefix = _mmrazor_prefix(state)
    dropped: Counter = Counter(_group(k, 1) for k in state if not k.startswith(prefix))
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    detector = any(k.startswith(("neck.", "rpn_head.", "roi_head.", "bbox_head.")) for k in state)
    # Only the Faster R-CNN FPN maps beyond the backbone (e.g. a RetinaNet's neck starts at another level).
    faster_rcnn = any(k.startswith("rpn_head.") for k in state)
    classifier = any(k.startswith("head.") for k in state) or any(
        k.startswith("backbone.layers.4.") for k in state
    )
    form = "detector" if detector else ("classifier" if classifier else "backbone")
    bb = "backbone.bottom_up." if detector else "backbone."

    # Layers: (stage, block) -> {candidate name or None: {our rest: tensor}}
    blocks: Dict[Tuple[int, int], Dict[Optional[str], Dict[str, torch.Tensor]]] = {}
    out: Dict[str, torch.Tensor] = OrderedDict()
    rows: Counter = Counter()
    for key, value in state.items():
        m = _MMRAZOR_LAYER.match(key)
        if m and m.group(1) != "4":
            rest = _block_rest_from_mmrazor(m.group(5))
            if rest is None:
                dropped[_group(key, 4)] += 1
                continue
            blocks.setdefault((int(m.group(1)), int(m.group(2))), {}).setdefault(m.group(4), {})[rest] = value
            continue
        if key.startswith("backbone.conv1."):
            tail = _from_conv_module(key[len("backbone.conv1."):])
            if tail is not None:
                out[f"{bb}stem.conv.{tail}"] = value
                rows[("backbone.conv1.*", f"{bb}stem.*")] += 1
                continue
        if key.startswith("backbone.layers.4."):  # the classifier's last 1x1 conv: our head.conv
            tail = _from_conv_module(key[len("backbone.layers.4."):])
            if tail is not None:
                out[f"head.conv.{tail}"] = value
                rows[("backbone.layers.4.*", "head.conv.*")] += 1
                continue
        ours = _other_from_mmrazor(key) if faster_rcnn or not key.startswith("neck.") else None
        if ours is None:
            dropped[_group(key, 2)] += 1
            continue
        out[ours] = value
        depth = 4 if key.startswith(("roi_head.bbox_head.shared_", "roi_head.bbox_head.fc")) else 2
        depth = 3 if key.startswith(("neck.", "roi_head.bbox_head.fc_")) else depth
        our_depth = 3 if ours.startswith(("roi_heads.", "proposal_generator.")) else 2
        rows[(_group(key, depth), _group(ours, our_depth))] += 1

    if not blocks:
        raise ValueError("MMRazor checkpoint without backbone layers ('backbone.layers.<stage>.<block>.*')")
    depths = [0] * (max(s for s, _ in blocks) + 1)
    for s, b in blocks:
        depths[s] = max(depths[s], b + 1)
    missing = [(s, b) for s in range(len(depths)) for b in range(depths[s]) if (s, b) not in blocks]
    if missing:
        raise ValueError(f"MMRazor backbone lacks blocks {missing[:5]} (stage, block)")
    offsets = [sum(depths[:s]) for s in range(len(depths))]
    counts = {sb: len(c) for sb, c in blocks.items()}
    is_supernet = all(n > 1 for n in counts.values())
    if not is_supernet and any(n > 1 for n in counts.values()):
        several = sorted(sb for sb, n in counts.items() if n > 1)
        raise ValueError(
            f"MMRazor backbone is partly fixed: blocks {several[:5]} (stage, block) keep several candidates, "
            f"others one: neither a supernet nor a subnet"
        )
    arch = []
    for (s, b) in sorted(blocks):
        i = offsets[s] + b
        for name, rest_map in blocks[(s, b)].items():
            where = f"'backbone.layers.{s}.{b}" + (f".<candidates>.{name}'" if name else "'")
            structural = _block_from_keys(rest_map, where)
            if name is not None:
                if name not in BLOCK_IDS:
                    raise ValueError(f"{where}: unknown candidate '{name}' (the space's blocks are {list(BLOCKS)})")
                if BLOCK_IDS[name] != structural:
                    raise ValueError(
                        f"{where}: named {name}, but its tensors are those of {BLOCKS[structural]}"
                    )
            if is_supernet:
                for rest, value in rest_map.items():
                    out[f"{bb}layers.{i}.choices.{structural}.{rest}"] = value
            else:
                arch.append(structural)
                for rest, value in rest_map.items():
                    out[f"{bb}layers.{i}.{rest}"] = value
            rows[(f"backbone.layers.{s}.*", f"{bb}layers.{offsets[s]}-{offsets[s] + depths[s] - 1}.*")] += len(rest_map)
        if is_supernet and sorted(BLOCK_IDS[n] for n in blocks[(s, b)] if n in BLOCK_IDS) != list(range(len(BLOCKS))):
            raise ValueError(
                f"MMRazor supernet block backbone.layers.{s}.{b} has candidates {sorted(blocks[(s, b)])}, "
                f"the space's are {list(BLOCKS)}"
            )
    return Conversion(
        format=fmt,
        state=out,
        arch=None if is_supernet else tuple(arch),
        is_supernet=is_supernet,
        form=form,
        prefix=prefix,
        rows=[(src, dst, n) for (src, dst), n in rows.items()],
        dropped=dict(dropped),
    )


# ---- official (Megvii) DetNAS <-> ours ----------------------------------------------------------------
#
# Module names of the official code (ShuffleNet-Series DetNAS/blocks.py, DetNAS Supernet-ImageNet/
# shuffle_blocks.py and maskrcnn_benchmark/modeling/backbone/shuffle_blocks.py), for unit '<stage><letter>'
# (stage 1-4, letter a, b, ... within the stage) and block '<op>':
#   main branch  features.<i>[.<choice>].conv.<j>.{interstellar<unit>_<op>_<part>[_s][_s_bn], bn<unit>_<op>_<part>}
#   projection   features.<i>[.<choice>].proj_conv.{interstellar<unit>_proj[_s][_s_bn], bn<unit>_proj}
# '_s' is the depthwise conv (and '_s_bn' its BN) before the 1x1 conv of the same part; 'bn...' the 1x1's BN.

_OFFICIAL_NAME = re.compile(
    r"^(?P<kind>interstellar|bn)(?P<unit>\d+[a-z])_(?:(?P<op>shufflenet_[357]x[357]|xception_3x3)_)?"
    r"(?P<part>branch2[abc]|proj)(?P<dw>_s)?(?P<dwbn>_bn)?$"
)
_OFFICIAL_KEY = re.compile(r"^features\.(\d+)\.(?:(\d+)\.)?(conv\.(\d+)|proj_conv)\.([A-Za-z0-9_]+)\.(\w+)$")
# (depthwise slot, pointwise slot) in our branch of each official part; shufflenet_kxk's branch2a is 1x1 only.
_OFFICIAL_SLOTS = {
    ("shufflenet", "branch2a"): (None, 0), ("shufflenet", "branch2b"): (1, 2),
    ("xception", "branch2a"): (0, 1), ("xception", "branch2b"): (2, 3), ("xception", "branch2c"): (4, 5),
    ("proj", "proj"): (0, 1),
}
_OFFICIAL_OPS = tuple(OFFICIAL_BLOCKS)  # their blocks_key order = our block ids
_NORM_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _official_parent(family: str, part: str) -> str:
    """The Sequential that holds a part: 'proj_conv', or 'conv.<j>' (the j-th part of the main branch)."""
    return "proj_conv" if family == "proj" else f"conv.{sorted(p for f, p in _OFFICIAL_SLOTS if f == family).index(part)}"


def _official_tail(parent: str, module: str, param: str, choice: Optional[int], where: str):
    """(unit, our key inside the block, block id named by the module or None) of one official block tensor."""
    m = _OFFICIAL_NAME.match(module)
    if m is None:
        raise ValueError(f"{where}: '{module}' is not a module name of the official DetNAS blocks")
    op, part = m.group("op"), m.group("part")
    block = OFFICIAL_BLOCKS[op] if op else choice
    family = "proj" if part == "proj" else ("xception" if block == BLOCK_IDS["shuffle_xception"] else "shufflenet")
    slots = _OFFICIAL_SLOTS.get((family, part))
    is_norm = m.group("kind") == "bn" or m.group("dwbn") is not None
    slot = None if slots is None else slots[0 if m.group("dw") else 1]
    if (slot is None or _official_parent(family, part) != parent or (is_norm and param not in _NORM_PARAMS)
            or (not is_norm and param != "weight")):
        raise ValueError(f"{where}: '{parent}.{module}.{param}' has no place in a block of the DetNAS space")
    branch = "branch_proj" if part == "proj" else "branch_main"
    return m.group("unit"), f"{branch}.{slot}.{'norm.' + param if is_norm else param}", (block if op else None)


def _official_units(depths: Sequence[int]) -> List[str]:
    return [f"{s + 1}{chr(ord('a') + b)}" for s, depth in enumerate(depths) for b in range(depth)]


def _official_to_detnas(state: Dict[str, torch.Tensor]) -> Conversion:
    prefix = _official_prefix(state)
    dropped: Counter = Counter(_group(k, 3 if k.startswith("module.") else 2) for k in state if not k.startswith(prefix))
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    # maskrcnn_benchmark's detector keeps the backbone under 'backbone.body.' (FPN and heads beside it).
    form = "detector" if prefix.endswith("backbone.body.") else (
        "classifier" if any(k.startswith(("last_conv.", "fc.")) for k in state) else "backbone")
    bb = "backbone.bottom_up." if form == "detector" else "backbone."
    out: Dict[str, torch.Tensor] = OrderedDict()
    rows: Counter = Counter()
    # layer -> {choice or None: {our rest: tensor}}; layer -> units and block ids named by the modules
    blocks: Dict[int, Dict[Optional[int], Dict[str, torch.Tensor]]] = {}
    units: Dict[int, set] = {}
    named: Dict[Tuple[int, Optional[int]], set] = {}
    heads = {"first_conv.": f"{bb}stem.conv.", "last_conv.": "head.conv.", "fc.fc.": "head.linear."}
    for key, value in state.items():
        m = _OFFICIAL_KEY.match(key)
        if m:
            layer, choice = int(m.group(1)), None if m.group(2) is None else int(m.group(2))
            where = f"'{prefix}{key}'"
            unit, rest, block = _official_tail(m.group(3), m.group(5), m.group(6), choice, where)
            units.setdefault(layer, set()).add(unit)
            if block is not None:
                named.setdefault((layer, choice), set()).add(block)
            blocks.setdefault(layer, {}).setdefault(choice, {})[rest] = value
            continue
        top = next((t for t in heads if key.startswith(t)), None)
        if top is not None and (form != "detector" or top == "first_conv."):
            tail = key[len(top):]
            if top != "fc.fc.":
                tail = tail[len("conv."):] if tail.startswith("conv.") else ("norm." + tail[3:] if tail.startswith("bn.") else None)
            if tail is not None:
                out[heads[top] + tail] = value
                rows[(prefix + _group(key, 1), _group(heads[top] + tail, 2))] += 1
                continue
        dropped[prefix + _group(key, 2)] += 1

    if not blocks or sorted(blocks) != list(range(len(blocks))):
        raise ValueError(f"official DetNAS checkpoint without layers 'features.0..N' under '{prefix}' (found {sorted(blocks)[:5]})")
    several = {i for i, c in blocks.items() if None not in c}
    is_supernet = bool(several)
    if is_supernet and len(several) != len(blocks):
        raise ValueError(f"official checkpoint is partly a supernet: layers {sorted(set(blocks) - several)[:5]} hold one block")
    # Layer order: unit '<stage><letter>' of layer i must be the i-th of the stages the units describe.
    layer_units = []
    for i in range(len(blocks)):
        if len(units[i]) != 1:
            raise ValueError(f"'{prefix}features.{i}' mixes the modules of units {sorted(units[i])}")
        layer_units.append(next(iter(units[i])))
    stages = [int(u[:-1]) for u in layer_units]
    depths = [stages.count(s) for s in range(1, max(stages) + 1)]
    expected = _official_units(depths)
    if layer_units != expected:
        first = next(i for i, (a, b) in enumerate(zip(layer_units, expected)) if a != b)
        raise ValueError(f"'{prefix}features.{first}' is unit {layer_units[first]}, expected {expected[first]}: layers out of order")

    arch = []
    offsets = [sum(depths[:s]) for s in range(len(depths))]
    for i in range(len(blocks)):
        stage = stages[i] - 1
        for choice, rest_map in sorted(blocks[i].items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
            where = f"'{prefix}features.{i}" + ("'" if choice is None else f".{choice}'")
            structural = _block_from_keys(rest_map, where)
            names = named.get((i, choice), set())
            if len(names) != 1 or next(iter(names)) != structural or choice not in (None, structural):
                raise ValueError(
                    f"{where}: its modules name {sorted(_OFFICIAL_OPS[b] for b in names)}"
                    + (f" as choice {choice}" if choice is not None else "")
                    + f", its tensors are those of {_OFFICIAL_OPS[structural]}"
                )
            base = f"{bb}layers.{i}." + ("" if choice is None else f"choices.{choice}.")
            if choice is None:
                arch.append(structural)
            for rest, value in rest_map.items():
                out[base + rest] = value
            rows[(f"{prefix}features.{offsets[stage]}-{offsets[stage] + depths[stage] - 1}.*",
                  f"{bb}layers.{offsets[stage]}-{offsets[stage] + depths[stage] - 1}.*")] += len(rest_map)
        if is_supernet and sorted(blocks[i]) != list(range(len(BLOCKS))):
            raise ValueError(f"official supernet layer '{prefix}features.{i}' has choices {sorted(blocks[i])}, the space's are 0..3")
    return Conversion(
        format="official-detnas",
        state=out,
        arch=None if is_supernet else tuple(arch),
        is_supernet=is_supernet,
        form=form,
        prefix=prefix,
        rows=[(src, dst, n) for (src, dst), n in rows.items()],
        dropped=dict(dropped),
        # The files do not say how their stride-1 units split channels: the official supernet code uses
        # method 1, the searched models' code method 2 (search_space.py).
        block_style="official-shuffle1" if is_supernet else "official",
    )


def to_official(state: Dict[str, torch.Tensor], prefix: str = "") -> Dict[str, torch.Tensor]:
    """The exact inverse of `to_detnas` for an official-style backbone of our layout (classifier or bare
    backbone, subnet or supernet): the official DetNAS keys under `prefix` ('module.' as DataParallel saves
    them). Keys without an official place (an FPN, detector heads) raise ValueError naming the first."""
    stem = stem_key(state)
    if stem is None:
        raise ValueError(f"no ShuffleNetV2 backbone ('<prefix>{_STEM}') to convert")
    bb = stem[: -len(_STEM)]
    layers = _split_layers(state, bb)
    starts = _stage_starts(layers)
    for a, e in zip(starts, starts[1:] + [len(layers)]):
        block = next(iter(layers[a].values()))
        proj = block.get("branch_proj.1.weight")
        if proj is None or proj.shape[0] != proj.shape[1]:
            raise ValueError(
                f"'{bb}layers.{a}' is not an official-style unit (its projection branch must keep its input "
                "channels): only a model built with MODEL.DETNAS.BLOCK_STYLE official / official-shuffle1 has an "
                "official layout; this one's stride-2 units split out/2 + out/2 (MMRazor's network)"
            )
    depths = [e - a for a, e in zip(starts, starts[1:] + [len(layers)])]
    units = _official_units(depths)
    heads = {f"{bb}stem.conv.": "first_conv.", "head.conv.": "last_conv.", "head.linear.": "fc.fc."}
    out: Dict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        if key.startswith(bb + "layers."):
            continue
        top = next((t for t in heads if key.startswith(t)), None)
        tail = key[len(top):] if top else ""
        if top is None or (top != "head.linear." and not (tail in ("weight", "bias") or tail.startswith("norm."))):
            raise ValueError(f"'{key}' has no place in the official DetNAS layout (backbone and classifier only)")
        if top != "head.linear.":
            tail = "bn." + tail[len("norm."):] if tail.startswith("norm.") else "conv." + tail
        out[prefix + heads[top] + tail] = value
    blocks = OrderedDict()
    for i in sorted(layers):
        for choice in sorted(layers[i], key=lambda c: -1 if c is None else c):
            rest_map = layers[i][choice]
            block = choice if choice is not None else _block_from_keys(rest_map, f"'{bb}layers.{i}'")
            base = f"{prefix}features.{i}." + ("" if choice is None else f"{choice}.")
            for rest, value in rest_map.items():
                blocks[base + _official_module(rest, units[i], block)] = value
    result = OrderedDict((k, out.pop(k)) for k in list(out) if k.startswith(prefix + "first_conv."))
    result.update(blocks)
    result.update(out)
    return result


def _official_module(rest: str, unit: str, block: int) -> str:
    """Our key inside a block -> the official '<conv.j|proj_conv>.<module>.<param>'."""
    m = re.match(r"^branch_(proj|main)\.(\d+)\.(norm\.)?(\w+)$", rest)
    if m is None:
        raise ValueError(f"'{rest}' is not a key of a DetNAS block")
    op = _OFFICIAL_OPS[block]
    family = "proj" if m.group(1) == "proj" else ("xception" if op == "xception_3x3" else "shufflenet")
    slot = int(m.group(2))
    for (fam, part), (dw, pw) in _OFFICIAL_SLOTS.items():
        if fam == family and slot in (dw, pw):
            name = f"{unit}_proj" if family == "proj" else f"{unit}_{op}_{part}"
            if slot == dw:
                module = f"interstellar{name}_s" + ("_bn" if m.group(3) else "")
            else:
                module = f"bn{name}" if m.group(3) else f"interstellar{name}"
            return f"{_official_parent(family, part)}.{module}.{m.group(4)}"
    raise ValueError(f"'{rest}' has no place in the official {op} block")


# ---- official SPOS (ShuffleNet-Series OneShot): detected and refused ---------------------------------


def _refuse_oneshot(state) -> None:
    prefix = _oneshot_prefix(state)
    mids = {}  # layer -> channels of its main branch's first 1x1 conv
    for key, value in state.items():
        m = re.match(r"^features\.(\d+)\.branch_main\.0\.weight$", key[len(prefix):]) if key.startswith(prefix) else None
        if m and value.dim() == 4 and value.shape[-1] == 1:
            mids[int(m.group(1))] = value.shape[0]
    raise MegviiLayoutError(
        f"an official Single Path One-Shot checkpoint (ShuffleNet-Series OneShot/network.py: '{prefix}first_conv.0', "
        f"'{prefix}features.<i>.branch_main', 'conv_last', 'classifier'). That network also searches every unit's "
        f"mid channels (out/2 x 0.2..1.6; this file's 1x1 mid channels by layer: {[mids[i] for i in sorted(mids)]}), "
        "which the DetNAS space does not have: it cannot be loaded. The DetNAS checkpoints of ShuffleNet-Series "
        "(DetNAS/) and of the DetNAS repository load (MODEL.DETNAS.BLOCK_STYLE official)."
    )


# ---- public conversions ----------------------------------------------------------------------------


def to_detnas(state: Dict[str, torch.Tensor]) -> Conversion:
    """`state` (any supported layout) in our layout, with what was converted and dropped."""
    fmt = detect_format(state)
    if fmt == "official-oneshot":
        _refuse_oneshot(state)
    if fmt == "official-detnas":
        return _official_to_detnas(state)
    if fmt == "detnas-d2":
        stem = stem_key(state)
        prefix = stem[: -len(_STEM)]
        supernet = any(k.startswith(prefix + "layers.") and ".choices." in k for k in state)
        head = any(k.startswith("head.") for k in state)
        detector = any(k.startswith(("proposal_generator.", "roi_heads.")) for k in state)
        try:
            arch = None if supernet else block_arch(state, prefix)
            style = _shape_style(_split_layers(state, prefix))
        except ValueError:
            arch = style = None  # not the space's blocks: the checkpointer says what does not fit
        return Conversion(
            format=fmt,
            state=dict(state),
            arch=arch,
            is_supernet=supernet,
            form="detector" if detector else ("classifier" if head else "backbone"),
            prefix="",
            rows=[(_group(k, 2), _group(k, 2), n) for k, n in Counter(_group(k, 2) for k in state).items()],
            block_style=style,
        )
    return _mmrazor_to_detnas(state, fmt)


def to_mmrazor(
    state: Dict[str, torch.Tensor], version: str = "1.x", prefix: str = "architecture.", norm_name: str = "bn"
) -> Dict[str, torch.Tensor]:
    """The exact inverse of `to_detnas` for a state dict of our layout (classifier, Faster R-CNN FPN
    detector or bare backbone; supernet or subnet): MMRazor 1.x (`_candidates`) or 0.x (`choices`) keys
    under `prefix` ('architecture.' as MMRazor 1.x saves SPOS / sub_model checkpoints, 'architecture.model.'
    for 0.x). A key without an MMRazor place raises ValueError naming it."""
    if version not in ("1.x", "0.x"):
        raise ValueError(f"MMRazor version '{version}': choose 1.x or 0.x")
    mutable = "_candidates" if version == "1.x" else "choices"
    stem = stem_key(state)
    if stem is None:
        raise ValueError(f"no ShuffleNetV2 backbone ('<prefix>{_STEM}') to convert")
    bb = stem[: -len(_STEM)]
    if bb not in ("backbone.", "backbone.bottom_up."):
        raise ValueError(f"backbone under '{bb}': expected 'backbone.' or 'backbone.bottom_up.' (MMRazor: 'backbone.')")
    layers = _split_layers(state, bb)
    starts = _stage_starts(layers)
    ends = starts[1:] + [len(layers)]
    stage_of = {i: (s, i - a) for s, (a, e) in enumerate(zip(starts, ends)) for i in range(a, e)}

    out: Dict[str, torch.Tensor] = OrderedDict()
    unplaced = []
    for key, value in state.items():
        if key.startswith(bb + "stem.conv."):
            tail = _to_conv_module(key[len(bb + "stem.conv."):], norm_name)
            if tail:
                out[prefix + "backbone.conv1." + tail] = value
                continue
        elif key.startswith(bb + "layers."):
            continue  # below, block by block in MMRazor's order
        elif key.startswith("head.conv."):
            tail = _to_conv_module(key[len("head.conv."):], norm_name)
            if tail:
                out[prefix + f"backbone.layers.{len(starts)}.{tail}"] = value
                continue
        else:
            theirs = _other_to_mmrazor(key, norm_name)
            if theirs is not None:
                out[prefix + theirs] = value
                continue
        unplaced.append(key)
    if unplaced:
        raise ValueError(f"{len(unplaced)} tensors have no place in MMRazor's layout (first '{unplaced[0]}')")

    # Blocks in MMRazor's module order: stage, block, candidate (its order = the space's), branch1 first.
    ordered = OrderedDict()
    for i in sorted(layers):
        s, b = stage_of[i]
        for choice in sorted(layers[i], key=lambda c: -1 if c is None else c):
            rest_map = layers[i][choice]
            block = choice if choice is not None else _block_from_keys(rest_map, f"'{bb}layers.{i}'")
            name = BLOCKS[block]
            items = sorted(rest_map.items(), key=lambda kv: (kv[0].startswith("branch_main."), _branch_index(kv[0])))
            base = f"{prefix}backbone.layers.{s}.{b}.{mutable}.{name}."
            for rest, value in items:
                ordered[base + _block_rest_to_mmrazor(rest, block)] = value
    # MMRazor's module order: conv1, layers.0-3 (blocks), layers.4, then head / neck / rpn / roi.
    result = OrderedDict()
    for key in list(out):
        if key.startswith(prefix + "backbone.conv1."):
            result[key] = out.pop(key)
    result.update(ordered)
    for key in sorted(out, key=lambda k: _mmrazor_rank(k[len(prefix):])):
        result[key] = out[key]
    return result


def _branch_index(rest: str) -> int:
    return int(rest.split(".")[1])


_TOP_RANK = ("backbone.", "head.", "neck.lateral_convs.", "neck.fpn_convs.", "rpn_head.rpn_conv.", "rpn_head.rpn_cls.",
             "rpn_head.rpn_reg.", "roi_head.bbox_head.fc_cls.", "roi_head.bbox_head.fc_reg.",
             "roi_head.bbox_head.shared_convs.", "roi_head.bbox_head.shared_fcs.")


def _mmrazor_rank(key: str) -> Tuple[int, int]:
    """MMRazor / MMDetection module order of a non-block key (stable sort keeps a module's own order)."""
    for rank, start in enumerate(_TOP_RANK):
        if key.startswith(start):
            index = key[len(start):].split(".", 1)[0]
            return rank, int(index) if index.isdigit() else 0
    return len(_TOP_RANK), 0
