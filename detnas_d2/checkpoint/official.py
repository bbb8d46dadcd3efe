"""The official DetNAS code's checkpoint layout (Megvii: ShuffleNet-Series DetNAS, the DetNAS repository's
ImageNet models and supernet, the backbone of its maskrcnn_benchmark detectors) to ours
(`official_to_detnas`) and back (`to_official`, its exact inverse); ShuffleNet-Series OneShot (SPOS)
checkpoints are recognised and refused. Layouts: `layouts` and docs/design.md ("Checkpoint layouts")."""

import re
from collections import Counter, OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..search_space import PAPER_BLOCKS
from .backbone_keys import block_from_keys, split_layers, stage_starts
from .layouts import DETNAS_STEM, Conversion, key_group, official_prefix, oneshot_prefix, stem_key

__all__ = [
    "OFFICIAL_INPUT_FORMAT",
    "MegviiLayoutError",
    "official_to_detnas",
    "to_official",
    "refuse_oneshot",
]

# The official code feeds BGR pixels in 0-255 without mean or std (ShuffleNet-Series ToBGRTensor; the DetNAS
# detector configs' PIXEL_MEAN [0, 0, 0] with maskrcnn_benchmark's PIXEL_STD [1, 1, 1]).
OFFICIAL_INPUT_FORMAT = "BGR"
# The official code's block names (MMRazor's candidate names are ours, search_space.PAPER_BLOCKS):
OFFICIAL_BLOCKS = {"shufflenet_3x3": 0, "shufflenet_5x5": 1, "shufflenet_7x7": 2, "xception_3x3": 3}


class MegviiLayoutError(ValueError):
    """An official (Megvii) checkpoint that is detected but has no place in the DetNAS space (OneShot)."""


# ---- official DetNAS <-> ours ------------------------------------------------------------------
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
_OFFICIAL_KEY = re.compile(
    r"^features\.(\d+)\.(?:(\d+)\.)?(conv\.(\d+)|proj_conv)\.([A-Za-z0-9_]+)\.(\w+)$"
)
# (depthwise slot, pointwise slot) in our branch of each official part; shufflenet_kxk's branch2a is 1x1 only.
_OFFICIAL_SLOTS = {
    ("shufflenet", "branch2a"): (None, 0),
    ("shufflenet", "branch2b"): (1, 2),
    ("xception", "branch2a"): (0, 1),
    ("xception", "branch2b"): (2, 3),
    ("xception", "branch2c"): (4, 5),
    ("proj", "proj"): (0, 1),
}
_OFFICIAL_OPS = tuple(OFFICIAL_BLOCKS)  # their blocks_key order = our block ids
_NORM_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _official_parent(family: str, part: str) -> str:
    """The Sequential that holds a part: 'proj_conv', or 'conv.<j>' (the j-th part of the main branch)."""
    return (
        "proj_conv"
        if family == "proj"
        else f"conv.{sorted(p for f, p in _OFFICIAL_SLOTS if f == family).index(part)}"
    )


def _official_tail(parent: str, module: str, param: str, choice: Optional[int], where: str):
    """(unit, our key inside the block, block id named by the module or None) of one official block tensor."""
    m = _OFFICIAL_NAME.match(module)
    if m is None:
        raise ValueError(f"{where}: '{module}' is not a module name of the official DetNAS blocks")
    op, part = m.group("op"), m.group("part")
    block = OFFICIAL_BLOCKS[op] if op else choice
    family = (
        "proj"
        if part == "proj"
        else ("xception" if PAPER_BLOCKS[block] == "shuffle_xception" else "shufflenet")
    )
    slots = _OFFICIAL_SLOTS.get((family, part))
    is_norm = m.group("kind") == "bn" or m.group("dwbn") is not None
    slot = None if slots is None else slots[0 if m.group("dw") else 1]
    if (
        slot is None
        or _official_parent(family, part) != parent
        or (is_norm and param not in _NORM_PARAMS)
        or (not is_norm and param != "weight")
    ):
        raise ValueError(
            f"{where}: '{parent}.{module}.{param}' has no place in a block of the DetNAS space"
        )
    branch = "branch_proj" if part == "proj" else "branch_main"
    return (
        m.group("unit"),
        f"{branch}.{slot}.{'norm.' + param if is_norm else param}",
        (block if op else None),
    )


def _official_units(depths: Sequence[int]) -> List[str]:
    return [f"{s + 1}{chr(ord('a') + b)}" for s, depth in enumerate(depths) for b in range(depth)]


