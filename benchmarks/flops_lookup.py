"""FLOPs of an arch: table lookup (detnas_d2.flops) vs building the subnet and tracing it with fvcore.

    python benchmarks/flops_lookup.py [--spaces small large large-wide] [--input-size 224] [--traced 3]

For every space: the one-off table build time, the time per arch of fvcore (subnet build + trace) and of
the table lookup (flops + params), their ratio, and a check that both give the same numbers.
"""

import argparse
import random
import time
import timeit

import detnas_d2  # noqa: F401  (compat shims before detectron2 imports)

import torch
from tabulate import tabulate

from detnas_d2.flops import count_flops, get_flops_table
from detnas_d2.modeling.backbone import ShuffleNetV2Subnet
from detnas_d2.search_space import get_space, shipped_spaces


def fvcore_flops_params(space, arch, size):
    model = ShuffleNetV2Subnet(space, arch)
    return count_flops(model, torch.zeros(1, 3, size, size)), sum(
        p.numel() for p in model.parameters()
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--spaces",
        nargs="+",
        default=list(shipped_spaces()),
        help="shipped spaces' names or space files",
    )
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--traced", type=int, default=3, help="archs traced with fvcore per space")
    parser.add_argument("--lookups", type=int, default=20000, help="archs looked up per space")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for name in args.spaces:
        space = get_space(name, args.width_mult)
        rng = random.Random(0)
        start = time.perf_counter()
        table = get_flops_table(space, args.input_size)
        build_s = time.perf_counter() - start

        traced = [space.random_arch(rng) for _ in range(args.traced)]
        start = time.perf_counter()
        measured = [fvcore_flops_params(space, arch, args.input_size) for arch in traced]
        fvcore_s = (time.perf_counter() - start) / len(traced)
        exact = all(m == (table.flops(a), table.params(a)) for a, m in zip(traced, measured))

        looked_up = [space.random_arch(rng) for _ in range(args.lookups)]
        lookup_s = timeit.timeit(
            lambda: [(table.flops(a), table.params(a)) for a in looked_up], number=1
        )
        lookup_s /= len(looked_up)
        rows.append(
            [
                name,
                f"{build_s:.2f} s",
                f"{fvcore_s * 1e3:.1f} ms",
                f"{lookup_s * 1e6:.1f} us",
                f"{fvcore_s / lookup_s:,.0f}x",
                f"{build_s / fvcore_s:.1f}",
                "yes" if exact else "NO",
            ]
        )
    print(
        f"input {args.input_size}x{args.input_size}, width {args.width_mult}, {args.threads} thread(s), "
        f"{args.traced} traced / {args.lookups} looked-up archs per space"
    )
    print(
        tabulate(
            rows,
            headers=[
                "space",
                "table build",
                "fvcore / arch",
                "lookup / arch (flops+params)",
                "speed-up",
                "build = N traces",
                "equal",
            ],
        )
    )


if __name__ == "__main__":
    main()
