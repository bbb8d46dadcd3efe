#!/usr/bin/env python
"""A whole toy search under a cheap scoring protocol against the same search under the full protocol.

Both searches run configs/Toy/search_det.yaml on a trained toy detection supernet, scoring on the larger
held-out split toy_det_search_large. The full protocol: every candidate on all of it after BN recalibration
on the config's images, at the detector's resolution. The cheap one: racing (DETNAS.SEARCH.RACING), fewer
recalibration images, a lower resolution (DETNAS.SEARCH.EVAL_MIN_SIZE) and optionally the ridge predictor.
Prints the image forwards and wall time of each, the cheap scores' Kendall tau / Spearman rho / top-k overlap
against the full protocol's scores of the same archs (archs the full search did not score are scored under it
afterwards, outside both costs), whether the best archs agree, and a projected full-scale cost table beside
the official DetNAS and MMRazor protocols.

    python benchmarks/search_protocols.py [--weights W] [--output-dir D] [--slices 0.1,0.3] [--margin 1.0]
        [--recalib-images 16] [--min-size 96] [--predictor ridge] [KEY VALUE ...]

KEY VALUE options go to both searches (e.g. DETNAS.SEARCH.GENERATIONS 3). A finished search in --output-dir
is read back instead of run again (delete its folder to rerun it).
"""

import argparse
import json
import os
import sys
import time

import detnas_d2  # noqa: F401  (first: compat shims, registrations)

from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from detnas_d2.audit.protocols import protocol_figures, read_protocol
from detnas_d2.config import get_detnas_cfg
from detnas_d2.file_io import read_json_lines
from detnas_d2.search import build_scorer, run_search

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_WEIGHTS = os.path.join(
    ROOT, "output", "rank_audit_toy", "recipe_a", "det_supernet", "model_final.pth"
)
# Full scale, per candidate: the official DetNAS protocol (4,000 recalibration + 5,000 evaluation images at
# the detector's resolution) and MMRazor's (5,000 evaluation images, train-mode BN: no recalibration), for up
# to 1,000 candidates. GPU-seconds per image forward: MMRazor's DetNAS search scores a candidate in about 24 s
# on 2 A6000 GPUs, 2 x 24 / 5000 s an image; the same rate is used for every row.
FULL_SCALE = {
    "candidates": 1000,
    "recalib": 4000,
    "eval": 5000,
    "gpu_seconds_per_image": 2 * 24 / 5000,
    "gpus": 8,
}


def _search(cfg, label):
    """Run (or read back) one search; its records and wall seconds (None when read back)."""
    if os.path.exists(os.path.join(cfg.OUTPUT_DIR, "best_arch.yaml")):
        print(f"{label}: reading the finished search in {cfg.OUTPUT_DIR}", flush=True)
        return read_json_lines(os.path.join(cfg.OUTPUT_DIR, "candidates.jsonl")), None
    start = time.perf_counter()
    run_search(cfg, resume=True)
    return read_json_lines(
        os.path.join(cfg.OUTPUT_DIR, "candidates.jsonl")
    ), time.perf_counter() - start


