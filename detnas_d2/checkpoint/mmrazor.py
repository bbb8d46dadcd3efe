"""MMRazor's checkpoint layout (1.x ``_candidates`` and 0.x ``choices``; mmcls classifier or MMDetection
Faster R-CNN FPN detector; supernet or subnet) to ours (`mmrazor_to_detnas`) and back (`to_mmrazor`, its
exact inverse). Layouts: `layouts` and docs/design.md ("Checkpoint layouts")."""

import re
from collections import Counter, OrderedDict
from typing import Dict, Optional, Tuple

import torch

from ..search_space import PAPER_BLOCKS
from .backbone_keys import block_from_keys, branch_index, split_layers, stage_starts
from .layouts import DETNAS_STEM, Conversion, key_group, mmrazor_prefix, stem_key

__all__ = ["MMRAZOR_INPUT_FORMAT", "mmrazor_to_detnas", "to_mmrazor"]

MMRAZOR_INPUT_FORMAT = "RGB"  # MMRazor's mmcls / mmdet preprocessors convert BGR images to RGB

# ---- one key at a time ---------------------------------------------------------------------------

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
    if PAPER_BLOCKS[block] == "shuffle_xception":
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
            return (
                f"roi_heads.box_head.fc{i}.{m.group(3)}"
                if m.group(3) in ("weight", "bias")
                else None
            )
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
    m = re.match(
        r"^proposal_generator\.rpn_head\.(conv|objectness_logits|anchor_deltas)\.(weight|bias)$",
        key,
    )
    if m:
        return f"rpn_head.{ {v: k for k, v in _RPN.items()}[m.group(1)] }.{m.group(2)}"
    m = re.match(r"^roi_heads\.box_head\.(conv|fc)(\d+)\.(.+)$", key)
    if m:
        i = int(m.group(2)) - 1
        if m.group(1) == "fc":
            return (
                f"roi_head.bbox_head.shared_fcs.{i}.{m.group(3)}"
                if m.group(3) in ("weight", "bias")
                else None
            )
        tail = _to_conv_module(m.group(3), norm_name)
        return f"roi_head.bbox_head.shared_convs.{i}.{tail}" if tail else None
    m = re.match(r"^roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)$", key)
    if m:
        return (
            f"roi_head.bbox_head.{ {v: k for k, v in _PREDICTOR.items()}[m.group(1)] }.{m.group(2)}"
        )
    m = re.match(r"^head\.linear\.(weight|bias)$", key)
    if m:
        return f"head.fc.{m.group(1)}"
    return None


# ---- MMRazor -> ours -------------------------------------------------------------------------------

_MMRAZOR_LAYER = re.compile(
    r"^backbone\.layers\.(\d+)\.(\d+)\.(?:(_candidates|choices)\.([A-Za-z0-9_]+)\.)?(.+)$"
)


