"""Describe an arch: chosen blocks, FLOPs and params per stage.

    python -m detnas_d2.arch_info ARCH [--space NAME|SPACE.yaml] [--width-mult W]
                                       [--head none|classifier] [--num-classes N] [--input-size 224|HxW] [--json]

ARCH is an arch file in any format read by `detnas_d2.arch_io` (ours, official DetNAS, MMRazor 1.x/0.x),
a comma-separated list of block ids or names, or random:SEED. --space is a shipped space's name or a
space file. Without --space (--width-mult), the space (width) named in the file is used, else the
shipped space implied by the number of layers (width 1.0); random:SEED defaults to the small space.
FLOPs are multiply-accumulates as fvcore counts them (see `detnas_d2.flops`).
"""

import argparse
import json
import sys

from tabulate import tabulate

from .arch_io import load_arch_record
from .flops import HEADS, get_flops_table
from .input_size import parse_input_size
from .latency import LatencyTable
from .search_space import get_space, shipped_spaces, stage_stride

# Short names of the paper spaces' blocks in the table; other blocks keep their names.
SHORT_NAMES = {
    "shuffle_3x3": "3x3",
    "shuffle_5x5": "5x5",
    "shuffle_7x7": "7x7",
    "shuffle_xception": "xcp",
}


def human(count: float) -> str:
    """312345678 -> '312.35M'."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(count) >= scale:
            return f"{count / scale:.2f}{suffix}"
    return str(count)


def _input_size(text: str):
    try:
        return parse_input_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'")
    return value


def describe(
    arch_spec,
    space=None,
    width_mult=None,
    head="none",
    num_classes=1000,
    input_size=None,
    latency_table: str = "",
) -> dict:
    """Everything arch_info prints, as a JSON-ready dict. Raises ValueError on a bad arch or option.
    `input_size` None: the one the file's FLOPs were measured at (`input_size` of a search's
    best_arch.yaml), else 224. `latency_table`: a table of `python -m detnas_d2.latency` for this space,
    whose predicted latency per stage and in all is added."""
    if space is None and str(arch_spec).startswith("random:"):
        space = "small"
    record = load_arch_record(arch_spec, get_space(space) if space else None)
    if width_mult is None:
        width_mult = record.metadata.get("width_mult", 1.0)
    if input_size is None:
        size = record.metadata.get("input_size", 224)
        input_size = (size, size) if isinstance(size, int) else tuple(size)
    search_space = get_space(space or record.space, width_mult)
    table = get_flops_table(search_space, input_size, head=head, num_classes=num_classes)
    arch = record.arch
    stages = []
    for stage, (channels, depth) in enumerate(
        zip(search_space.stage_out, search_space.stage_depths)
    ):
        first = sum(search_space.stage_depths[:stage])
        layers = range(first, first + depth)
        stages.append(
            {
                "stage": stage,
                "layers": [layers[0], layers[-1]],
                "channels": channels,
                "stride": stage_stride(stage),
                "choices": [search_space.block_name(i, arch[i]) for i in layers],
                "flops": sum(table.layer_flops[i][arch[i]] for i in layers),
                "params": sum(table.layer_params[i][arch[i]] for i in layers),
            }
        )
    info = {
        "space": search_space.name,
        "width_mult": search_space.width_mult,
        "input_size": list(table.input_size),
        "head": head,
        "num_classes": num_classes if head == "classifier" else None,
        "format": record.format,
        "metadata": record.metadata,
        "arch": list(arch),
        "choices": [search_space.block_name(i, a) for i, a in enumerate(arch)],
        "flops": table.flops(arch),
        "params": table.params(arch),
        "stem": {
            "channels": search_space.stem_out,
            "flops": table.stem_flops,
            "params": table.stem_params,
        },
        "stages": stages,
        "head_flops": table.head_flops,
        "head_params": table.head_params,
        "space_min_flops": table.min_flops,
        "space_max_flops": table.max_flops,
    }
    if latency_table:
        latency = LatencyTable.load(latency_table, expect_space=search_space)
        per_stage = latency.per_stage(arch)
        info["latency"] = {
            "table": latency_table,
            "device": latency.describe(),
            "ms": sum(per_stage.values()),
            "stem_ms": per_stage["stem"],
            "head_ms": per_stage.get("head", 0.0),
        }
        for s, name in zip(stages, search_space.out_features):
            s["latency_ms"] = per_stage[name]
    return info


def format_table(info: dict) -> str:
    h, w = info["input_size"]
    head = (
        f"classifier head, {info['num_classes']} classes"
        if info["head"] == "classifier"
        else "backbone only"
    )
    stem = info["stem"]
    rows = [
        ["stem", "-", stem["channels"], 2, "conv3x3", human(stem["flops"]), human(stem["params"])]
    ]
    for s in info["stages"]:
        first, last = s["layers"]
        blocks = " ".join(SHORT_NAMES.get(c, c) for c in s["choices"])
        flops, params = human(s["flops"]), human(s["params"])
        rows.append(
            [s["stage"], f"{first}-{last}", s["channels"], s["stride"], blocks, flops, params]
        )
    if info["head"] == "classifier":
        rows.append(
            [
                "head",
                "-",
                "-",
                "-",
                "conv1x1+fc",
                human(info["head_flops"]),
                human(info["head_params"]),
            ]
        )
    rows.append(["total", "", "", "", "", human(info["flops"]), human(info["params"])])
    headers = ["stage", "layers", "channels", "stride", "blocks", "FLOPs", "params"]
    latency = info.get("latency")
    if latency:  # predicted ms per row: stem, stages, [head], total
        ms = [latency["stem_ms"]] + [s["latency_ms"] for s in info["stages"]]
        ms += [latency["head_ms"]] if info["head"] == "classifier" else []
        for row, value in zip(rows, ms + [latency["ms"]]):
            row.append(f"{value:.3f}")
        headers.append("ms")
    table = tabulate(
        rows,
        headers=headers,
        tablefmt="simple",
        colalign=("left", "left", "right", "right", "left", "right", "right", "right")[
            : len(headers)
        ],
    )
    lines = [
        f"arch: {','.join(map(str, info['arch']))}",
        f"space {info['space']}, width {info['width_mult']}, input {h}x{w}, {head}",
        table,
        f"FLOPs {info['flops']:,} ({human(info['flops'])} multiply-accumulates), params {info['params']:,}",
        f"space FLOPs range at this input: {human(info['space_min_flops'])} - {human(info['space_max_flops'])}",
    ]
    if latency:
        lines.append(f"predicted latency {latency['ms']:.3f} ms on {latency['device']}")
    if any(c in SHORT_NAMES for s in info["stages"] for c in s["choices"]):
        lines.append("blocks: " + ", ".join(f"{v} = {k}" for k, v in SHORT_NAMES.items()))
    return "\n".join(lines)


def get_parser():
    parser = argparse.ArgumentParser(
        prog="python -m detnas_d2.arch_info",
        description="Chosen blocks, FLOPs (multiply-accumulates, fvcore) and params of a DetNAS arch.",
    )
    parser.add_argument(
        "arch", help="arch file (any format), comma-separated block ids, or random:SEED"
    )
    parser.add_argument(
        "--space",
        help=f"a shipped space ({', '.join(shipped_spaces())}) or a space file (.yaml); default: the "
        "file's, else implied by the length (random: small)",
    )
    parser.add_argument("--width-mult", type=_positive_float, help="default: the file's, else 1.0")
    parser.add_argument(
        "--head", choices=HEADS, default="none", help="classifier: count the ImageNet form"
    )
    parser.add_argument("--num-classes", type=int, default=1000, help="of the classifier head")
    parser.add_argument(
        "--input-size",
        type=_input_size,
        help="224 or HxW (default: the file's input_size, else 224)",
    )
    parser.add_argument(
        "--latency-table",
        default="",
        help="a latency table (python -m detnas_d2.latency): predicted ms per stage",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    try:
        info = describe(
            args.arch,
            args.space,
            args.width_mult,
            args.head,
            args.num_classes,
            args.input_size,
            args.latency_table,
        )
    except (ValueError, FileNotFoundError) as e:  # the arch, the space, the latency table
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(info, default=str) if args.json else format_table(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
