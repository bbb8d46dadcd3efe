"""The full-scale small-space configs the check measures, on synthetic data at their real sizes.

Their SOLVER.IMS_PER_BATCH is the total over 8 GPUs (the configs' comments), so one GPU runs an eighth
of it: what each GPU of the 8-GPU recipe runs per iteration. `quick` mode shrinks the same configs
(width 0.25, tiny inputs, one or two images) so that the same code runs in seconds on a CPU.
"""

import random
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from ..config import get_detnas_cfg
from ..config_files import config_file
from ..flops import get_flops_table
from ..search_space import SearchSpace, arch_to_str, space_from_cfg
from . import synthetic
from .results import CheckContext

__all__ = [
    "GPUS_PER_MACHINE",
    "FullScaleTask",
    "TASKS",
    "SEARCH_CONFIG",
    "load_cfg",
    "synthetic_dataset",
    "per_gpu_batch",
    "fixed_arch",
    "archs_in_flops_range",
]

GPUS_PER_MACHINE = 8
SEARCH_CONFIG = "configs/COCO-Detection/search_small.yaml"

_COCO_QUICK = (
    "MODEL.DETNAS.WIDTH_MULT",
    "0.25",
    "MODEL.FPN.OUT_CHANNELS",
    "16",
    "MODEL.ROI_BOX_HEAD.NUM_CONV",
    "1",
    "MODEL.ROI_BOX_HEAD.CONV_DIM",
    "16",
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    "32",
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MAX_SIZE_TRAIN",
    "96",
    "INPUT.MIN_SIZE_TEST",
    "64",
    "INPUT.MAX_SIZE_TEST",
    "96",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
    "100",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "50",
    "MODEL.RPN.PRE_NMS_TOPK_TEST",
    "100",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "50",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "32",
    "DETNAS.SAMPLER.INPUT_SIZE",
    "128",
    "DETNAS.BN_RECALIB.BATCH_SIZE",
    "2",
    "DETNAS.SEARCH.EVAL_BATCH_SIZE",
    "2",
    "DETNAS.SEARCH.FLOPS_MIN",
    "0.0",
    "DETNAS.SEARCH.FLOPS_MAX",
    "0.0",
    "TEST.DETECTIONS_PER_IMAGE",
    "20",
)
_IMAGENET_QUICK = (
    "MODEL.DETNAS.WIDTH_MULT",
    "0.25",
    "MODEL.CLASSIFIER.NUM_CLASSES",
    "10",
    "MODEL.CLASSIFIER.HEAD_CHANNELS",
    "64",
    "INPUT.CLS.TRAIN_CROP",
    "32",
    "INPUT.CLS.TEST_RESIZE",
    "36",
    "INPUT.CLS.TEST_CROP",
    "32",
    "DETNAS.SAMPLER.INPUT_SIZE",
    "48",
)


@dataclass(frozen=True)
class FullScaleTask:
    name: str  # imagenet | coco
    title: str
    supernet_config: str
    subnet_config: str
    supernet_step: int
    subnet_step: int
    quick_opts: Tuple[str, ...]
    image_size: Tuple[int, int]  # synthetic images (width, height), full size
    num_images: int  # synthetic images, full size
    quick_batch: int


TASKS = (
    FullScaleTask(
        "imagenet",
        "ImageNet classification",
        "configs/ImageNet/supernet_small.yaml",
        "configs/ImageNet/subnet_small.yaml",
        1,
        4,
        _IMAGENET_QUICK,
        synthetic.IMAGENET_SIZE,
        256,
        2,
    ),
    FullScaleTask(
        "coco",
        "COCO Faster R-CNN FPN",
        "configs/COCO-Detection/supernet_small_FPN_1x.yaml",
        "configs/COCO-Detection/subnet_small_FPN_1x.yaml",
        2,
        5,
        _COCO_QUICK,
        synthetic.COCO_SIZE,
        64,
        1,
    ),
)
_QUICK_IMAGE_SIZE = (96, 72)
_QUICK_NUM_IMAGES = 4


def load_cfg(
    ctx: CheckContext,
    config: str,
    quick_opts: Sequence[str],
    output_dir: str,
    opts: Sequence[str] = (),
):
    """`config` with the quick options in quick mode, on the check's device, writing to `output_dir`."""
    cfg = get_detnas_cfg(config_file(config), list(quick_opts if ctx.quick else ()) + list(opts))
    cfg.MODEL.DEVICE = str(ctx.device)
    cfg.OUTPUT_DIR = output_dir
    return cfg


def synthetic_dataset(ctx: CheckContext, task: FullScaleTask) -> str:
    """The task's synthetic training dataset (registered; its JPEGs are written once per work folder)."""
    size = _QUICK_IMAGE_SIZE if ctx.quick else task.image_size
    count = _QUICK_NUM_IMAGES if ctx.quick else task.num_images
    folder = str(ctx.work_dir / "synthetic" / f"{task.name}_{size[0]}x{size[1]}")
    name = f"gpu_check_{task.name}_synthetic"
    if task.name == "imagenet":
        classes = 10 if ctx.quick else 1000
        return synthetic.register_classification(name, folder, count, size, num_classes=classes)
    return synthetic.register_detection(name, folder, count, size)


def per_gpu_batch(ctx: CheckContext, task: FullScaleTask, cfg) -> int:
    """The images one GPU takes per iteration: IMS_PER_BATCH / 8 (quick: the task's tiny batch)."""
    if ctx.quick:
        return task.quick_batch
    total = int(cfg.SOLVER.IMS_PER_BATCH)
    if total % GPUS_PER_MACHINE:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={total} is not a multiple of {GPUS_PER_MACHINE} GPUs"
        )
    return total // GPUS_PER_MACHINE


def fixed_arch(space: SearchSpace) -> Tuple[int, ...]:
    """The arch whose supernet path and stand-alone subnet are compared: a seeded random one."""
    return space.random_arch(random.Random(0))


def archs_in_flops_range(cfg, count: int, seed: int = 0) -> List[Tuple[int, ...]]:
    """`count` seeded random archs whose FLOPs (at DETNAS.SEARCH.INPUT_SIZE) lie in the search's
    [FLOPS_MIN, FLOPS_MAX] (any arch where a limit is 0), as the search's candidates do."""
    space = space_from_cfg(cfg)
    search = cfg.DETNAS.SEARCH
    lo, hi = float(search.FLOPS_MIN), float(search.FLOPS_MAX)
    table = get_flops_table(space, int(search.INPUT_SIZE)) if lo or hi else None
    rng = random.Random(seed)
    archs = []
    for _ in range(100000):
        arch = space.random_arch(rng)
        flops = table.flops(arch) if table is not None else 0
        if (not lo or flops >= lo) and (not hi or flops <= hi):
            archs.append(arch)
            if len(archs) == count:
                return archs
    raise ValueError(
        f"no {count} random archs of space {space.name} with FLOPs in [{lo:g}, {hi:g}] "
        f"(found {[arch_to_str(a) for a in archs]})"
    )
