"""Part "data_pipeline": images per second of the training data pipeline against the GPU step's.

The loader is the one training builds (`get_task(cfg).build_train_loader`: decode, the config's
augmentations, batching, DATALOADER.NUM_WORKERS worker processes, at most this machine's cores) over
synthetic JPEGs at the datasets' real sizes, one GPU's share of the batch. The files sit in the page
cache, so disk or network reads are not measured. Goal: the data arrive faster than the step of
step_costs consumes them (supernet, sampled paths; each precision).
"""

import os
import time

from ..tasks import get_task
from .full_scale import TASKS, load_cfg, per_gpu_batch, synthetic_dataset
from .results import CheckContext, PartReport

__all__ = ["run"]

_BATCHES = {False: 16, True: 2}  # timed batches after the first (start-up), at least 2 per worker


def images_per_second(loader, batches: int) -> float:
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first decode are not throughput
    start = time.perf_counter()
    images = sum(len(next(iterator)) for _ in range(batches))
    return images / (time.perf_counter() - start)


def run(ctx: CheckContext, report: PartReport):
    steps = ctx.earlier("step_costs")
    rows = []
    for task in TASKS:
        cfg = load_cfg(
            ctx, task.supernet_config, task.quick_opts, str(ctx.folder(f"data_{task.name}"))
        )
        configured_workers = int(cfg.DATALOADER.NUM_WORKERS)
        workers = 0 if ctx.quick else min(configured_workers, os.cpu_count() or 1)
        batch = per_gpu_batch(ctx, task, cfg)
        cfg.DATASETS.TRAIN = (synthetic_dataset(ctx, task),)
        cfg.SOLVER.IMS_PER_BATCH = batch
        cfg.DATALOADER.NUM_WORKERS = workers
        ctx.log(f"    {task.name}: {workers} workers, batch {batch} ...")
        rate = images_per_second(
            get_task(cfg).build_train_loader(cfg), max(_BATCHES[ctx.quick], 2 * workers)
        )
        data = {
            "config": task.supernet_config,
            "workers": workers,
            "configured_workers": configured_workers,
            "batch": batch,
            "images_per_s": round(rate, 2),
            "images_per_s_per_worker": round(rate / max(workers, 1), 2),
        }
        report.data[task.name] = data
        step_rates = {}
        if steps is not None:
            variants = steps.data[task.name]["variants"]
            step_rates = {
                p: v["supernet, sampled paths"]["images_per_s"] for p, v in variants.items()
            }
            data["step_images_per_s"] = step_rates
            for precision, step_rate in step_rates.items():
                report.goal(
                    f"{task.name}: data pipeline faster than the {precision} step",
                    rate > step_rate,
                    f"{rate:.1f} vs {step_rate:.1f} images/s ({rate / step_rate:.2f}x)",
                )
        else:
            report.goal(
                f"{task.name}: data pipeline faster than the step", None, "step_costs did not run"
            )
        rows.append(
            [
                task.title,
                f"{workers} (config {configured_workers})",
                batch,
                f"{rate:.1f}",
                f"{rate / max(workers, 1):.1f}",
            ]
            + [f"{step_rates[p]:.1f}" if p in step_rates else "-" for p in ("fp32", "amp")]
        )
    report.table(
        "Training data pipeline (synthetic JPEGs at real sizes) vs the GPU step",
        [
            "task",
            "workers",
            "batch",
            "data images/s",
            "per worker",
            "step images/s fp32",
            "step images/s AMP",
        ],
        rows,
    )
    report.note(
        f"This machine has {os.cpu_count()} CPU cores for its GPU(s); on an 8-GPU node the 8 loaders "
        "share that node's cores, so compare the per-worker rate with the cores per GPU there."
    )
