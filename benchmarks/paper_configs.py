#!/usr/bin/env python
"""One training step of every full-scale model of the paper's presets at its real input size, on CPU.

The models are the configs of the presets of tools/run_pipeline.py other than the toy ones (ImageNet
classifiers and COCO / Pascal VOC detectors, supernets and subnets; not the search configs, whose model
is the det_supernet's): random weights, supernets on a random path, subnets of a random arch, one
synthetic image at the config's real training size (its largest shorter side and longest side, 800x1333;
the 224 crop of the classifiers) with two boxes or a label. Each model runs in its own process: forward,
loss, backward; it passes when the loss is finite and the stem's gradient is finite and non-zero.
Prints a line per model as it goes, then a table (build and step seconds, the process's peak resident
memory, imports included); exits 1 if any model fails. tests/test_paper_configs.py runs the same step on
every model at a reduced input size.

    python benchmarks/paper_configs.py [--threads N] [--only SUBSTRING ...] [--timeout 900]
"""

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import time

import detnas_d2  # noqa: F401  (first: compat shims, registrations)

import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from detnas_d2.config import get_detnas_cfg
from detnas_d2.config_files import config_file
from detnas_d2.modeling import find_supernet
from detnas_d2.run_pipeline import PRESETS

# two boxes as fractions of the image (x0, y0, x1, y1): at 800x1333 about (133, 120, 533, 600) and
# (733, 48, 1200, 400)
BOX_FRACTIONS = ((0.1, 0.15, 0.4, 0.75), (0.55, 0.06, 0.9, 0.5))


def model_configs():
    """Every config of the paper's presets that builds a model (all but the search configs)."""
    return sorted(
        {
            path
            for name, preset in PRESETS.items()
            if not name.startswith("toy")
            for step, path in preset.items()
            if step != "search"
        }
    )


def load_config(config, *opts):
    """The config on CPU, with KEY VALUE `opts`; a subnet config with a random arch."""
    arch = ["MODEL.DETNAS.ARCH", "random:0"] if "subnet" in config else []
    return get_detnas_cfg(config_file(config), ["MODEL.DEVICE", "cpu", *arch, *opts])


def input_size(cfg, max_side=None):
    """(height, width) of the config's real training input (its largest shorter side, its longest
    side; the crop of a classifier), shrunk to `max_side` on the longest side if given."""
    if cfg.MODEL.META_ARCHITECTURE == "DetNASClassifier":
        height = width = cfg.INPUT.CLS.TRAIN_CROP
    else:
        height, width = max(cfg.INPUT.MIN_SIZE_TRAIN), cfg.INPUT.MAX_SIZE_TRAIN
    scale = min(1.0, max_side / max(height, width)) if max_side else 1.0
    return round(height * scale), round(width * scale)


def synthetic_batch(cfg, size):
    """One random image of `size` (height, width) with two boxes (detectors) or a label (classifiers)."""
    height, width = size
    image = torch.rand(3, height, width) * 255
    if cfg.MODEL.META_ARCHITECTURE == "DetNASClassifier":
        return [{"image": image, "label": 1}]
    instances = Instances((height, width))
    instances.gt_boxes = Boxes(
        torch.tensor(
            [[x0 * width, y0 * height, x1 * width, y1 * height] for x0, y0, x1, y1 in BOX_FRACTIONS]
        )
    )
    instances.gt_classes = torch.tensor([0, 1])
    return [{"image": image, "instances": instances, "height": height, "width": width}]


def build_training_model(cfg):
    """The config's model in training mode, random weights (seed 0), a supernet on a random path."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    supernet = find_supernet(model)
    if supernet is not None:
        supernet.set_arch(supernet.space.random_arch(random.Random(0)))
    return model


def training_step(model, batch):
    """Forward, loss and backward of `batch`; the loss. Raises RuntimeError if the loss is not finite
    or the stem's gradient is missing, not finite or zero."""
    with EventStorage():
        losses = model(batch)
    loss = sum(losses.values())
    if not torch.isfinite(loss):
        raise RuntimeError(f"loss is {loss.item()}")
    loss.backward()
    stem = next(p for n, p in model.named_parameters() if "stem" in n)
    if stem.grad is None or not torch.isfinite(stem.grad).all() or stem.grad.abs().sum() == 0:
        raise RuntimeError("the stem's gradient is missing, not finite or zero")
    return loss.item()


def run_one(config):
    """One model, in this process: a JSON line of its figures on stdout."""
    cfg = load_config(config)
    start = time.perf_counter()
    model = build_training_model(cfg)
    built = time.perf_counter()
    size = input_size(cfg)
    loss = training_step(model, synthetic_batch(cfg, size))
    stepped = time.perf_counter()
    result = {
        "size": size,
        "params": sum(p.numel() for p in model.parameters()),
        "build_s": built - start,
        "step_s": stepped - built,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "loss": loss,
    }
    print(json.dumps(result))


def run_in_child(config, threads, timeout):
    """`run_one(config)` in a new process (its own peak memory, a crash fails only this model):
    (figures or None, the reason it failed)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", config]
    if threads:
        cmd += ["--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"no result in {timeout} s"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        return None, lines[-1]
    return json.loads(proc.stdout.strip().splitlines()[-1]), ""


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--only", nargs="+", default=[], help="only the configs whose path holds one of these"
    )
    parser.add_argument("--timeout", type=int, default=900, help="seconds per model")
    parser.add_argument("--child", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        run_one(args.child)
        return

    configs = [c for c in model_configs() if not args.only or any(s in c for s in args.only)]
    if not configs:
        parser.error(
            f"no config matches --only {' '.join(args.only)}; the configs: {model_configs()}"
        )
    print(
        f"{len(configs)} models, one training step each on CPU ({torch.get_num_threads()} threads), "
        f"torch {torch.__version__}",
        flush=True,
    )
    rows, failed = [], 0
    for i, config in enumerate(configs, 1):
        result, reason = run_in_child(config, args.threads, args.timeout)
        failed += result is None
        rows.append((config, result, reason))
        if result is None:
            print(f"[{i}/{len(configs)}] {config}: FAIL ({reason})", flush=True)
        else:
            print(
                f"[{i}/{len(configs)}] {config}: pass, step {result['step_s']:.1f} s, loss "
                f"{result['loss']:.3f}",
                flush=True,
            )

    print(
        "\n| config | input | params | build s | step s | peak MiB | result |\n"
        "|---|---|---|---|---|---|---|"
    )
    for config, r, reason in rows:
        if r is None:
            print(f"| {config} | | | | | | FAIL: {reason} |")
            continue
        print(
            f"| {config} | {r['size'][0]}x{r['size'][1]} | {r['params'] / 1e6:.1f}M | "
            f"{r['build_s']:.1f} | {r['step_s']:.1f} | {math.ceil(r['peak_mib'])} | pass |"
        )
    print(f"\n{len(rows) - failed} of {len(rows)} pass")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
