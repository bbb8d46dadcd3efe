"""Part "projection": GPU-hours of pipeline steps 1-5 at full scale, from the measured step costs,
beside the DetNAS paper's figures.

A training step costs MAX_ITER x (seconds per iteration of one GPU at its share of the batch) x 8 GPUs
(the configs' IMS_PER_BATCH is the total over 8 GPUs), assuming 8 GPUs each run an iteration as fast as
this one does alone: NCCL's gradient all-reduce, evaluation, checkpoints and data stalls are left out.
Steps 1 and 2 use the supernet drawing a new path every iteration, steps 4 and 5 the stand-alone subnet
of the fixed arch of step_costs (a searched arch of 300-330 MFLOPs costs about as much). Step 3 is the
shipped protocol of search_scoring: 1,000 candidates.
"""

from .full_scale import GPUS_PER_MACHINE
from .results import CheckContext, PartReport
from .search_scoring import SEARCH_CONFIG

__all__ = ["run", "PAPER_GPU_DAYS", "PAPER_SOURCE"]

# DetNAS (Chen et al., NeurIPS 2019, arXiv:1903.10979), the paper's table of computation costs for the
# 300M space: supernet pre-training on ImageNet 1.5 days, supernet fine-tuning on COCO 1.5 days, search
# on the supernet (20 generations x 50 models) 2.5 days, each on 8 GPUs: 44 GPU-days for steps 1-3.
PAPER_GPU_DAYS = {1: 12.0, 2: 12.0, 3: 20.0}
PAPER_SOURCE = (
    "DetNAS paper (Chen et al., NeurIPS 2019, arXiv:1903.10979), table of computation costs: "
    "1.5 + 1.5 + 2.5 days on 8 GPUs = 44 GPU-days for steps 1-3 of the 300M space"
)
_TITLES = {
    1: "ImageNet supernet",
    2: "COCO supernet",
    3: "search, 1,000 candidates",
    4: "ImageNet subnet",
    5: "COCO subnet",
}


def run(ctx: CheckContext, report: PartReport):
    steps = ctx.earlier("step_costs")
    if steps is None:
        raise RuntimeError("needs the step_costs part, which did not complete")
    search = ctx.earlier("search_scoring")
    projected = {}  # step -> {precision: GPU-hours}
    configs, iterations = {}, {}
    for task in steps.data.values():
        for step, variant, key in (
            (task["supernet_step"], "supernet, sampled paths", "supernet"),
            (task["subnet_step"], "subnet", "subnet"),
        ):
            configs[step], iterations[step] = task[f"{key}_config"], task[f"{key}_max_iter"]
            projected[step] = {
                p: iterations[step] * v[variant]["s_per_iter"] * GPUS_PER_MACHINE / 3600
                for p, v in task["variants"].items()
            }
    if search is not None:
        shipped = next(
            p for name, p in search.data["protocols"].items() if name.startswith("shipped")
        )
        configs[3], iterations[3] = SEARCH_CONFIG, None
        projected[3] = {p: shipped["gpu_hours"] for p in ("fp32", "amp") if p in projected[1]}
    else:
        report.note("Step 3 is missing: search_scoring did not complete.")
    precisions = list(projected[1])
    rows = []
    for step in sorted(projected):
        paper = PAPER_GPU_DAYS.get(step)
        rows.append(
            [step, _TITLES[step], configs[step], iterations[step] or "-"]
            + [f"{projected[step][p]:.1f} h = {projected[step][p] / 24:.2f} d" for p in precisions]
            + [f"{paper:g} d" if paper else "-"]
        )
    totals = {p: sum(projected[s][p] for s in (1, 2, 3) if s in projected) / 24 for p in precisions}
    rows.append(
        ["1-3", "total", "", ""]
        + [f"{totals[p]:.2f} d" for p in precisions]
        + [f"{sum(PAPER_GPU_DAYS.values()):g} d"]
    )
    report.data.update(
        {
            "gpu_hours": {
                str(s): {p: round(h, 3) for p, h in v.items()} for s, v in projected.items()
            },
            "gpu_days_steps_1_3": {p: round(t, 3) for p, t in totals.items()},
            "steps_1_3_complete": 3 in projected,
            "paper_gpu_days": {str(s): d for s, d in PAPER_GPU_DAYS.items()},
            "paper_source": PAPER_SOURCE,
        }
    )
    report.table(
        "Projected GPU cost of the full-scale small-space pipeline (8 GPUs, linear scaling assumed)",
        ["step", "what", "config", "iterations"]
        + [f"GPU time {p}" for p in precisions]
        + ["paper"],
        rows,
    )
    report.note(
        f"Paper figures: {PAPER_SOURCE}. Step 3 (search) is scored in fp32 under every column."
    )
