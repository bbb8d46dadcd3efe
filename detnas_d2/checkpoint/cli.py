"""Convert DetNAS checkpoints between MMRazor's or the official code's layout and detnas-d2's (Detectron2's).

    # MMRazor 1.x / 0.x (classifier or MMDetection detector, supernet or subnet) -> detnas-d2
    python tools/convert_checkpoint.py detnas_subnet_frcnn_..._v1.pth detnas_frcnn.pth
    # a subnet out of a supernet checkpoint (any layout), checked against the space
    python tools/convert_checkpoint.py spos_supernet.pth subnet.pth --arch best_arch.yaml
    # detnas-d2 -> MMRazor 1.x (keys under 'architecture.', as MMRazor's configs load with prefix='architecture.')
    python tools/convert_checkpoint.py output/imagenet/subnet_small/model_final.pth mmrazor.pth --to mmrazor
    # official DetNAS (ShuffleNet-Series DetNAS/, the DetNAS repository's ImageNet models and supernet; of a
    # maskrcnn_benchmark detector its backbone) -> detnas-d2, for MODEL.DETNAS.BLOCK_STYLE official
    python tools/convert_checkpoint.py COCO_FPN_300M.pkl detnas_official_300M.pth
    # back: a model of block style official / official-shuffle1 (classifier or backbone) -> official keys
    python tools/convert_checkpoint.py detnas_official_300M.pth official.pth --to official

The file is read without running code from it (as MODEL.WEIGHTS is: detnas_d2.checkpoint.read_checkpoint;
`.pkl` files need DETNAS_ALLOW_PICKLE=1). A round trip is exact: every tensor and key comes back.

Channel order: MMRazor's weights take RGB input, this project's configs (and Detectron2's default) BGR. The
Detectron2-side file records the order its stem expects (`converted_from.input_format`, `--input-format`,
default BGR: the stem conv's input channels are reversed, which is exact), and DetNASCheckpointer flips it
again for a model whose PIXEL_MEAN is in the other order. `--to mmrazor` writes RGB weights.
The official weights take BGR input (no flip either way); `--to official` refuses a model of MMRazor's
network (MODEL.DETNAS.BLOCK_STYLE mmrazor: other tensor shapes) and detector parts (the official code has
its own detector, maskrcnn_benchmark's). A subnet file whose blocks disagree with --arch is an error naming
the first layer that differs.
"""

import argparse
import os
import sys
from collections import OrderedDict

import torch

from detnas_d2.arch_io import load_arch
from detnas_d2.checkpoint import (
    CheckpointError,
    conversion_table,
    convert_checkpoint,
    read_checkpoint,
)
from detnas_d2.checkpoint.backbone_keys import arch_difference, flip_stem_channels, infer_space
from detnas_d2.checkpoint.layouts import DETNAS_STEM, UnknownLayoutError, stem_key
from detnas_d2.checkpoint.mmrazor import MMRAZOR_INPUT_FORMAT, to_mmrazor
from detnas_d2.checkpoint.official import (
    OFFICIAL_INPUT_FORMAT,
    MegviiLayoutError,
    to_official,
)
from detnas_d2.modeling.backbone import subnet_state_dict_from_supernet
from detnas_d2.search_space import arch_to_str


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "src", help="checkpoint to convert (MMRazor 1.x / 0.x, official DetNAS or detnas-d2)"
    )
    parser.add_argument("dst", help="output file")
    parser.add_argument("--to", choices=("detectron2", "mmrazor", "official"), default="detectron2")
    parser.add_argument(
        "--arch",
        default="",
        help="subnet arch (file, ids or names): extract it from a supernet, "
        "or check a subnet against it",
    )
    parser.add_argument(
        "--input-format",
        choices=("BGR", "RGB"),
        default="BGR",
        help="--to detectron2: channel order the written stem expects (default BGR, as the configs)",
    )
    parser.add_argument(
        "--mmrazor-version",
        choices=("1.x", "0.x"),
        default="1.x",
        help="--to mmrazor: '_candidates' (1.x) or 'choices' (0.x) keys",
    )
    parser.add_argument(
        "--prefix",
        default=None,
        help="--to mmrazor / official: key prefix (default: the source's, "
        "else 'architecture.' for MMRazor 1.x, 'architecture.model.' for 0.x, '' for official)",
    )
    return parser.parse_args(argv)


