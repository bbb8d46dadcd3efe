#!/usr/bin/env python
"""Is a stand-alone detector's low AP a BN-statistics accident? Each finished detector of a score file is
evaluated as trained, then again after its BN layers get the exact statistics of N training images
(detnas_d2.recalibration, as supernet paths get them). If recalibration moved the outliers back, Detectron2's
PreciseBN would be the fix for the ground truth's seed noise.

    python studies/rank_audit_toy/bn_probe.py --scores studies/rank_audit_toy/standalone_paired.jsonl

Writes bn_probe.md beside the score file (or --output).
"""

import argparse
import logging
import statistics
from pathlib import Path

import torch
from detectron2.modeling import build_model

from detnas_d2.audit.scores import read_scores
from detnas_d2.checkpoint import DetNASCheckpointer
from detnas_d2.config import get_detnas_cfg
from detnas_d2.engine.trainer import DetNASTrainer
from detnas_d2.recalibration import RecalibrationSettings, recalibrate_bn, recalibration_batches
from detnas_d2.tasks import get_task

ROOT = Path(__file__).resolve().parents[2]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scores", type=Path, required=True)
    parser.add_argument(
        "--images", type=int, default=320, help="training images (toy_det_train has 320)"
    )
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    rows, by_arch = [], {}
    for r in read_scores(args.scores):
        run = ROOT / r["run_dir"] / "det_subnet"
        cfg = get_detnas_cfg(
            str(run / "config.yaml"),
            ["OUTPUT_DIR", str(run / "bn_probe"), "MODEL.WEIGHTS", str(run / "model_final.pth")],
        )
        model = build_model(cfg)
        DetNASCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        model.eval()
        trained = DetNASTrainer.test(cfg, model)["bbox"]["AP"]
        task = get_task(cfg)
        # the dataset and batch size supernet paths are recalibrated with (DETNAS.BN_RECALIB)
        settings = RecalibrationSettings.from_cfg(cfg)
        batches = recalibration_batches(
            settings.require_dataset(),
            args.images,
            settings.batch_size,
            0,
            task.mapper(cfg, False),
            shard=False,
            num_workers=0,
        )
        with torch.no_grad():
            recalibrate_bn(model, batches, task.recalibration_forward(model))
        recalibrated = DetNASTrainer.test(cfg, model)["bbox"]["AP"]
        rows.append(
            f"| {r['arch_str']} | {r['seed']} | {r['score']:.2f} | {trained:.2f} | {recalibrated:.2f} |"
        )
        by_arch.setdefault(r["arch_str"], []).append((trained, recalibrated))
        print(rows[-1], flush=True)

    def pooled_std(i):
        groups = [[p[i] for p in runs] for runs in by_arch.values() if len(runs) > 1]
        return statistics.mean(statistics.variance(g) for g in groups) ** 0.5

    text = "\n".join(
        [
            f"## BN statistics as trained vs recalibrated on {args.images} training images ({args.scores.name})",
            "",
            "| arch | seed | AP in the score file | AP as trained | AP recalibrated |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"Pooled seed std (archs with >= 2 seeds, mean of variances): as trained {pooled_std(0):.2f}, "
            f"recalibrated {pooled_std(1):.2f}.",
            "",
        ]
    )
    out = args.output or args.scores.with_name("bn_probe.md")
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