def _costs(records):
    return {
        "candidates": len(records),
        "full": sum(r.get("full", True) for r in records),
        "recalib": sum(r["images_recalib"] for r in records),
        "eval": sum(r["images_eval"] for r in records),
        "seconds": sum(r["seconds_wall"] for r in records),
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", default=os.path.join(ROOT, "configs", "Toy", "search_det.yaml")
    )
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, help="trained toy detection supernet")
    parser.add_argument("--eval-dataset", default="toy_det_search_large")
    parser.add_argument(
        "--output-dir", default=os.path.join(ROOT, "output", "bench_search_protocols")
    )
    parser.add_argument(
        "--slices", default="0.1,0.3", help="racing slices, comma-separated (empty: off)"
    )
    parser.add_argument(
        "--margin", type=float, default=1.0, help="racing's least margin (AP points)"
    )
    parser.add_argument(
        "--recalib-images", type=int, default=16, help="cheap BN recalibration images"
    )
    parser.add_argument(
        "--min-size", type=int, default=96, help="cheap test-time shorter side (0: the model's)"
    )
    parser.add_argument(
        "--predictor", default="", help="cheap: DETNAS.SEARCH.PREDICTOR (ridge) or none"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="KEY VALUE options for both searches"
    )
    args = parser.parse_args()
    args.slices = [float(f) for f in args.slices.split(",") if f.strip()]
    if not os.path.isfile(args.weights):
        sys.exit(
            f"--weights {args.weights}: no such supernet checkpoint (train configs/Toy/det_supernet.yaml)"
        )
    setup_logger(name="detnas_d2")
    base = get_detnas_cfg(
        args.config_file,
        list(args.opts)
        + [
            "MODEL.WEIGHTS",
            args.weights,
            "DETNAS.SEARCH.EVAL_DATASET",
            args.eval_dataset,
            "DETNAS.SEARCH.EVAL_IMAGES",
            0,
        ],
    )
    base.defrost()
    full, cheap = base.clone(), base.clone()
    full.OUTPUT_DIR = os.path.join(args.output_dir, "full")
    cheap.OUTPUT_DIR = os.path.join(args.output_dir, "cheap")
    cheap.DETNAS.SEARCH.RACING.SLICES = tuple(args.slices)
    cheap.DETNAS.SEARCH.RACING.MARGIN = args.margin
    cheap.DETNAS.BN_RECALIB.IMAGES = args.recalib_images
    cheap.DETNAS.SEARCH.EVAL_MIN_SIZE = args.min_size
    cheap.DETNAS.SEARCH.PREDICTOR = args.predictor

    full_records, full_wall = _search(full, "full protocol")
    cheap_records, cheap_wall = _search(cheap, "cheap protocol")

    # The full protocol's scores of every arch the cheap search scored in full (outside both costs).
    reference = {tuple(r["arch"]): r for r in full_records}
    missing = [
        r["arch"]
        for r in cheap_records
        if r.get("full", True) and tuple(r["arch"]) not in reference
    ]
    extra_path = os.path.join(args.output_dir, "full_protocol_extra.jsonl")
    extra = {tuple(r["arch"]): r for r in read_json_lines(extra_path)}
    missing = [a for a in missing if tuple(a) not in extra]
    if missing:
        print(
            f"Scoring {len(missing)} archs of the cheap search under the full protocol", flush=True
        )
        scorer = build_scorer(full)
        with open(extra_path, "a") as f:
            for arch in missing:
                start = time.perf_counter()
                line = dict(
                    scorer.score(arch), arch=list(arch), seconds=time.perf_counter() - start
                )
                f.write(json.dumps(line) + "\n")
                extra[tuple(arch)] = line
    reference_path = os.path.join(args.output_dir, "full_protocol_scores.jsonl")
    with open(reference_path, "w") as f:
        for r in list(full_records) + [r for a, r in extra.items() if a not in reference]:
            f.write(json.dumps(r) + "\n")

    topk = int(base.DETNAS.SEARCH.TOPK)
    ranking = protocol_figures(
        read_protocol(reference_path),
        read_protocol(os.path.join(cheap.OUTPUT_DIR, "candidates.jsonl")),
        topk,
    )
    fc, cc = _costs(full_records), _costs(cheap_records)
    best_full = max(full_records, key=lambda r: r["score"])
    best_cheap = max((r for r in cheap_records if r.get("full", True)), key=lambda r: r["score"])
    best_cheap_full = (
        reference.get(tuple(best_cheap["arch"])) or extra[tuple(best_cheap["arch"])]
    )["score"]

    rows = []
    for name, c, wall in (("full", fc, full_wall), ("cheap", cc, cheap_wall)):
        images = c["recalib"] + c["eval"]
        rows.append(
            [
                name,
                c["candidates"],
                c["full"],
                c["recalib"],
                c["eval"],
                images,
                f"{images / (fc['recalib'] + fc['eval']):.3f}",
                f"{c['seconds']:.0f}",
                f"{c['seconds'] / fc['seconds']:.3f}",
                "read back" if wall is None else f"{wall:.0f}",
            ]
        )
    print("\n## Toy search: cheap protocol against the full protocol\n")
    print(
        f"cheap: racing slices {tuple(args.slices) or 'off'} (margin >= {args.margin}), "
        f"{args.recalib_images} recalibration images (full: {full.DETNAS.BN_RECALIB.IMAGES}), shorter side "
        f"{args.min_size or full.INPUT.MIN_SIZE_TEST} (full: {full.INPUT.MIN_SIZE_TEST}), predictor "
        f"{args.predictor or 'none'}; evaluation on {args.eval_dataset}\n"
    )
    print(
        tabulate(
            rows,
            headers=[
                "protocol",
                "candidates",
                "fully scored",
                "recalib images",
                "eval images",
                "image forwards",
                "vs full",
                "candidate seconds",
                "vs full",
                "run seconds",
            ],
            tablefmt="pipe",
            disable_numparse=True,
        )
    )
    top = ranking["topk"]
    print(
        f"\nCheap scores against the full protocol's on the {ranking['archs_compared']} archs the cheap search "
        f"scored in full: Kendall tau {ranking['tau']:.3f}, Spearman rho {ranking['rho']:.3f}; "
        f"top-{top['k']} overlap {top['hits']}/{top['k']} over the {ranking['archs_common']} archs with both "
        f"scores ({top['reference_top_raced_out']} of the full top-{top['k']} raced out)."
    )
    agree = tuple(best_full["arch"]) == tuple(best_cheap["arch"])
    print(
        f"Best arch: full search {best_full['score']:.3f} AP, cheap search's best scores {best_cheap_full:.3f} AP "
        f"under the full protocol ({'the same arch' if agree else 'another arch'})."
    )

    # Projected full-scale cost: the cheap protocol's measured image fractions applied to 4,000 + 5,000 images.
    per = FULL_SCALE
    recalib_fraction = cc["recalib"] / cc["candidates"] / full.DETNAS.BN_RECALIB.IMAGES
    eval_fraction = cc["eval"] / cc["candidates"] / (fc["eval"] / fc["candidates"])
    pixels = (args.min_size / full.INPUT.MIN_SIZE_TEST) ** 2 if args.min_size else 1.0
    protocols = [
        ("official DetNAS", per["recalib"], per["eval"], 1.0),
        ("MMRazor (train-mode BN)", 0, per["eval"], 1.0),
        ("detnas-d2 full (= official counts)", per["recalib"], per["eval"], 1.0),
        (
            "detnas-d2 cheap (measured fractions)",
            per["recalib"] * recalib_fraction,
            per["eval"] * eval_fraction,
            pixels,
        ),
    ]
    rows = []
    for name, recalib, evaluation, scale in protocols:
        images = per["candidates"] * (recalib + evaluation)
        gpu_hours = images * scale * per["gpu_seconds_per_image"] / 3600
        rows.append(
            [
                name,
                f"{recalib:.0f}",
                f"{evaluation:.0f}",
                f"{scale:.2f}",
                f"{images / 1e6:.2f}M",
                f"{gpu_hours:.1f}",
                f"{gpu_hours / per['gpus']:.2f}",
            ]
        )
    print(f"\n## Projected cost of a {per['candidates']}-candidate search\n")
    print(
        tabulate(
            rows,
            headers=[
                "protocol",
                "recalib images / candidate",
                "eval images / candidate",
                "pixels vs full",
                "image forwards",
                "GPU-hours",
                f"hours on {per['gpus']} GPUs",
            ],
            tablefmt="pipe",
            disable_numparse=True,
        )
    )
    print(
        f"\nGPU-seconds per image forward: {per['gpu_seconds_per_image']:.4f} (MMRazor's 24 s per 5,000-image "
        "candidate on 2 A6000) for every row, scaled by the pixels; the DetNAS paper reports 20 GPU-days for its "
        "own search. The cheap row applies the toy search's measured image fractions "
        f"(recalibration {recalib_fraction:.3f}, evaluation {eval_fraction:.3f}) to the full-scale counts."
    )
    print(
        f"\nThe same comparison with the tool: python tools/rank_audit.py protocols --reference {reference_path} "
        f"--cheap {os.path.join(cheap.OUTPUT_DIR, 'candidates.jsonl')} --topk {topk}"
    )


if __name__ == "__main__":
    main()