def _backbone_prefix(state):
    key = stem_key(state)
    return key[: -len(DETNAS_STEM)]


def _apply_arch(state, arch_spec, conversion):
    """The state with the subnet of `arch_spec` taken out of a supernet, or checked against a subnet."""
    prefix = _backbone_prefix(state)
    space = infer_space(state, prefix)
    arch = load_arch(arch_spec, space)
    if conversion.is_supernet:
        return subnet_state_dict_from_supernet(state, space, arch, prefix=prefix), arch
    if conversion.arch is not None:
        difference = arch_difference(conversion.arch, arch, space)
        if difference:
            raise ValueError(
                f"--arch and the file disagree: {difference} (the file's arch: {arch_to_str(conversion.arch)})"
            )
    return state, arch


def _output_problem(dst: str):
    """Why `dst` cannot be written (checked before the conversion), or None (missing folders are made when
    it is written)."""
    if os.path.isdir(dst):
        return f"{dst} is a folder: give the output file's path"
    folder = os.path.dirname(os.path.abspath(dst))
    parent = folder
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is a file, not a folder: give an output path in a folder"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    problem = _output_problem(args.dst)
    if problem:
        print(f"convert_checkpoint: cannot write {args.dst}: {problem}", file=sys.stderr)
        return 2
    try:
        checkpoint, conversion = convert_checkpoint(read_checkpoint(args.src))
    except CheckpointError as e:  # names the file
        print(f"convert_checkpoint: {e}", file=sys.stderr)
        return 2
    except (UnknownLayoutError, MegviiLayoutError, ValueError, OSError) as e:
        print(f"convert_checkpoint: {args.src}: {e}", file=sys.stderr)
        return 2
    source = dict(checkpoint.get("converted_from") or {})
    state = checkpoint["model"]
    source_format = source.get("input_format", "BGR")  # ours, unrecorded: the configs' BGR
    if conversion.format != "detnas-d2":
        print(
            f"{args.src}: {conversion.format} {conversion.form}, "
            + (
                "supernet"
                if conversion.is_supernet
                else f"subnet {arch_to_str(conversion.arch or ())}"
            )
        )
        print(conversion_table(conversion))
    try:
        if args.arch:
            state, arch = _apply_arch(state, args.arch, conversion)
            print(f"arch {arch_to_str(arch)}")
        if args.to == "detectron2":
            if source_format != args.input_format:
                state = flip_stem_channels(state)
            source["input_format"] = args.input_format
            out = {"model": state, "converted_from": source or {"format": "detnas-d2"}}
        elif args.to == "official":
            if source_format != OFFICIAL_INPUT_FORMAT:
                state = flip_stem_channels(state)
            prefix = args.prefix
            if prefix is None:
                prefix = (
                    source.get("prefix", "") if source.get("format") == "official-detnas" else ""
                )
            out = {"state_dict": OrderedDict(to_official(state, prefix))}
        else:
            if source_format != MMRAZOR_INPUT_FORMAT:
                state = flip_stem_channels(state)
            prefix = args.prefix
            if prefix is None:
                if (
                    source.get("format", "").startswith("mmrazor")
                    and args.mmrazor_version == source["format"][-3:]
                ):
                    prefix = source.get("prefix", "")
                else:
                    prefix = (
                        "architecture." if args.mmrazor_version == "1.x" else "architecture.model."
                    )
            meta = source.get("meta") or {"converted_by": "detnas-d2 tools/convert_checkpoint.py"}
            out = {
                "meta": meta,
                "state_dict": OrderedDict(to_mmrazor(state, args.mmrazor_version, prefix)),
            }
    except ValueError as e:
        print(f"convert_checkpoint: {args.src}: {e}", file=sys.stderr)
        return 2
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
        torch.save(out, args.dst)
    except (OSError, RuntimeError) as e:  # torch: RuntimeError for a missing folder
        print(f"convert_checkpoint: cannot write {args.dst}: {e}", file=sys.stderr)
        return 2
    tensors = out["model"] if args.to == "detectron2" else out["state_dict"]
    stem = {
        "detectron2": out.get("converted_from", {}).get("input_format"),
        "mmrazor": MMRAZOR_INPUT_FORMAT,
        "official": OFFICIAL_INPUT_FORMAT,
    }[args.to]
    print(f"wrote {args.dst}: {len(tensors)} tensors, {args.to} layout, stem for {stem} input")
    return 0


if __name__ == "__main__":
    sys.exit(main())
