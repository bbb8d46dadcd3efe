"""A training data stream that resumes exactly, for every training step.

Detectron2 v0.6's `TrainingSampler` restarts its seeded stream on resume, so a resumed run sees the
images of iterations 0, 1, ... again, and its random augmentations depend on worker and process RNG
states that a checkpoint does not hold. Here the stream is a pure function of (seed, batch number):

- `ResumableBatchSampler`: epoch e is a shuffle seeded by (seed, e); global position p of the stream
  goes to rank p mod world size (as TrainingSampler shards it); batches are consecutive items, or, with
  aspect-ratio grouping, items grouped by `width > height` as Detectron2's AspectRatioGroupedDataset
  groups them. `start_batch` skips that many batches, by arithmetic without grouping and by replaying
  the (index-only) grouping with it;
- `SeededMapDataset`: before mapping the item at stream position p, Python's, NumPy's and torch's
  RNGs are seeded from (seed, p), so its augmentation is the same in any worker, process or run.
"""

import itertools
import random
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.data.build import trivial_batch_collator
from detectron2.utils import comm

__all__ = [
    "ResumableBatchSampler",
    "SeededMapDataset",
    "build_resumable_loader",
    "derived_seed",
    "seed_all",
    "stream_seed",
]

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: distinct (seed, n) pairs give distinct seeds


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, counter, ...), the same in every process."""
    value = 0
    for p in parts:
        value = ((value ^ (int(p) & (2**64 - 1))) * _MIX + 1) % 2**64
    return value >> 1


def stream_seed(cfg) -> int:
    """The data stream's seed: SEED, or when it is negative (random) one drawn and shared by all ranks.
    A resumed run takes the checkpoint's instead (the trainer's DataStreamHook)."""
    return int(cfg.SEED) if cfg.SEED >= 0 else comm.shared_random_seed()


def seed_all(seed: int, devices: bool = True):
    """Seed Python's, NumPy's and torch's global RNGs (this process or worker). `devices=False` seeds
    only torch's CPU generator: what data mapping uses, about 100x cheaper than `torch.manual_seed`,
    which also seeds every accelerator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if devices:
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


class ResumableBatchSampler:
    """Batches of (stream position, dataset index) for this rank (module doc)."""

    def __init__(
        self, dataset_dicts: Sequence[Dict], batch_size: int, seed: int, group_by_aspect: bool
    ):
        if batch_size < 1:
            raise ValueError(f"batch size per process must be >= 1, got {batch_size}")
        self.size = len(dataset_dicts)
        if self.size == 0:
            raise ValueError("the training set is empty")
        self.batch_size = batch_size
        self.seed = int(seed)
        self.start_batch = 0
        self._aspect = None
        if group_by_aspect:
            try:
                self._aspect = [int(d["width"] > d["height"]) for d in dataset_dicts]
            except KeyError as e:
                raise ValueError(
                    f"DATALOADER.ASPECT_RATIO_GROUPING needs 'width' and 'height' in every dataset dict ({e} missing)"
                ) from None
        self._rank, self._world = comm.get_rank(), comm.get_world_size()

    def _items(self, first: int = 0) -> Iterator[Tuple[int, int]]:
        """(global position, index) of this rank's items, from its `first`-th on."""
        position = self._rank + first * self._world
        epoch, order = -1, None
        while True:
            if position // self.size != epoch:
                epoch = position // self.size
                g = torch.Generator().manual_seed(derived_seed(self.seed, epoch))
                order = torch.randperm(self.size, generator=g).tolist()
            yield position, order[position % self.size]
            position += self._world

    def _grouped(self) -> Iterator[List[Tuple[int, int]]]:
        buckets = ([], [])
        for item in self._items():
            bucket = buckets[self._aspect[item[1]]]
            bucket.append(item)
            if len(bucket) == self.batch_size:
                yield list(bucket)
                bucket.clear()

    def __iter__(self):
        if self._aspect is not None:
            return itertools.islice(self._grouped(), self.start_batch, None)
        items = self._items(self.start_batch * self.batch_size)
        return iter(lambda: list(itertools.islice(items, self.batch_size)), None)


class SeededMapDataset(torchdata.Dataset):
    """`mapper(dataset_dicts[index])` for keys (position, index), with RNGs seeded from (seed, position).
    A mapper that returns None (an image it filters out) gets another, seeded, image."""

    def __init__(self, dataset_dicts: Sequence[Dict], mapper, sampler: ResumableBatchSampler):
        self._dicts = dataset_dicts
        self._mapper = mapper
        self._sampler = sampler  # its seed: restored from a checkpoint before the stream restarts

    def __len__(self):
        return len(self._dicts)

    def __getitem__(self, key):
        position, index = key
        for attempt in itertools.count():
            seed_all(derived_seed(self._sampler.seed, position, attempt), devices=False)
            data = self._mapper(self._dicts[index])
            if data is not None:
                return data
            index = random.randrange(len(self._dicts))


def build_resumable_loader(
    dataset_dicts, mapper, total_batch_size: int, seed: int, group_by_aspect: bool, num_workers: int
) -> torchdata.DataLoader:
    """An infinite loader of lists of `total_batch_size / world size` mapped dicts per process; its
    `batch_sampler` is the ResumableBatchSampler (trainer: seed and start batch)."""
    world = comm.get_world_size()
    if total_batch_size % world:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={total_batch_size} must be divisible by the {world} processes"
        )
    sampler = ResumableBatchSampler(dataset_dicts, total_batch_size // world, seed, group_by_aspect)
    return torchdata.DataLoader(
        SeededMapDataset(dataset_dicts, mapper, sampler),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
    )
