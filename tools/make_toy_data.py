#!/usr/bin/env python
"""Generate the toy datasets ahead of time (they are otherwise generated on first use).

    python tools/make_toy_data.py [--root DIR] [--seed 0] [--kind det cls] [--large-search 512] [--large-train 1280]

--root defaults to $DETNAS_TOY_ROOT or ~/.cache/detnas-d2/toy. Prints the folder of each dataset.
With det, also the larger detection search and training splits (toy_det_search_large, toy_det_train_large)
of --large-search and --large-train images (0: not).
An existing complete folder is checked against its manifest and left as it is.
"""

import argparse
import time

from detectron2.utils.logger import setup_logger

from detnas_d2.data import toy
from detnas_d2.user_errors import reporting_user_errors


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", help="cache folder (default: $DETNAS_TOY_ROOT or ~/.cache/detnas-d2/toy)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kind", nargs="+", choices=("det", "cls"), default=["det", "cls"])
    parser.add_argument(
        "--large-search",
        type=int,
        default=toy.DET_LARGE_SEARCH_IMAGES,
        help="images of the larger detection search split (0: do not make it)",
    )
    parser.add_argument(
        "--large-train",
        type=int,
        default=toy.DET_LARGE_TRAIN_IMAGES,
        help="images of the larger detection training split (0: do not make it)",
    )
    args = parser.parse_args()
    setup_logger(name="detnas_d2")
    with reporting_user_errors("make_toy_data.py"):  # an unwritable root, a damaged folder
        for kind in args.kind:
            start = time.perf_counter()
            path = toy.ensure_toy_data(kind, args.seed, root=args.root)
            print(f"{kind}: {path} ({time.perf_counter() - start:.2f}s)")
            if kind != "det":
                continue
            for split, images in (("search", args.large_search), ("train", args.large_train)):
                if images > 0:
                    start = time.perf_counter()
                    path = toy.ensure_toy_data("det", args.seed, {split: images}, root=args.root)
                    seconds = time.perf_counter() - start
                    print(f"det ({split}, {images} images): {path} ({seconds:.2f}s)")


if __name__ == "__main__":
    main()