def mmrazor_to_detnas(state: Dict[str, torch.Tensor], fmt: str) -> Conversion:
    prefix = mmrazor_prefix(state)
    dropped: Counter = Counter(key_group(k, 1) for k in state if not k.startswith(prefix))
    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
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
                dropped[key_group(key, 4)] += 1
                continue
            blocks.setdefault((int(m.group(1)), int(m.group(2))), {}).setdefault(m.group(4), {})[
                rest
            ] = value
            continue
        if key.startswith("backbone.conv1."):
            tail = _from_conv_module(key[len("backbone.conv1.") :])
            if tail is not None:
                out[f"{bb}stem.conv.{tail}"] = value
                rows[("backbone.conv1.*", f"{bb}stem.*")] += 1
                continue
        if key.startswith("backbone.layers.4."):  # the classifier's last 1x1 conv: our head.conv
            tail = _from_conv_module(key[len("backbone.layers.4.") :])
            if tail is not None:
                out[f"head.conv.{tail}"] = value
                rows[("backbone.layers.4.*", "head.conv.*")] += 1
                continue
        ours = _other_from_mmrazor(key) if faster_rcnn or not key.startswith("neck.") else None
        if ours is None:
            dropped[key_group(key, 2)] += 1
            continue
        out[ours] = value
        depth = 4 if key.startswith(("roi_head.bbox_head.shared_", "roi_head.bbox_head.fc")) else 2
        depth = 3 if key.startswith(("neck.", "roi_head.bbox_head.fc_")) else depth
        our_depth = 3 if ours.startswith(("roi_heads.", "proposal_generator.")) else 2
        rows[(key_group(key, depth), key_group(ours, our_depth))] += 1

    if not blocks:
        raise ValueError(
            "MMRazor checkpoint without backbone layers ('backbone.layers.<stage>.<block>.*')"
        )
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
    for s, b in sorted(blocks):
        i = offsets[s] + b
        for name, rest_map in blocks[(s, b)].items():
            where = f"'backbone.layers.{s}.{b}" + (f".<candidates>.{name}'" if name else "'")
            structural = block_from_keys(rest_map, where)
            if name is not None:
                if name not in PAPER_BLOCKS:
                    raise ValueError(
                        f"{where}: unknown candidate '{name}' (the space's blocks are "
                        f"{list(PAPER_BLOCKS)})"
                    )
                if PAPER_BLOCKS.index(name) != structural:
                    raise ValueError(
                        f"{where}: named {name}, but its tensors are those of "
                        f"{PAPER_BLOCKS[structural]}"
                    )
            if is_supernet:
                for rest, value in rest_map.items():
                    out[f"{bb}layers.{i}.choices.{structural}.{rest}"] = value
            else:
                arch.append(structural)
                for rest, value in rest_map.items():
                    out[f"{bb}layers.{i}.{rest}"] = value
            rows[
                (
                    f"backbone.layers.{s}.*",
                    f"{bb}layers.{offsets[s]}-{offsets[s] + depths[s] - 1}.*",
                )
            ] += len(rest_map)
        known = sorted(PAPER_BLOCKS.index(n) for n in blocks[(s, b)] if n in PAPER_BLOCKS)
        if is_supernet and known != list(range(len(PAPER_BLOCKS))):
            raise ValueError(
                f"MMRazor supernet block backbone.layers.{s}.{b} has candidates {sorted(blocks[(s, b)])}, "
                f"the space's are {list(PAPER_BLOCKS)}"
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


# ---- ours -> MMRazor -------------------------------------------------------------------------------


def to_mmrazor(
    state: Dict[str, torch.Tensor],
    version: str = "1.x",
    prefix: str = "architecture.",
    norm_name: str = "bn",
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
        raise ValueError(f"no ShuffleNetV2 backbone ('<prefix>{DETNAS_STEM}') to convert")
    bb = stem[: -len(DETNAS_STEM)]
    if bb not in ("backbone.", "backbone.bottom_up."):
        raise ValueError(
            f"backbone under '{bb}': expected 'backbone.' or 'backbone.bottom_up.' (MMRazor: 'backbone.')"
        )
    layers = split_layers(state, bb)
    starts = stage_starts(layers)
    ends = starts[1:] + [len(layers)]
    stage_of = {i: (s, i - a) for s, (a, e) in enumerate(zip(starts, ends)) for i in range(a, e)}

    out: Dict[str, torch.Tensor] = OrderedDict()
    unplaced = []
    for key, value in state.items():
        if key.startswith(bb + "stem.conv."):
            tail = _to_conv_module(key[len(bb + "stem.conv.") :], norm_name)
            if tail:
                out[prefix + "backbone.conv1." + tail] = value
                continue
        elif key.startswith(bb + "layers."):
            continue  # below, block by block in MMRazor's order
        elif key.startswith("head.conv."):
            tail = _to_conv_module(key[len("head.conv.") :], norm_name)
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
        raise ValueError(
            f"{len(unplaced)} tensors have no place in MMRazor's layout (first '{unplaced[0]}')"
        )

    # Blocks in MMRazor's module order: stage, block, candidate (its order = the space's), branch1 first.
    ordered = OrderedDict()
    for i in sorted(layers):
        s, b = stage_of[i]
        for choice in sorted(layers[i], key=lambda c: -1 if c is None else c):
            rest_map = layers[i][choice]
            block = choice if choice is not None else block_from_keys(rest_map, f"'{bb}layers.{i}'")
            name = PAPER_BLOCKS[block]
            items = sorted(
                rest_map.items(),
                key=lambda kv: (kv[0].startswith("branch_main."), branch_index(kv[0])),
            )
            base = f"{prefix}backbone.layers.{s}.{b}.{mutable}.{name}."
            for rest, value in items:
                ordered[base + _block_rest_to_mmrazor(rest, block)] = value
    # MMRazor's module order: conv1, layers.0-3 (blocks), layers.4, then head / neck / rpn / roi.
    result = OrderedDict()
    for key in list(out):
        if key.startswith(prefix + "backbone.conv1."):
            result[key] = out.pop(key)
    result.update(ordered)
    for key in sorted(out, key=lambda k: _mmrazor_rank(k[len(prefix) :])):
        result[key] = out[key]
    return result


_TOP_RANK = (
    "backbone.",
    "head.",
    "neck.lateral_convs.",
    "neck.fpn_convs.",
    "rpn_head.rpn_conv.",
    "rpn_head.rpn_cls.",
    "rpn_head.rpn_reg.",
    "roi_head.bbox_head.fc_cls.",
    "roi_head.bbox_head.fc_reg.",
    "roi_head.bbox_head.shared_convs.",
    "roi_head.bbox_head.shared_fcs.",
)


def _mmrazor_rank(key: str) -> Tuple[int, int]:
    """MMRazor / MMDetection module order of a non-block key (stable sort keeps a module's own order)."""
    for rank, start in enumerate(_TOP_RANK):
        if key.startswith(start):
            index = key[len(start) :].split(".", 1)[0]
            return rank, int(index) if index.isdigit() else 0
    return len(_TOP_RANK), 0
