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
- ``megvii`` (official DetNAS ``Supernet-ImageNet/detnasnet.py``, ShuffleNet-Series ``DetNAS`` / SPOS):
  ``first_conv``, ``features.<i>[.<id>].{conv,proj_conv}.*interstellar*``, ``last_conv``, ``fc``. Detected and
  refused: it is another network (see `MegviiLayoutError`).

`to_detnas` converts any of the first three to our layout: the classifier form (``backbone.*``,
``head.*``) or, for a detector, Detectron2's (``backbone.bottom_up.*``, ``backbone.fpn_*``,
``proposal_generator.rpn_head.*``, ``roi_heads.*``). `to_mmrazor` is its exact inverse. `block_arch`
reads the blocks of a subnet from its tensors (its names, where the file has them, must agree).
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
    "block_arch",
    "arch_difference",
    "flip_stem_channels",
    "stem_key",
    "infer_space",
]

FORMATS = ("detnas-d2", "mmrazor-1.x", "mmrazor-0.x", "megvii")
LAYOUTS_TRIED = (
    "detnas-d2 (a key '<prefix>stem.conv.weight')",
    "MMRazor 1.x / 0.x DetNAS or SPOS, classifier or MMDetection detector "
    "('[architecture.[model.]]backbone.conv1.conv.weight')",
    "official DetNAS / ShuffleNet-Series / SPOS ('[module.]first_conv.conv.weight', "
    "'backbone.body.first_conv.conv.weight')",
)
MMRAZOR_STEM = "backbone.conv1.conv.weight"
MEGVII_STEM = "first_conv.conv.weight"
_STEM = "stem.conv.weight"
# Containers: mmengine / mmcv ('state_dict'), Detectron2 / fvcore ('model'), other trainers.
_CONTAINER_KEYS = ("state_dict", "model", "model_state", "net", "module")
# MMRazor's candidate names and ours are the same (search_space.BLOCKS); the official code's:
MEGVII_BLOCKS = {"shufflenet_3x3": 0, "shufflenet_5x5": 1, "shufflenet_7x7": 2, "xception_3x3": 3}
_KERNEL_BLOCK = {3: 0, 5: 1, 7: 2}


class UnknownLayoutError(ValueError):
    """No known layout matches the keys; the message names the layouts tried and the file's first keys."""


class MegviiLayoutError(ValueError):
    """An official (Megvii) DetNAS / ShuffleNet-Series checkpoint: detected, arch read, not loadable."""


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


def _megvii_prefix(state) -> Optional[str]:
    for key in state:
        if key.endswith(MEGVII_STEM):
            return key[: -len(MEGVII_STEM)]
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
    if _megvii_prefix(state) is not None:
        return "megvii"
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


def infer_space(state: Dict[str, torch.Tensor], prefix: str = "") -> SearchSpace:
    """The search space (and width) of the backbone at `prefix` in a state dict of our layout, from its
    layer count, stem and stage output channels."""
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
    for base in SPACES.values():
        if base.stage_depths != depths:
            continue
        space = get_space(base.name, stem.shape[0] / base.stem_channels)
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


# ---- megvii: detect, read the arch, refuse -----------------------------------------------------------

_MEGVII_OP = re.compile(r"(shufflenet_[357]x[357]|xception_3x3)")


def _megvii_arch(state, prefix) -> Tuple[Optional[Tuple[int, ...]], bool]:
    """(arch or None, is_supernet) read from the official module names."""
    per_layer: Dict[int, set] = {}
    start = prefix + "features."
    for key in state:
        if not key.startswith(start):
            continue
        parts = key[len(start):].split(".")
        m = _MEGVII_OP.search(key)
        if m:
            per_layer.setdefault(int(parts[0]), set()).add(m.group(1))
    if not per_layer:
        return None, False
    if all(len(v) > 1 for v in per_layer.values()):
        return None, True
    if all(len(v) == 1 for v in per_layer.values()):
        return tuple(MEGVII_BLOCKS[next(iter(per_layer[i]))] for i in sorted(per_layer)), False
    return None, False


def _refuse_megvii(state) -> None:
    prefix = _megvii_prefix(state)
    arch, supernet = _megvii_arch(state, prefix)
    what = "a supernet" if supernet else (f"a subnet, arch {','.join(map(str, arch))}" if arch else "a network")
    raise MegviiLayoutError(
        f"an official DetNAS / ShuffleNet-Series checkpoint (Megvii's ShuffleNetV2: '{prefix}first_conv', "
        f"'{prefix}features.<i>', 'last_conv', 'fc'), {what}. It cannot be loaded into this ShuffleNetV2 "
        "(the one MMRazor builds): the official stride-2 units give the projection branch all `in` channels "
        "and the main branch `out - in` (here: out/2 each, so the first two stages' tensors differ in shape), "
        "they shuffle channels at the start of a unit instead of its end, and the stem and last convs have "
        "biases. Use MMRazor's release of the same arch, or retrain the arch (MODEL.DETNAS.ARCH "
        + (",".join(map(str, arch)) if arch else "<ids>") + ")."
    )


# ---- public conversions ----------------------------------------------------------------------------


def to_detnas(state: Dict[str, torch.Tensor]) -> Conversion:
    """`state` (any supported layout) in our layout, with what was converted and dropped."""
    fmt = detect_format(state)
    if fmt == "megvii":
        _refuse_megvii(state)
    if fmt == "detnas-d2":
        stem = stem_key(state)
        prefix = stem[: -len(_STEM)]
        supernet = any(k.startswith(prefix + "layers.") and ".choices." in k for k in state)
        head = any(k.startswith("head.") for k in state)
        detector = any(k.startswith(("proposal_generator.", "roi_heads.")) for k in state)
        try:
            arch = None if supernet else block_arch(state, prefix)
        except ValueError:
            arch = None  # not the space's blocks: the checkpointer says what does not fit
        return Conversion(
            format=fmt,
            state=dict(state),
            arch=arch,
            is_supernet=supernet,
            form="detector" if detector else ("classifier" if head else "backbone"),
            prefix="",
            rows=[(_group(k, 2), _group(k, 2), n) for k, n in Counter(_group(k, 2) for k in state).items()],
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
