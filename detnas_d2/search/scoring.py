"""Scoring a candidate arch of a supernet: exact BN recalibration of its path, then evaluation.

BN recalibration. A supernet's BN statistics are averages over all the paths it was trained on, so
every candidate gets statistics of its own path before it is scored (DetNAS/SPOS). We compute them
exactly, not as fvcore's `update_bn_stats` does: that one keeps a running average of per-batch
means/variances (its variance misses the spread of the batch means, and the average depends on how
the images are split into batches and processes) and zeroes the statistics of BN layers that are in
train mode but never run. Here:

- every BN layer of the model normalises with the statistics of its current batch, as in training
  (the layer stays in eval mode with its running buffers detached, so SyncBN/NaiveSyncBN never
  synchronise: processes scoring different candidates cannot deadlock);
- a forward pre-hook adds each layer's per-channel input count, sum and sum of squares (float64);
- the sums are all-reduced over processes when they share the images, and the layer's running
  mean/variance become the exact mean and unbiased variance over all recalibration pixels.
Only the layers that ran get new statistics: the active path's blocks, the stem, and the FPN/head BN
layers (those run on every path but their statistics depend on it, so they are recalibrated too);
the blocks off the path keep theirs. When every BN layer sits in `model.backbone`, only the backbone
runs. The images are cut into fixed global batches (batch b on process b mod world size), so the
batches, hence the statistics, do not depend on the number of processes.

The recalibration images are the first SEARCH.BN_RECALIB_IMAGES of a seeded shuffle of the training
set, with test-time preprocessing (deterministic). Mapped inputs are kept in memory when they fit in
SEARCH.CACHE_MB, and reused for every candidate.
"""
import contextlib
import io
import itertools
import logging
import math
import os
import random
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.utils.data as torchdata
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data.build import trivial_batch_collator
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import ImageList
from detectron2.utils import comm
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from detnas_d2.compat import has_compiled_ops
from detnas_d2.modeling import find_supernet

__all__ = [
    "InputBatches",
    "recalibrate_bn",
    "recalibration_batches",
    "recalibration_forward",
    "CandidateScorer",
    "FITNESSES",
]

logger = logging.getLogger(__name__)

FITNESSES = ("bbox_AP", "top1")


class InputBatches:
    """Fixed batches of mapped model inputs, the same for any number of processes.

    `dicts` are cut in order into global batches of `batch_size`. With `shard=True` this process
    takes batches rank, rank + world, ...; otherwise all of them. The mapped batches are kept in memory
    if they take at most `cache_bytes`; otherwise every pass maps them again (with a DataLoader).
    """

    def __init__(self, dicts, mapper, batch_size: int, shard: bool, num_workers: int, cache_bytes: int, name=""):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        batches = [list(range(i, min(i + batch_size, len(dicts)))) for i in range(0, len(dicts), batch_size)]
        if shard:
            batches = batches[comm.get_rank() :: comm.get_world_size()]
        local = [dicts[i] for batch in batches for i in batch]
        offsets = list(itertools.accumulate(len(b) for b in batches))
        self._batch_indices = [list(range(end - len(b), end)) for b, end in zip(batches, offsets)]
        self._dataset = MapDataset(DatasetFromList(local, copy=False), mapper)
        self._num_workers = num_workers
        self.name = name
        self.num_images = len(local)
        self.total_images = len(dicts)
        self._cache = self._fill_cache(cache_bytes)
        self._stream = None  # without the cache: one loader, its workers kept between passes

    def _loader(self):
        return torchdata.DataLoader(
            self._dataset,
            batch_sampler=self._batch_indices,
            num_workers=self._num_workers,
            collate_fn=trivial_batch_collator,
            persistent_workers=self._num_workers > 0,
        )

    def _fill_cache(self, cache_bytes) -> Optional[List[List[Dict]]]:
        if cache_bytes <= 0:
            return None
        start, cache, size = time.perf_counter(), [], 0
        for batch in self._loader():
            size += sum(x["image"].numel() * x["image"].element_size() for x in batch)
            if size > cache_bytes:
                logger.info(
                    f"{self.name}: mapped inputs exceed SEARCH.CACHE_MB={cache_bytes / 2**20:.0f}; "
                    "they are read again for every candidate."
                )
                return None
            cache.append(batch)
        logger.info(
            f"{self.name}: {self.num_images} of {self.total_images} images mapped and cached in memory "
            f"({size / 2**20:.1f} MB, {time.perf_counter() - start:.1f} s)."
        )
        return cache

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def __len__(self):
        return len(self._batch_indices)

    def __iter__(self):
        if self._cache is not None:
            return iter(self._cache)
        if self._stream is None:
            self._stream = self._loader()
        return iter(self._stream)


