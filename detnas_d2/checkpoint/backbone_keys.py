"""The ShuffleNetV2 backbone of a state dict in our layout, read from its keys and tensors: its layers and
stages, the blocks of a subnet (`block_arch`), its search space (`infer_space`), and the channel order of
its stem (`flip_stem_channels`). Shared by the conversions of both foreign layouts and the checkpointer."""

import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..search_space import PAPER_BLOCKS, PAPER_SPACES, SearchSpace, get_space
from .layouts import DETNAS_STEM, stem_key

__all__ = [
    "block_from_keys",
    "split_layers",
    "block_arch",
    "stage_starts",
    "shape_style",
    "infer_space",
    "arch_difference",
    "flip_stem_channels",
    "branch_index",
]

_KERNEL_BLOCK = {3: 0, 5: 1, 7: 2}


def block_from_keys(keys: Dict[str, torch.Tensor], where: str) -> int:
    """Block id of one of our blocks from its tensors (keys relative to the block: 'branch_main.<j>...')."""
    main = sorted({int(k.split(".")[1]) for k in keys if k.startswith("branch_main.")})
    if len(main) == 6:
        return PAPER_BLOCKS.index("shuffle_xception")
    if len(main) == 3 and "branch_main.1.weight" in keys:
        kernel = keys["branch_main.1.weight"].shape[-1]
        if kernel in _KERNEL_BLOCK:
            return _KERNEL_BLOCK[kernel]
    raise ValueError(f"{where}: not a block of the DetNAS paper spaces (main-branch convs {main})")


def split_layers(state: Dict[str, torch.Tensor], prefix: str):
    """{layer: {choice or None: {rest: tensor}}} of our backbone at `prefix` (choice None: a subnet)."""
    layers: Dict[int, Dict[Optional[int], Dict[str, torch.Tensor]]] = {}
    start = prefix + "layers."
    for key, value in state.items():
        if not key.startswith(start):
            continue
        layer, rest = key[len(start) :].split(".", 1)
        choice = None
        if rest.startswith("choices."):
            _, choice, rest = rest.split(".", 2)
            choice = int(choice)
        layers.setdefault(int(layer), {}).setdefault(choice, {})[rest] = value
    return layers


def block_arch(state: Dict[str, torch.Tensor], prefix: str = "") -> Optional[Tuple[int, ...]]:
    """The blocks of the subnet at `prefix` in a state dict of our layout, read from its tensors (the
    main branch's conv count and depthwise kernel); None for a supernet or a state without layers."""
    layers = split_layers(state, prefix)
    if not layers or any(None not in choices for choices in layers.values()):
        return None
    if sorted(layers) != list(range(len(layers))):
        raise ValueError(
            f"layers under '{prefix}layers.' are not numbered 0..{len(layers) - 1}: {sorted(layers)}"
        )
    return tuple(
        block_from_keys(layers[i][None], f"'{prefix}layers.{i}'") for i in range(len(layers))
    )


def stage_starts(layers) -> List[int]:
    """Indices of the first layer of every stage: the stride-2 blocks, which have a projection branch."""
    starts = []
    for i in sorted(layers):
        choice = next(iter(layers[i].values()))
        if any(k.startswith("branch_proj.") for k in choice):
            starts.append(i)
    if not starts or starts[0] != 0:
        raise ValueError(
            "the backbone's layer 0 has no projection branch: not a DetNAS ShuffleNetV2"
        )
    return starts


def shape_style(layers) -> Optional[str]:
    """'official' if every stride-2 unit's projection keeps its input channels, 'mmrazor' if it gives half
    of the unit's output, None if the shapes fit both or neither (search_space.py, block styles)."""
    fits = {"official": True, "mmrazor": True}
    for i in stage_starts(layers):
        block = next(iter(layers[i].values()))
        proj = block.get("branch_proj.1.weight")
        main = max(
            (k for k in block if re.match(r"^branch_main\.\d+\.weight$", k)),
            key=branch_index,
            default=None,
        )
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
    layers = split_layers(state, prefix)
    stem = state.get(prefix + DETNAS_STEM)
    if stem is None or not layers:
        raise ValueError(f"no backbone of our layout under '{prefix}'")
    starts = stage_starts(layers)
    ends = starts[1:] + [len(layers)]
    depths = tuple(e - a for a, e in zip(starts, ends))
    stage_out = []
    # output channels of a stride-2 unit: projection + main branch outputs
    for a, e in zip(starts, ends):
        block = next(iter(layers[a].values()))
        proj = max(
            int(k.split(".")[1])
            for k in block
            if k.startswith("branch_proj.") and k.endswith("weight")
        )
        main = max(
            int(k.split(".")[1])
            for k in block
            if k.startswith("branch_main.") and k.count(".") == 2
        )
        stage_out.append(
            block[f"branch_proj.{proj}.weight"].shape[0]
            + block[f"branch_main.{main}.weight"].shape[0]
        )
    style = "official" if shape_style(layers) == "official" else "mmrazor"
    for name in PAPER_SPACES:
        base = get_space(name)
        if base.stage_depths != depths:
            continue
        space = get_space(name, stem.shape[0] / base.stem_channels, style)
        if space.stem_out == stem.shape[0] and list(space.stage_out) == stage_out:
            return space
    raise ValueError(
        f"no search space has stem {stem.shape[0]}, stage channels {stage_out} and blocks per stage {list(depths)}"
    )


def arch_difference(file_arch: Sequence[int], model_arch: Sequence[int], space: SearchSpace) -> str:
    """'' if equal, else a sentence naming the first layer that differs (stage, block, both names in
    `space`)."""
    if len(file_arch) != len(model_arch):
        return f"the file's backbone has {len(file_arch)} layers, the model's {len(model_arch)}"
    for i, (a, b) in enumerate(zip(file_arch, model_arch)):
        if a != b:
            stage, block, start = 0, i, 0
            for s, depth in enumerate(space.stage_depths):
                if i < start + depth:
                    stage, block = s, i - start
                    break
                start += depth
            n = sum(x != y for x, y in zip(file_arch, model_arch))
            return (
                f"layer {i} (stage {stage} block {block}) is {space.block_name(i, a)} in the file and "
                f"{space.block_name(i, b)} in "
                f"MODEL.DETNAS.ARCH ({n} of {len(file_arch)} layers differ)"
            )
    return ""


def flip_stem_channels(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A copy with the stem conv's input channels reversed (RGB <-> BGR input; exact)."""
    key = stem_key(state)
    if key is None:
        raise ValueError(f"no '<prefix>{DETNAS_STEM}' to flip")
    out = dict(state)
    out[key] = state[key].flip(1)
    return out


def branch_index(rest: str) -> int:
    return int(rest.split(".")[1])