def official_to_detnas(state: Dict[str, torch.Tensor]) -> Conversion:
    prefix = official_prefix(state)
    dropped: Counter = Counter(
        key_group(k, 3 if k.startswith("module.") else 2) for k in state if not k.startswith(prefix)
    )
    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    # maskrcnn_benchmark's detector keeps the backbone under 'backbone.body.' (FPN and heads beside it).
    form = (
        "detector"
        if prefix.endswith("backbone.body.")
        else (
            "classifier" if any(k.startswith(("last_conv.", "fc.")) for k in state) else "backbone"
        )
    )
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
            tail = key[len(top) :]
            if top != "fc.fc.":
                tail = (
                    tail[len("conv.") :]
                    if tail.startswith("conv.")
                    else ("norm." + tail[3:] if tail.startswith("bn.") else None)
                )
            if tail is not None:
                out[heads[top] + tail] = value
                rows[(prefix + key_group(key, 1), key_group(heads[top] + tail, 2))] += 1
                continue
        dropped[prefix + key_group(key, 2)] += 1

    if not blocks or sorted(blocks) != list(range(len(blocks))):
        raise ValueError(
            f"official DetNAS checkpoint without layers 'features.0..N' under '{prefix}' (found {sorted(blocks)[:5]})"
        )
    several = {i for i, c in blocks.items() if None not in c}
    is_supernet = bool(several)
    if is_supernet and len(several) != len(blocks):
        raise ValueError(
            f"official checkpoint is partly a supernet: layers {sorted(set(blocks) - several)[:5]} hold one block"
        )
    # Layer order: unit '<stage><letter>' of layer i must be the i-th of the stages the units describe.
    layer_units = []
    for i in range(len(blocks)):
        if len(units[i]) != 1:
            raise ValueError(
                f"'{prefix}features.{i}' mixes the modules of units {sorted(units[i])}"
            )
        layer_units.append(next(iter(units[i])))
    stages = [int(u[:-1]) for u in layer_units]
    depths = [stages.count(s) for s in range(1, max(stages) + 1)]
    expected = _official_units(depths)
    if layer_units != expected:
        first = next(i for i, (a, b) in enumerate(zip(layer_units, expected)) if a != b)
        raise ValueError(
            f"'{prefix}features.{first}' is unit {layer_units[first]}, expected {expected[first]}: layers out of order"
        )

    arch = []
    offsets = [sum(depths[:s]) for s in range(len(depths))]
    for i in range(len(blocks)):
        stage = stages[i] - 1
        for choice, rest_map in sorted(
            blocks[i].items(), key=lambda kv: -1 if kv[0] is None else kv[0]
        ):
            where = f"'{prefix}features.{i}" + ("'" if choice is None else f".{choice}'")
            structural = block_from_keys(rest_map, where)
            names = named.get((i, choice), set())
            if (
                len(names) != 1
                or next(iter(names)) != structural
                or choice not in (None, structural)
            ):
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
            rows[
                (
                    f"{prefix}features.{offsets[stage]}-{offsets[stage] + depths[stage] - 1}.*",
                    f"{bb}layers.{offsets[stage]}-{offsets[stage] + depths[stage] - 1}.*",
                )
            ] += len(rest_map)
        if is_supernet and sorted(blocks[i]) != list(range(len(PAPER_BLOCKS))):
            raise ValueError(
                f"official supernet layer '{prefix}features.{i}' has choices {sorted(blocks[i])}, the space's are 0..3"
            )
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
        raise ValueError(f"no ShuffleNetV2 backbone ('<prefix>{DETNAS_STEM}') to convert")
    bb = stem[: -len(DETNAS_STEM)]
    layers = split_layers(state, bb)
    starts = stage_starts(layers)
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
        tail = key[len(top) :] if top else ""
        if top is None or (
            top != "head.linear." and not (tail in ("weight", "bias") or tail.startswith("norm."))
        ):
            raise ValueError(
                f"'{key}' has no place in the official DetNAS layout (backbone and classifier only)"
            )
        if top != "head.linear.":
            tail = "bn." + tail[len("norm.") :] if tail.startswith("norm.") else "conv." + tail
        out[prefix + heads[top] + tail] = value
    blocks = OrderedDict()
    for i in sorted(layers):
        for choice in sorted(layers[i], key=lambda c: -1 if c is None else c):
            rest_map = layers[i][choice]
            block = choice if choice is not None else block_from_keys(rest_map, f"'{bb}layers.{i}'")
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
    family = (
        "proj" if m.group(1) == "proj" else ("xception" if op == "xception_3x3" else "shufflenet")
    )
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


def refuse_oneshot(state) -> None:
    prefix = oneshot_prefix(state)
    mids = {}  # layer -> channels of its main branch's first 1x1 conv
    for key, value in state.items():
        m = (
            re.match(r"^features\.(\d+)\.branch_main\.0\.weight$", key[len(prefix) :])
            if key.startswith(prefix)
            else None
        )
        if m and value.dim() == 4 and value.shape[-1] == 1:
            mids[int(m.group(1))] = value.shape[0]
    raise MegviiLayoutError(
        f"an official Single Path One-Shot checkpoint (ShuffleNet-Series OneShot/network.py: '{prefix}first_conv.0', "
        f"'{prefix}features.<i>.branch_main', 'conv_last', 'classifier'). That network also searches every unit's "
        f"mid channels (out/2 x 0.2..1.6; this file's 1x1 mid channels by layer: {[mids[i] for i in sorted(mids)]}), "
        "which the DetNAS space does not have: it cannot be loaded. The DetNAS checkpoints of ShuffleNet-Series "
        "(DetNAS/) and of the DetNAS repository load (MODEL.DETNAS.BLOCK_STYLE official)."
    )
