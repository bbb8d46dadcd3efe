"""Part "step_costs": seconds per iteration and peak memory of the full-scale small-space configs.

For the ImageNet supernet (step 1) and the COCO supernet Faster R-CNN FPN (step 2), each at its real
input size and one GPU's share of the batch, fp32 and AMP (CUDA only): the stand-alone subnet of a
fixed arch (the model of steps 4 and 5), the supernet running that same arch (goal: at most 1.05x the
subnet), and the supernet drawing a new path every iteration with the config's sampler, as training
does (what the projections of steps 1 and 2 use).
"""

from ..engine import RandomPathHook
from ..search_space import arch_to_str, space_from_cfg
from ..tasks import get_task
from .full_scale import (
    GPUS_PER_MACHINE,
    TASKS,
    fixed_arch,
    load_cfg,
    per_gpu_batch,
    synthetic_dataset,
)
from .results import CheckContext, PartReport
from .steps import time_training_steps
from .synthetic import mapped_batch, sizes_of

__all__ = ["run", "VARIANTS", "SUPERNET_SUBNET_GOAL"]

VARIANTS = ("subnet", "supernet, same arch", "supernet, sampled paths")
SUPERNET_SUBNET_GOAL = 1.05
_ITERS = {
    False: {"warmup": 3, "iters": 12, "sampled_iters": 20},
    True: {"warmup": 1, "iters": 2, "sampled_iters": 2},
}


def _variant_cfg(ctx, task, variant, precision, arch, batch):
    supernet = variant.startswith("supernet")
    config = task.supernet_config if supernet else task.subnet_config
    opts = ["SOLVER.IMS_PER_BATCH", str(batch), "SOLVER.AMP.ENABLED", str(precision == "amp")]
    if not supernet:
        opts += ["MODEL.DETNAS.ARCH", arch_to_str(arch)]
    return load_cfg(ctx, config, task.quick_opts, str(ctx.folder(f"step_costs_{task.name}")), opts)


def run(ctx: CheckContext, report: PartReport):
    sizes = _ITERS[ctx.quick]
    for task in TASKS:
        base = load_cfg(
            ctx, task.supernet_config, task.quick_opts, str(ctx.folder(f"step_costs_{task.name}"))
        )
        batch_size = per_gpu_batch(ctx, task, base)
        arch = fixed_arch(space_from_cfg(base))
        subnet_cfg = _variant_cfg(ctx, task, "subnet", "fp32", arch, batch_size)
        base.DATASETS.TRAIN = (synthetic_dataset(ctx, task),)
        batch = mapped_batch(base.DATASETS.TRAIN[0], get_task(base).mapper(base, True), batch_size)
        data = {
            "supernet_config": task.supernet_config,
            "subnet_config": task.subnet_config,
            "supernet_step": task.supernet_step,
            "subnet_step": task.subnet_step,
            "supernet_max_iter": int(base.SOLVER.MAX_ITER),
            "subnet_max_iter": int(subnet_cfg.SOLVER.MAX_ITER),
            "ims_per_batch": int(base.SOLVER.IMS_PER_BATCH),
            "batch_per_gpu": batch_size,
            "input": sizes_of(batch),
            "arch": arch_to_str(arch),
            "variants": {},
        }
        report.data[task.name] = data
        rows = []
        for precision in ctx.precisions:
            timings = {}
            for variant in VARIANTS:
                ctx.log(f"    {task.name} {precision} {variant} ...")
                cfg = _variant_cfg(ctx, task, variant, precision, arch, batch_size)
                if variant == "supernet, sampled paths":
                    timing = time_training_steps(
                        cfg,
                        batch,
                        sizes["sampled_iters"],
                        sizes["warmup"],
                        path=RandomPathHook(cfg).sample,
                    )
                else:
                    path = (lambda i: arch) if variant == "supernet, same arch" else None
                    timing = time_training_steps(
                        cfg, batch, sizes["iters"], sizes["warmup"], path=path
                    )
                timings[variant] = timing
                memory = (
                    "-" if timing.peak_memory_mb is None else f"{timing.peak_memory_mb / 1024:.2f}"
                )
                rows.append(
                    [
                        precision,
                        variant,
                        f"{timing.s_per_iter:.4f}",
                        f"{timing.images_per_s:.1f}",
                        memory,
                        f"{timing.s_per_iter / timings['subnet'].s_per_iter:.3f}",
                    ]
                )
            data["variants"][precision] = {v: t.to_dict() for v, t in timings.items()}
            ratio = timings["supernet, same arch"].s_per_iter / timings["subnet"].s_per_iter
            data.setdefault("supernet_subnet_ratio", {})[precision] = round(ratio, 4)
            report.goal(
                f"{task.name} {precision}: supernet / subnet of the same arch <= {SUPERNET_SUBNET_GOAL}",
                ratio <= SUPERNET_SUBNET_GOAL,
                f"{ratio:.3f}",
            )
        if "amp" in data["variants"]:
            speedup = {
                v: data["variants"]["fp32"][v]["s_per_iter"]
                / data["variants"]["amp"][v]["s_per_iter"]
                for v in VARIANTS
            }
            data["amp_speedup"] = {v: round(s, 3) for v, s in speedup.items()}
            report.goal(
                f"{task.name}: AMP faster than fp32 (supernet, sampled paths)",
                speedup["supernet, sampled paths"] > 1.0,
                f"{speedup['supernet, sampled paths']:.2f}x",
            )
        else:
            report.goal(
                f"{task.name}: AMP faster than fp32",
                None,
                "AMP needs CUDA (Detectron2's AMPTrainer)",
            )
        report.table(
            f"{task.title}: {task.supernet_config}, batch {batch_size} per GPU ({data['ims_per_batch']} on "
            f"{GPUS_PER_MACHINE} GPUs), input {data['input']}, arch {data['arch']}",
            ["precision", "model", "s/iter", "images/s", "peak memory GiB", "vs subnet"],
            rows,
        )
    report.note(
        "Synthetic inputs at the configs' sizes; one batch repeated, so data loading is left out "
        "(see the data-pipeline part). Seconds: median over the timed iterations, each synchronised."
    )
