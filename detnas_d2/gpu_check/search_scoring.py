"""Part "search_scoring": seconds per search candidate on the device, split into BN recalibration,
inference and COCOeval, with the search's own CandidateScorer at the full-scale image size, and the
GPU-hours of a 1,000-candidate search under each scoring protocol.

The model is configs/COCO-Detection/search_small.yaml's supernet (randomly initialised: cost does not
depend on the weights) with MODEL.ROI_HEADS.SCORE_THRESH_TEST 0, so that every image gets
TEST.DETECTIONS_PER_IMAGE detections as from a trained detector (an untrained one scores below the
threshold and would make COCOeval look free). Recalibration and evaluation run on a few synthetic COCO-size
images with synthetic ground truth, held in memory (as 8 processes hold their shares with CACHE_MB 4096);
the seconds per image are then scaled to each protocol's image counts, assuming cost linear in images.
"""

import statistics

from detectron2.modeling import build_model

from ..config import get_detnas_cfg
from ..config_files import config_file
from ..search import CandidateScorer, ScoringSettings
from ..search_space import arch_to_str
from ..tasks import get_task
from .full_scale import SEARCH_CONFIG, TASKS, archs_in_flops_range, load_cfg, synthetic_dataset
from .results import CheckContext, PartReport

__all__ = ["run", "protocols", "RACING_EVAL_FRACTION", "FEWER_RECALIB_IMAGES", "SEARCH_CANDIDATES"]

SEARCH_CANDIDATES = 1000
# The share of the evaluation images racing (DETNAS.SEARCH.RACING.SLICES (0.1, 0.3)) spent in a whole toy
# search (benchmarks/search_protocols.py, README "Benchmarks"); at COCO scale it is not measured.
RACING_EVAL_FRACTION = 0.86
# The recalibration images the supernet configs use before each evaluation during training.
FEWER_RECALIB_IMAGES = 512
_SIZES = {False: {"images": 64, "candidates": 3}, True: {"images": 4, "candidates": 2}}


def protocols(recalib_images: int, eval_images: int):
    """(name, recalibration images, evaluation images) of each protocol projected."""
    return (
        (f"shipped ({SEARCH_CONFIG})", recalib_images, eval_images),
        (f"{FEWER_RECALIB_IMAGES} recalibration images", FEWER_RECALIB_IMAGES, eval_images),
        (
            f"racing (0.1, 0.3), {RACING_EVAL_FRACTION:.0%} of the evaluation images",
            recalib_images,
            RACING_EVAL_FRACTION * eval_images,
        ),
        (
            f"racing + {FEWER_RECALIB_IMAGES} recalibration images",
            FEWER_RECALIB_IMAGES,
            RACING_EVAL_FRACTION * eval_images,
        ),
    )


def run(ctx: CheckContext, report: PartReport):
    sizes = _SIZES[ctx.quick]
    coco = next(t for t in TASKS if t.name == "coco")
    dataset = synthetic_dataset(ctx, coco)
    shipped = get_detnas_cfg(config_file(SEARCH_CONFIG))
    n = sizes["images"]
    cfg = load_cfg(
        ctx,
        SEARCH_CONFIG,
        coco.quick_opts,
        str(ctx.folder("search_scoring")),
        [
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            "0.0",
            "DETNAS.BN_RECALIB.DATASET",
            dataset,
            "DETNAS.BN_RECALIB.IMAGES",
            str(n),
            "DETNAS.SEARCH.EVAL_DATASET",
            dataset,
            "DETNAS.SEARCH.EVAL_IMAGES",
            str(n),
        ],
    )
    model = build_model(cfg)
    scorer = CandidateScorer(
        cfg, get_task(cfg), ScoringSettings.from_cfg(cfg), [model], distributed=False
    )
    records = []
    for i, arch in enumerate(archs_in_flops_range(cfg, sizes["candidates"])):
        ctx.log(f"    candidate {i + 1} of {sizes['candidates']} ({arch_to_str(arch)}) ...")
        records.append(scorer.score(arch))
    timed = records[1:]  # the first one warms up (kernels, allocator)
    mean = {
        k: statistics.mean(r[k] for r in timed)
        for k in ("seconds_recalib", "seconds_inference", "seconds_metric")
    }
    per_image = {
        "recalib": mean["seconds_recalib"] / timed[0]["images_recalib"],
        "inference": mean["seconds_inference"] / timed[0]["images_eval"],
        "cocoeval": mean["seconds_metric"] / timed[0]["images_eval"],
    }
    recalib_images, eval_images = (
        int(shipped.DETNAS.BN_RECALIB.IMAGES),
        int(shipped.DETNAS.SEARCH.EVAL_IMAGES),
    )
    report.data.update(
        {
            "input": f"shorter side {cfg.INPUT.MIN_SIZE_TEST}, longer at most {cfg.INPUT.MAX_SIZE_TEST}",
            "recalib_batch": int(cfg.DETNAS.BN_RECALIB.BATCH_SIZE),
            "eval_batch": int(cfg.DETNAS.SEARCH.EVAL_BATCH_SIZE),
            "images_recalib": timed[0]["images_recalib"],
            "images_eval": timed[0]["images_eval"],
            "candidates_timed": len(timed),
            "seconds": {k: round(v, 4) for k, v in mean.items()},
            "seconds_per_image": {k: round(v, 6) for k, v in per_image.items()},
            "scores": [r["score"] for r in records],
            "protocols": {},
        }
    )
    report.table(
        f"One candidate on {n} + {n} synthetic images (mean of {len(timed)} candidates after the first)",
        ["", "BN recalibration", "inference", "COCOeval"],
        [
            ["seconds", *(f"{mean[k]:.3f}" for k in mean)],
            ["seconds per image", *(f"{per_image[k]:.5f}" for k in per_image)],
        ],
    )
    rows = []
    for name, r_images, e_images in protocols(recalib_images, eval_images):
        seconds = (
            per_image["recalib"] * r_images
            + (per_image["inference"] + per_image["cocoeval"]) * e_images
        )
        hours = SEARCH_CANDIDATES * seconds / 3600
        report.data["protocols"][name] = {
            "recalib_images": r_images,
            "eval_images": e_images,
            "seconds_per_candidate": round(seconds, 3),
            "gpu_hours": round(hours, 2),
        }
        rows.append(
            [name, r_images, round(e_images), f"{seconds:.1f}", f"{hours:.1f}", f"{hours / 24:.2f}"]
        )
    report.table(
        f"Projected: {SEARCH_CANDIDATES} candidates on one GPU (the paper: 20 GPU-days)",
        [
            "protocol",
            "recalibration images",
            "evaluation images",
            "s/candidate",
            "GPU-hours",
            "GPU-days",
        ],
        rows,
    )
    report.note(
        "Racing's share of evaluation images comes from the toy benchmark; racing also runs COCOeval "
        "once per rung, which the projection leaves out."
    )
