"""A checkpoint of any supported layout in ours: `to_detnas` (a state dict: ours kept, MMRazor's or the
official DetNAS code's converted, with what was converted and dropped) and `convert_checkpoint` (a whole
loaded checkpoint, with where it came from)."""

from collections import Counter
from typing import Dict, Tuple

import torch
from tabulate import tabulate

from .backbone_keys import block_arch, shape_style, split_layers
from .layouts import DETNAS_STEM, Conversion, detect_format, key_group, stem_key, unwrap_state_dict
from .mmrazor import MMRAZOR_INPUT_FORMAT, mmrazor_to_detnas
from .official import OFFICIAL_INPUT_FORMAT, official_to_detnas, refuse_oneshot

__all__ = ["to_detnas", "convert_checkpoint", "conversion_table"]


def to_detnas(state: Dict[str, torch.Tensor]) -> Conversion:
    """`state` (any supported layout) in our layout, with what was converted and dropped."""
    fmt = detect_format(state)
    if fmt == "official-oneshot":
        refuse_oneshot(state)
    if fmt == "official-detnas":
        return official_to_detnas(state)
    if fmt == "detnas-d2":
        stem = stem_key(state)
        prefix = stem[: -len(DETNAS_STEM)]
        supernet = any(k.startswith(prefix + "layers.") and ".choices." in k for k in state)
        head = any(k.startswith("head.") for k in state)
        detector = any(k.startswith(("proposal_generator.", "roi_heads.")) for k in state)
        try:
            arch = None if supernet else block_arch(state, prefix)
            style = shape_style(split_layers(state, prefix))
        except ValueError:
            arch = style = None  # not the space's blocks: the checkpointer says what does not fit
        return Conversion(
            format=fmt,
            state=dict(state),
            arch=arch,
            is_supernet=supernet,
            form="detector" if detector else ("classifier" if head else "backbone"),
            prefix="",
            rows=[
                (key_group(k, 2), key_group(k, 2), n)
                for k, n in Counter(key_group(k, 2) for k in state).items()
            ],
            block_style=style,
        )
    return mmrazor_to_detnas(state, fmt)


def convert_checkpoint(loaded) -> Tuple[dict, Conversion]:
    """A loaded checkpoint in our form ({"model": state dict, ...}) and what was done. Our own
    checkpoints come back whole (optimizer, iteration, ... for resume); MMRazor's and the official
    DetNAS code's as {"model": converted}, with "converted_from" describing the source (its layout and
    the input its stem expects). Raises UnknownLayoutError / MegviiLayoutError."""
    state, container = unwrap_state_dict(loaded)
    conversion = to_detnas(state)
    if conversion.format == "detnas-d2":
        checkpoint = dict(loaded) if container == "model" else {"model": state}
        return checkpoint, conversion
    source = {
        "format": conversion.format,
        "prefix": conversion.prefix,
        "container": container,
        "block_style": conversion.block_style,
    }
    if conversion.format.startswith("official"):
        source.update(input_format=OFFICIAL_INPUT_FORMAT, pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3)
    else:
        source["input_format"] = MMRAZOR_INPUT_FORMAT
    if isinstance(loaded, dict) and "meta" in loaded:
        source["meta"] = loaded["meta"]
    return {"model": conversion.state, "converted_from": source}, conversion


def conversion_table(conversion: Conversion) -> str:
    rows = [(src, dst, n) for src, dst, n in conversion.rows]
    rows += [
        (src, "(dropped: no place in detnas-d2)", n)
        for src, n in sorted(conversion.dropped.items())
    ]
    return tabulate(
        rows, headers=[f"checkpoint ({conversion.format})", "detnas-d2", "tensors"], tablefmt="pipe"
    )