def bn_layers(model: nn.Module) -> List[_BatchNorm]:
    """BN layers with running statistics (BatchNorm*, SyncBatchNorm, NaiveSyncBatchNorm), in model order."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches, forward, all_reduce: bool = False) -> int:
    """Set the running statistics of every BN layer that runs in `forward(batch)` for `batches` to
    the exact mean and unbiased variance of its inputs (module doc). Returns the number of layers
    recalibrated. With `all_reduce`, the statistics are summed over all processes first (every process
    must call this with its share of the batches)."""
    layers = bn_layers(model)
    sums = {}

    def accumulate(module, inputs):
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))
        var, mean = torch.var_mean(x, dim=dims, unbiased=False)
        n = x.numel() // x.shape[1]
        mean, var = mean.double(), var.double()
        count, total, squares = sums.get(module, (0, 0.0, 0.0))
        sums[module] = (count + n, total + mean * n, squares + (var + mean * mean) * n)

    saved = [(m.running_mean, m.running_var) for m in layers]
    handles = [m.register_forward_pre_hook(accumulate) for m in layers]
    try:
        for m in layers:  # without running buffers, an eval-mode BN normalises with batch statistics
            m.running_mean, m.running_var = None, None
        for batch in batches:
            forward(batch)
    finally:
        for h in handles:
            h.remove()
        for m, (mean, var) in zip(layers, saved):
            m.running_mean, m.running_var = mean, var

    # One flat float64 vector [count, sum(C), sum of squares(C)] per layer, zeros for layers not run.
    parts = []
    for m in layers:
        count, total, squares = sums.get(m, (0, None, None))
        c = m.num_features
        device = m.running_mean.device
        if count:
            parts += [torch.tensor([float(count)], dtype=torch.float64, device=device), total, squares]
        else:
            parts.append(torch.zeros(1 + 2 * c, dtype=torch.float64, device=device))
    if not parts:
        return 0
    flat = torch.cat(parts)
    if all_reduce and comm.get_world_size() > 1:
        dist.all_reduce(flat)
    flat = flat.cpu()
    offset, updated = 0, 0
    for m in layers:
        c = m.num_features
        count = flat[offset].item()
        total, squares = flat[offset + 1 : offset + 1 + c], flat[offset + 1 + c : offset + 1 + 2 * c]
        offset += 1 + 2 * c
        if count == 0:
            continue
        mean = total / count
        var = (squares / count - mean * mean).clamp_(min=0) * (count / max(count - 1, 1))
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        updated += 1
    return updated


@contextlib.contextmanager
def _quiet(*logger_names):
    """Silence COCOeval's prints and the evaluators' INFO logs (one summary per candidate is enough)."""
    loggers = [logging.getLogger(n) for n in logger_names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def recalib_dataset(cfg) -> str:
    name = cfg.SEARCH.BN_RECALIB_DATASET or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else "")
    if not name:
        raise ValueError("Set SEARCH.BN_RECALIB_DATASET or DATASETS.TRAIN: BN recalibration needs training images")
    return name


def eval_dataset(cfg) -> str:
    name = cfg.SEARCH.EVAL_DATASET or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
    if not name:
        raise ValueError("Set SEARCH.EVAL_DATASET (a held-out split) or DATASETS.TEST: candidates are scored on it")
    return name


def _dataset_dicts(name: str):
    if name not in DatasetCatalog.list():
        raise KeyError(f"Dataset '{name}' is not registered; registered: {', '.join(sorted(DatasetCatalog.list()))}")
    dicts = DatasetCatalog.get(name)
    if not dicts:
        raise ValueError(f"Dataset '{name}' is empty")
    return dicts


def recalibration_batches(name: str, num_images: int, batch_size: int, seed: int, mapper, shard: bool,
                          num_workers: int = 0, cache_bytes: int = 0, key: str = "num_images") -> InputBatches:
    """The first `num_images` of a `seed`-ed shuffle of dataset `name` (in index order), mapped by
    `mapper` and cut into global batches of `batch_size` (module doc). `key`: the config key that set
    `num_images`, for messages."""
    if num_images <= 0:
        raise ValueError(f"{key} must be positive, got {num_images}")
    dicts = _dataset_dicts(name)
    if num_images > len(dicts):
        logger.warning(f"{key}={num_images} but '{name}' has {len(dicts)} images: using all")
    picked = sorted(random.Random(seed).sample(range(len(dicts)), min(num_images, len(dicts))))
    return InputBatches(
        [dicts[i] for i in picked], mapper, batch_size, shard, num_workers, cache_bytes,
        name=f"BN recalibration ({name})",
    )


def recalibration_forward(model: nn.Module):
    """What to run on a batch to recalibrate `model`: its backbone alone when every BN layer is in
    `model.backbone` (detectors with a plain-BN backbone, classifiers are not), else the whole model."""
    backbone = getattr(model, "backbone", None)
    in_backbone = set(backbone.modules()) if backbone is not None else set()
    if hasattr(model, "preprocess_image") and all(m in in_backbone for m in bn_layers(model)):

        def forward(batch):
            images = model.preprocess_image(batch)
            backbone(images.tensor if isinstance(images, ImageList) else images)

        return forward
    return model


class CandidateScorer:
    """Scores archs of the supernet inside `model` (built and loaded by the caller).

    `distributed=True`: all processes score the same candidate, each on its share of the images
    (SEARCH.DIST_MODE split_images); False: this process scores alone on all images.
    `score(arch)` returns {"score", "seconds_recalib", "seconds_inference", "seconds_metric"}; the
    score is the same on every process.
    """

    def __init__(self, cfg, model: nn.Module, distributed: bool):
        self.model = model.eval()
        self.supernet = find_supernet(model)
        if self.supernet is None:
            raise ValueError(
                f"MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME} builds no ShuffleNetV2Supernet: search needs a "
                "supernet backbone (e.g. build_detnas_supernet_fpn_backbone)"
            )
        self.distributed = distributed and comm.get_world_size() > 1
        self.fitness = cfg.SEARCH.FITNESS
        if self.fitness not in FITNESSES:
            raise ValueError(f"SEARCH.FITNESS must be one of {FITNESSES}, got '{self.fitness}'")
        self.device = next(model.parameters()).device
        mapper = self._build_mapper(cfg)
        cache_bytes = int(cfg.SEARCH.CACHE_MB * 2**20)
        workers = cfg.DATALOADER.NUM_WORKERS

        self.recalib_batches = recalibration_batches(
            recalib_dataset(cfg), cfg.SEARCH.BN_RECALIB_IMAGES, cfg.SEARCH.BN_RECALIB_BATCH_SIZE,
            cfg.SEARCH.SEED, mapper, self.distributed, workers, cache_bytes, key="SEARCH.BN_RECALIB_IMAGES",
        )

        self.eval_name = eval_dataset(cfg)
        dicts = _dataset_dicts(self.eval_name)
        if cfg.SEARCH.EVAL_IMAGES > 0:
            dicts = dicts[: cfg.SEARCH.EVAL_IMAGES]
        self.eval_batches = InputBatches(
            dicts, mapper, cfg.SEARCH.EVAL_BATCH_SIZE, self.distributed, workers, cache_bytes,
            name=f"evaluation ({self.eval_name})",
        )
        self.evaluator = self._build_evaluator(cfg, dicts)
        self._recalib_forward = recalibration_forward(self.model)

    def _build_mapper(self, cfg):
        if self.fitness == "top1":
            from detnas_d2.data.classification import ClassificationDatasetMapper

            return ClassificationDatasetMapper(cfg, is_train=False)
        return DatasetMapper(cfg, is_train=False)

    def _build_evaluator(self, cfg, dicts):
        if self.fitness == "top1":
            from detnas_d2.evaluation.classification import ClassificationEvaluator

            self._img_ids = None
            return ClassificationEvaluator(self.eval_name, distributed=self.distributed)
        meta = MetadataCatalog.get(self.eval_name)
        if not hasattr(meta, "json_file"):
            path = os.path.join(cfg.OUTPUT_DIR, f"{self.eval_name}_coco_format.json")
            convert_to_coco_json(self.eval_name, path)  # under a file lock; the same on every process
            meta.json_file = path
        self._img_ids = [d["image_id"] for d in dicts]
        with _quiet():
            return COCOEvaluator(
                self.eval_name, tasks=("bbox",), distributed=self.distributed, output_dir=None,
                use_fast_impl=has_compiled_ops(),
            )

    def _metric(self, results) -> float:
        if self.fitness == "top1":
            return float(results["classification"]["top1"])
        ap = float(results["bbox"]["AP"])
        return 0.0 if math.isnan(ap) else ap  # NaN: the model made no detection at all

    @torch.no_grad()
    def score(self, arch: Sequence[int]) -> Dict[str, float]:
        self.supernet.set_arch(arch)
        t0 = time.perf_counter()
        recalibrate_bn(self.model, self.recalib_batches, self._recalib_forward, all_reduce=self.distributed)
        _sync(self.device)
        t1 = time.perf_counter()
        self.evaluator.reset()
        for batch in self.eval_batches:
            self.evaluator.process(batch, self.model(batch))
        _sync(self.device)
        t2 = time.perf_counter()
        with _quiet(type(self.evaluator).__module__):
            if self._img_ids is None:
                results = self.evaluator.evaluate()
            else:
                results = self.evaluator.evaluate(img_ids=self._img_ids)
        score = self._metric(results) if comm.is_main_process() or not self.distributed else None
        if self.distributed:
            score = comm.all_gather(score)[0]
        t3 = time.perf_counter()
        return {"score": score, "seconds_recalib": t1 - t0, "seconds_inference": t2 - t1, "seconds_metric": t3 - t2}
