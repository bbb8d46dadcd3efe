"""Part "toy_steps": pipeline steps 1 and 2 on the toy data (configs/Toy/cls_supernet.yaml,
det_supernet.yaml) trained by DetNASTrainer on the check's device, fp32 and AMP (CUDA only).

Checks: the loss falls (mean of the last tenth of the iterations below that of the first tenth), and the
random paths are those of a CPU run of the same config (the sampler is seeded by (seed, iteration), so a
device may change the numbers but never the path sequence).
"""

import statistics
import time

from detectron2.engine import HookBase

from ..config import get_detnas_cfg
from ..config_files import config_file
from ..engine import DetNASTrainer
from ..modeling import find_supernet
from ..search_space import arch_to_str
from .results import CheckContext, PartReport

__all__ = ["run", "TOY_STEPS"]

TOY_STEPS = (
    ("step 1", "configs/Toy/cls_supernet.yaml"),
    ("step 2", "configs/Toy/det_supernet.yaml"),
)
_SIZES = {
    False: {"iters": 200, "reference_iters": 20, "opts": []},
    True: {"iters": 20, "reference_iters": 4, "opts": ["SOLVER.IMS_PER_BATCH", "2"]},
}


class _PathRecorder(HookBase):
    """The supernet's path and the seconds of every iteration."""

    def __init__(self):
        self.paths, self.seconds = [], []

    def before_step(self):
        self._start = time.perf_counter()

    def after_step(self):
        self.seconds.append(time.perf_counter() - self._start)
        self.paths.append(arch_to_str(find_supernet(self.trainer.model).arch))


def _train(ctx: CheckContext, config: str, device: str, iters: int, amp: bool, folder: str):
    opts = _SIZES[ctx.quick]["opts"] + [
        "SOLVER.MAX_ITER",
        str(iters),
        "SOLVER.AMP.ENABLED",
        str(amp),
        "SOLVER.CHECKPOINT_PERIOD",
        str(10 * iters),
        "DATASETS.TEST",
        "()",
        "DETNAS.BN_RECALIB.IMAGES",
        "0",
        "MODEL.DEVICE",
        device,
        "OUTPUT_DIR",
        folder,
    ]
    trainer = DetNASTrainer(get_detnas_cfg(config_file(config), opts))
    recorder = _PathRecorder()
    trainer.register_hooks([recorder])
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    return losses, recorder


def run(ctx: CheckContext, report: PartReport):
    sizes = _SIZES[ctx.quick]
    rows = []
    for step, config in TOY_STEPS:
        name = step.replace(" ", "")
        ctx.log(
            f"    {step} on cpu ({sizes['reference_iters']} iterations: the reference paths) ..."
        )
        _, cpu = _train(
            ctx, config, "cpu", sizes["reference_iters"], False, str(ctx.folder(f"toy_{name}_cpu"))
        )
        for precision in ctx.precisions:
            ctx.log(
                f"    {step} on {ctx.device.type}, {precision}, {sizes['iters']} iterations ..."
            )
            folder = str(ctx.folder(f"toy_{name}_{ctx.device.type}_{precision}"))
            losses, trained = _train(
                ctx, config, str(ctx.device), sizes["iters"], precision == "amp", folder
            )
            k = max(2, len(losses) // 10)
            first, last = statistics.mean(losses[:k]), statistics.mean(losses[-k:])
            n = len(cpu.paths)
            same = trained.paths[:n] == cpu.paths
            report.data[f"{name}_{precision}"] = {
                "config": config,
                "iterations": len(losses),
                "loss_first": round(first, 5),
                "loss_last": round(last, 5),
                "s_per_iter": round(statistics.median(trained.seconds[k:] or trained.seconds), 6),
                "paths_compared": n,
                "same_paths_as_cpu": same,
            }
            report.check(
                f"{step} {precision}: loss falls",
                last < first,
                f"mean of the first {k} iterations {first:.4f}, of the last {k} {last:.4f}",
            )
            report.check(
                f"{step} {precision}: the first {n} paths equal the CPU run's",
                same,
                ""
                if same
                else "first difference at iteration "
                f"{next((i for i, (a, b) in enumerate(zip(trained.paths, cpu.paths)) if a != b), n)}",
            )
            rows.append(
                [
                    step,
                    config,
                    precision,
                    len(losses),
                    f"{first:.4f}",
                    f"{last:.4f}",
                    f"{report.data[f'{name}_{precision}']['s_per_iter']:.4f}",
                    "yes" if same else "NO",
                ]
            )
    report.table(
        f"Toy steps 1-2 on {ctx.device.type}",
        [
            "step",
            "config",
            "precision",
            "iterations",
            "loss, first tenth",
            "loss, last tenth",
            "s/iter",
            "paths as on CPU",
        ],
        rows,
    )
    if not ctx.cuda:
        report.note("AMP not run: Detectron2's AMPTrainer needs CUDA.")
