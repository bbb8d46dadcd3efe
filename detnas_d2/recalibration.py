"""Exact BN recalibration of a supernet path, used by supernet evaluation (training) and the search.

A supernet's BN statistics are averages over all the paths it was trained on, so a path gets statistics
of its own before it is evaluated or scored (DetNAS/SPOS). We compute them exactly, not as fvcore's
`update_bn_stats` does: that one keeps a running average of per-batch means/variances (its variance
misses the spread of the batch means, and the average depends on how the images are split into batches
and processes) and zeroes the statistics of BN layers that are in train mode but never run. Here:

- every BN layer of the model normalises with the statistics of its current batch, as in training
  (the layer stays in eval mode with its running buffers detached, so SyncBN/NaiveSyncBN never
  synchronise: processes scoring different candidates cannot deadlock);
- a forward pre-hook adds each layer's per-channel input count, sum and sum of squares (float64);
- the sums are all-reduced over processes when they share the images, and the layer's running
  mean/variance become the exact mean and unbiased variance over all recalibration pixels.
Only the layers that ran get new statistics: the active path's blocks, the stem, and the FPN/head BN
layers (those run on every path but their statistics depend on it, so they are recalibrated too);
the blocks off the path keep theirs. What runs on a batch is the task's `recalibration_forward`. The
images are cut into fixed global batches (batch b on process b mod world size), so the batches, hence
the statistics, do not depend on the number of processes.

The recalibration images (DETNAS.BN_RECALIB) are the first IMAGES of a seeded shuffle of DATASET
(default DATASETS.TRAIN[0]), with test-time preprocessing (deterministic).
"""

import itertools
import logging
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
import torch.utils.data as torchdata
from detectron2.data import DatasetCatalog
from detectron2.data.build import trivial_batch_collator
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.utils import comm
from torch import nn

from .modeling import bn_layers, find_supernet
from .tasks import get_task

__all__ = [
    "InputBatches",
    "RecalibrationSettings",
    "dataset_dicts",
    "recalibrate_bn",
    "recalibrated_bn",
    "recalibration_batches",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecalibrationSettings:
    """DETNAS.BN_RECALIB, read once."""

    dataset: str
    images: int
    batch_size: int

    @classmethod
    def from_cfg(cls, cfg) -> "RecalibrationSettings":
        r = cfg.DETNAS.BN_RECALIB
        return cls(
            r.DATASET or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else ""),
            int(r.IMAGES),
            int(r.BATCH_SIZE),
        )

    def require_dataset(self) -> str:
        if not self.dataset:
            raise ValueError(
                "Set DETNAS.BN_RECALIB.DATASET or DATASETS.TRAIN: BN recalibration needs training images"
            )
        return self.dataset


class InputBatches:
    """Fixed batches of mapped model inputs, the same for any number of processes.

    `dicts` are cut in order into global batches of `batch_size`. With `shard=True` this process
    takes batches rank, rank + world, ...; otherwise all of them. The mapped batches are kept in memory
    if they take at most `cache_bytes`; otherwise every pass maps them again (with a DataLoader).
    """

    def __init__(
        self,
        dicts,
        mapper,
        batch_size: int,
        shard: bool,
        num_workers: int,
        cache_bytes: int,
        name="",
    ):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        batches = [
            list(range(i, min(i + batch_size, len(dicts))))
            for i in range(0, len(dicts), batch_size)
        ]
        if shard:
            batches = batches[comm.get_rank() :: comm.get_world_size()]
        local = [dicts[i] for batch in batches for i in batch]
        offsets = list(itertools.accumulate(len(b) for b in batches))
        self._batch_indices = [list(range(end - len(b), end)) for b, end in zip(batches, offsets)]
        # A process may get no batch (fewer batches than processes): it then iterates over none.
        self._dataset = MapDataset(DatasetFromList(local, copy=False), mapper) if local else None
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
        if self._dataset is None:
            return []
        if cache_bytes <= 0:
            return None
        start, cache, size = time.perf_counter(), [], 0
        for batch in self._loader():
            size += sum(x["image"].numel() * x["image"].element_size() for x in batch)
            if size > cache_bytes:
                logger.info(
                    f"{self.name}: mapped inputs exceed DETNAS.SEARCH.CACHE_MB={cache_bytes / 2**20:.0f}; "
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
        for (
            m
        ) in layers:  # without running buffers, an eval-mode BN normalises with batch statistics
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
            parts += [
                torch.tensor([float(count)], dtype=torch.float64, device=device),
                total,
                squares,
            ]
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
        total, squares = (
            flat[offset + 1 : offset + 1 + c],
            flat[offset + 1 + c : offset + 1 + 2 * c],
        )
        offset += 1 + 2 * c
        if count == 0:
            continue
        mean = total / count
        var = (squares / count - mean * mean).clamp_(min=0) * (count / max(count - 1, 1))
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        updated += 1
    return updated


def dataset_dicts(name: str) -> List[Dict]:
    """The dicts of registered dataset `name`; an unknown or empty dataset is an error naming it."""
    if name not in DatasetCatalog.list():
        raise KeyError(
            f"Dataset '{name}' is not registered; registered: {', '.join(sorted(DatasetCatalog.list()))}"
        )
    dicts = DatasetCatalog.get(name)
    if not dicts:
        raise ValueError(f"Dataset '{name}' is empty")
    return dicts


def recalibration_batches(
    name: str,
    num_images: int,
    batch_size: int,
    seed: int,
    mapper,
    shard: bool,
    num_workers: int = 0,
    cache_bytes: int = 0,
) -> InputBatches:
    """The first `num_images` of a `seed`-ed shuffle of dataset `name` (in index order), mapped by
    `mapper` and cut into global batches of `batch_size` (module doc)."""
    if num_images <= 0:
        raise ValueError(f"DETNAS.BN_RECALIB.IMAGES must be positive, got {num_images}")
    dicts = dataset_dicts(name)
    if num_images > len(dicts):
        logger.warning(
            f"DETNAS.BN_RECALIB.IMAGES={num_images} but '{name}' has {len(dicts)} images: using all"
        )
    picked = sorted(random.Random(seed).sample(range(len(dicts)), min(num_images, len(dicts))))
    return InputBatches(
        [dicts[i] for i in picked],
        mapper,
        batch_size,
        shard,
        num_workers,
        cache_bytes,
        name=f"BN recalibration ({name})",
    )


@contextmanager
def recalibrated_bn(cfg, model):
    """Inside: the BN layers of `model` (its supernet on the path it runs now) hold the exact statistics
    of that path on DETNAS.BN_RECALIB images, computed by all processes together; the previous
    statistics are restored on exit. Does nothing for models without a supernet or with
    DETNAS.BN_RECALIB.IMAGES = 0."""
    model = getattr(model, "module", model)  # DDP
    settings = RecalibrationSettings.from_cfg(cfg)
    if find_supernet(model) is None or settings.images <= 0:
        yield
        return
    task = get_task(cfg)
    batches = recalibration_batches(
        settings.require_dataset(),
        settings.images,
        settings.batch_size,
        0,
        task.mapper(cfg, False),
        shard=True,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in bn_layers(model)]
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            n = recalibrate_bn(model, batches, task.recalibration_forward(model), all_reduce=True)
        logger.info(
            f"BN statistics of {n} layers recalibrated on {batches.total_images} training images"
        )
        yield
    finally:
        for m, state in zip(bn_layers(model), saved):
            m.load_state_dict(state)
        model.train(training)
