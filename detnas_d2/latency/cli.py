"""The command line of `python -m detnas_d2.latency`: build a latency table on this machine and save it."""

import argparse
import os
import sys

import torch

from ..input_size import parse_input_size
from ..search_space import get_space
from .timing import CLOCKS, build_table

__all__ = ["get_parser", "main"]


def get_parser():
    p = argparse.ArgumentParser(
        prog="python -m detnas_d2.latency",
        description="Build a latency lookup table of a DetNAS search space on this machine "
        "(see detnas_d2/latency/__init__.py).",
    )
    p.add_argument(
        "--space",
        default="small",
        help="a shipped space (small, large, large-wide, mobilenetv2) or a space file (.yaml)",
    )
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument(
        "--input-size", required=True, help="HxW (or one number: square), e.g. 224x224 or 800x1333"
    )
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default); recorded in the table",
    )
    p.add_argument("--warmup", type=int, default=10, help="warm-up calls per module")
    p.add_argument(
        "--repeats", type=int, default=30, help="timings per module (the median is kept)"
    )
    p.add_argument("--norm", default="BN", help="norm of the blocks (BN; GN is not folded)")
    p.add_argument(
        "--no-fold-bn",
        action="store_true",
        help="time with BatchNorms (default: folded into convs)",
    )
    p.add_argument(
        "--tail",
        choices=("none", "classifier"),
        default="none",
        help="also time the classification head (1x1 conv, pool, linear)",
    )
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--head-channels", type=int, default=1024)
    p.add_argument(
        "--fit-archs",
        type=int,
        default=12,
        metavar="F",
        help="calibrate the table on the one-block archs and F random archs: a line through "
        "their measured end-to-end backbones against the table's sums, timed in the same round-robin "
        "as the table (0: uncalibrated, the table's sum)",
    )
    p.add_argument(
        "--validate",
        type=int,
        default=10,
        metavar="N",
        help="check the table on N other random archs (held out of the fit) against their measured "
        "end-to-end backbones, timed in the same round-robin (0: skip)",
    )
    p.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: latency (default); cpu: the thread's CPU time, unaffected by other processes "
        "on a shared machine (needs --device cpu --threads 1)",
    )
    p.add_argument(
        "--min-repeat-ms",
        type=float,
        default=None,
        help="run a module this long in a row per timing (default: 0 on CPU: one call, caches as "
        "in the network; 1 on GPU)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="table file: .json, or .yaml/.yml")
    return p


def _error(message) -> int:
    print(f"detnas_d2.latency: error: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        space = get_space(args.space, args.width_mult)
        size = parse_input_size(args.input_size)
        device = torch.device(args.device)
    except (ValueError, RuntimeError) as e:
        return _error(e)
    if device.type == "cuda" and not torch.cuda.is_available():
        return _error("--device cuda, but CUDA is not available here")
    try:  # before the measurement, not after it
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        return _error(
            f"--output {args.output}: a file is in the way of its folder; give another path"
        )
    except OSError as e:
        return _error(f"--output {args.output}: its folder cannot be made ({e.strerror or e})")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        table = build_table(
            space,
            size,
            device,
            args.batch,
            args.warmup,
            args.repeats,
            fold_bn=not args.no_fold_bn,
            norm=args.norm,
            tail=args.tail,
            num_classes=args.num_classes,
            head_channels=args.head_channels,
            seed=args.seed,
            min_repeat_ms=args.min_repeat_ms,
            clock=args.clock,
            fit_archs=args.fit_archs,
            validate=args.validate,
            log=print,
        )
    except ValueError as e:
        return _error(e)
    lo, hi = table.range_ms()
    print(
        f"Stem {table.stem_ms:.4f} ms; space range {lo:.3f} .. {hi:.3f} ms (fastest .. slowest arch)"
    )
    if len(set(space.layer_blocks)) == 1:  # one header: every layer has the same blocks
        print("layer  " + "".join(f"{b.name:>18}" for b in space.layer_blocks[0]))
        for i, row in enumerate(table.layers_ms):
            print(f"{i:5d}  " + "".join(f"{v:>18.4f}" for v in row))
    else:
        for i, row in enumerate(table.layers_ms):
            blocks = space.layer_blocks[i]
            print(f"{i:5d}  " + "  ".join(f"{b.name} {v:.4f}" for b, v in zip(blocks, row)))
    table.save(args.output)
    print(f"Wrote {args.output} ({table.describe()})")
    return 0
