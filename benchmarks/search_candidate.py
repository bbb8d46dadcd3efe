#!/usr/bin/env python
"""Cost of scoring one search candidate, and search throughput with one and two processes.

Runs short toy searches (configs/Toy/search_det.yaml on a randomly initialised toy supernet unless
--weights is given) and reads candidates.jsonl: seconds per candidate in BN recalibration, inference,
COCO evaluation and everything else (state save, outputs, selection, data hand-off; goal < 10% of a
candidate), candidates per hour for 1 process, 2 processes in each DETNAS.SEARCH.DIST_MODE, and 1 process
without the in-memory input cache (DETNAS.SEARCH.CACHE_MB 0: every candidate maps its images again).

    python benchmarks/search_candidate.py [--candidates 12] [--weights W] [KEY VALUE ...]

Without CUDA the processes are CPU processes (gloo) with cores/2 threads each (what the launcher
gives each of two processes), so "vs 1 proc" is the gain of a second process with its own cores, as a
second GPU would be.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import detnas_d2  # noqa: F401  (first: compat shims, registrations)
from detnas_d2 import add_detnas_config

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from detnas_d2.config import get_detnas_cfg
from detnas_d2.engine.launch import launch
from detnas_d2.file_io import read_json_lines
from detnas_d2.search import run_search

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _search(cfg_text, threads):
    torch.set_num_threads(threads)
    cfg = get_cfg()
    add_detnas_config(cfg)
    cfg.merge_from_other_cfg(CfgNode.load_cfg(cfg_text))
    run_search(cfg)


def _stats(out_dir, procs, split_candidates):
    records = read_json_lines(os.path.join(out_dir, "candidates.jsonl"))[
        1:
    ]  # the first one warms up
    mean = lambda key: statistics.mean(r[key] for r in records)  # noqa: E731
    recalib, inference, metric, wall = (
        mean(k) for k in ("seconds_recalib", "seconds_inference", "seconds_metric", "seconds_wall")
    )
    # split_candidates: `procs` candidates are scored side by side in `procs` x wall seconds
    busy = wall * procs if split_candidates else wall
    rest = busy - (recalib + inference + metric)
    return {
        "n": len(records) + 1,
        "recalib": recalib,
        "inference": inference,
        "metric": metric,
        "rest": rest,
        "rest_pct": 100 * rest / busy,
        "wall": wall,
        "per_hour": 3600 / wall,
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", default=os.path.join(ROOT, "configs", "Toy", "search_det.yaml")
    )
    parser.add_argument(
        "--candidates", type=int, default=12, help="candidates per run (2 generations)"
    )
    parser.add_argument("--weights", default="", help="supernet checkpoint (default: random init)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    args = parser.parse_args()
    setup_logger(name="detnas_d2")
    work = tempfile.mkdtemp(prefix="search_bench_")

    cfg = get_detnas_cfg(args.config_file, args.opts)
    if not args.weights:
        torch.manual_seed(0)
        DetectionCheckpointer(build_model(cfg), save_dir=work).save("random_supernet")
        args.weights = os.path.join(work, "random_supernet.pth")
    cfg.MODEL.WEIGHTS = args.weights
    cfg.DETNAS.SEARCH.POPULATION = (args.candidates + 1) // 2
    cfg.DETNAS.SEARCH.GENERATIONS = 2
    cfg.DETNAS.SEARCH.MAX_CANDIDATES = args.candidates
    cfg.DETNAS.SEARCH.TOPK = min(cfg.DETNAS.SEARCH.TOPK, cfg.DETNAS.SEARCH.POPULATION)
    cfg.DETNAS.SEARCH.NUM_MUTATION = cfg.DETNAS.SEARCH.NUM_CROSSOVER = (
        cfg.DETNAS.SEARCH.POPULATION // 3
    )

    runs = [
        ("1 process", 1, "split_images", cfg.DETNAS.SEARCH.CACHE_MB),
        ("1 process, no input cache", 1, "split_images", 0),
        ("2 processes, split_images", 2, "split_images", cfg.DETNAS.SEARCH.CACHE_MB),
        ("2 processes, split_candidates", 2, "split_candidates", cfg.DETNAS.SEARCH.CACHE_MB),
    ]
    threads = max(1, (os.cpu_count() or 2) // 2)
    rows, base = [], None
    for label, procs, mode, cache_mb in runs:
        run_cfg = cfg.clone()
        run_cfg.OUTPUT_DIR = os.path.join(work, label.replace(" ", "_").replace(",", ""))
        run_cfg.DETNAS.SEARCH.DIST_MODE = mode
        run_cfg.DETNAS.SEARCH.CACHE_MB = cache_mb
        start = time.perf_counter()
        launch(_search, procs, dist_url="auto", args=(run_cfg.dump(), threads))
        total = time.perf_counter() - start
        s = _stats(run_cfg.OUTPUT_DIR, procs, mode == "split_candidates")
        base = base or s["per_hour"]
        rows.append(
            (
                label,
                s["n"],
                f"{s['recalib']:.3f}",
                f"{s['inference']:.3f}",
                f"{s['metric']:.3f}",
                f"{s['rest']:.3f}",
                f"{s['rest_pct']:.1f}%",
                f"{s['wall']:.3f}",
                f"{s['per_hour']:.0f}",
                f"{s['per_hour'] / base:.2f}x",
                f"{total:.1f}",
            )
        )
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU, {os.cpu_count()} cores"
    )
    print(
        f"\nSearch cost per candidate ({args.config_file}, {device}; BN recalibration on "
        f"{cfg.DETNAS.BN_RECALIB.IMAGES} images, evaluation on {cfg.DETNAS.SEARCH.EVAL_DATASET}; means over "
        f"candidates after the first; {threads} thread(s) per process; split_candidates: seconds of each "
        "candidate on its own process)"
    )
    print(
        tabulate(
            rows,
            headers=[
                "run",
                "candidates",
                "recalib s",
                "inference s",
                "COCO eval s",
                "rest s",
                "rest",
                "wall s/cand",
                "cand/hour",
                "vs 1 proc",
                "run s (setup incl.)",
            ],
            tablefmt="pipe",
        )
    )


if __name__ == "__main__":
    sys.exit(main())
