"""Scoring a candidate arch of a supernet: exact BN recalibration of its path (recalibration.py), then
evaluation on the held-out split with the task's evaluator and headline metric.

The mapped recalibration and evaluation inputs are kept in memory when they fit in
DETNAS.SEARCH.CACHE_MB, and reused for every candidate.

Racing (racing.py) scores a candidate on a first slice of the evaluation images, then maybe on a larger one:
the evaluation images are cut into segments at the slices' image counts (whole batches, so the batches are
those of an unsliced evaluation and the whole-set score equals it), and the scorer keeps, for the last
`keep` candidates scored on a slice, their BN statistics and model outputs, so that a larger slice only
recalibrates and evaluates what is new. A candidate it no longer holds (after a resume, or handed to
another process) is scored from the start; either way the score is the same.
"""
import contextlib
import io
import logging
import math
import time
from collections import OrderedDict
from typing import Dict, Sequence

import torch
from detectron2.utils import comm
from torch import nn

from detnas_d2.modeling import bn_layers, find_supernet
from detnas_d2.recalibration import InputBatches, dataset_dicts, recalibrate_bn, recalibration_batches
from detnas_d2.tasks import Task

from .settings import ScoringSettings

__all__ = ["CandidateScorer"]

logger = logging.getLogger(__name__)


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


def slice_images(num_images: int, batch_size: int, fraction: float) -> int:
    """The image count of racing slice `fraction` of `num_images`: rounded up to whole batches."""
    return min(num_images, math.ceil(fraction * num_images / batch_size) * batch_size)


def scoring_cfg(cfg, min_size: int):
    """`cfg` with the test-time shorter side `min_size` (INPUT.MAX_SIZE_TEST scaled alike); 0: `cfg`."""
    if not min_size:
        return cfg
    cfg = cfg.clone()
    cfg.defrost()
    cfg.INPUT.MAX_SIZE_TEST = round(cfg.INPUT.MAX_SIZE_TEST * min_size / cfg.INPUT.MIN_SIZE_TEST)
    cfg.INPUT.MIN_SIZE_TEST = min_size
    return cfg


def _kept(inputs, outputs):
    """What an evaluator reads of a batch, without the images, on the CPU."""
    inputs = [{k: v for k, v in x.items() if k != "image"} for x in inputs]
    return inputs, [{k: v.to("cpu") for k, v in o.items()} for o in outputs]


class _Partial:
    """A candidate scored on a slice: its BN statistics, kept model outputs and the segments done."""

    def __init__(self, bn_state, outputs, segments):
        self.bn_state, self.outputs, self.segments = bn_state, outputs, segments


class CandidateScorer:
    """Scores archs of the supernet inside `model` (built and loaded by the caller).

    `distributed=True`: all processes score the same candidate, each on its share of the images
    (DETNAS.SEARCH.DIST_MODE split_images); False: this process scores alone on all images.
    `score(arch, fraction=1.0)` scores on the first `fraction` of the evaluation images (one of `slices`,
    or 1.0) and returns {"score", "images_recalib", "images_eval", "seconds_recalib", "seconds_inference",
    "seconds_metric"}: the images forwarded and the seconds spent by this call. The score is the same on
    every process. `keep`: how many candidates scored on a slice are held to go on (module doc).
    """

    def __init__(self, cfg, task: Task, settings: ScoringSettings, model: nn.Module, distributed: bool,
                 slices: Sequence[float] = (), keep: int = 0):
        self.model = model.eval()
        self.supernet = find_supernet(model)
        if self.supernet is None:
            raise ValueError(
                f"MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME} builds no ShuffleNetV2Supernet: search needs a "
                "supernet backbone (e.g. build_detnas_supernet_fpn_backbone)"
            )
        self.task = task
        self.distributed = distributed and comm.get_world_size() > 1
        self.device = next(model.parameters()).device
        mapper = task.mapper(scoring_cfg(cfg, settings.eval_min_size), is_train=False)
        cache_bytes = int(settings.cache_mb * 2**20)
        workers = cfg.DATALOADER.NUM_WORKERS
        recalib = settings.recalib
        self.recalib_batches = recalibration_batches(
            recalib.dataset, recalib.images, recalib.batch_size, settings.seed, mapper, self.distributed,
            workers, cache_bytes,
        )
        self.eval_name = settings.eval_dataset
        self._eval_dicts = dataset_dicts(self.eval_name)
        if settings.eval_images > 0:
            self._eval_dicts = self._eval_dicts[: settings.eval_images]
        num = len(self._eval_dicts)
        self._bounds = {f: slice_images(num, settings.eval_batch_size, f) for f in list(slices) + [1.0]}
        self._segment_ends = bounds = sorted(set(self._bounds.values()))
        self.eval_segments = [
            InputBatches(
                self._eval_dicts[start:end], mapper, settings.eval_batch_size, self.distributed, workers,
                cache_bytes * (end - start) // num, name=f"evaluation ({self.eval_name}, images {start}-{end - 1})",
            )
            for start, end in zip([0] + bounds[:-1], bounds)
        ]
        self._keep = keep
        self._partial: "OrderedDict[tuple, _Partial]" = OrderedDict()
        with _quiet():
            self.evaluator = task.build_evaluator(cfg, self.eval_name, output_dir=None, distributed=self.distributed)
        self._recalib_forward = task.recalibration_forward(self.model)
        self._bn = bn_layers(self.model)

    @torch.no_grad()
    def score(self, arch: Sequence[int], fraction: float = 1.0) -> Dict[str, float]:
        if fraction not in self._bounds:
            raise ValueError(f"No evaluation slice {fraction}: the scorer has {sorted(self._bounds)}")
        num = self._bounds[fraction]
        segments = self._segment_ends.index(num) + 1
        self.supernet.set_arch(arch)
        partial = self._partial.pop(tuple(arch), None)
        t0 = time.perf_counter()
        images_recalib = 0
        if partial is None:
            recalibrate_bn(self.model, self.recalib_batches, self._recalib_forward, all_reduce=self.distributed)
            images_recalib = self.recalib_batches.total_images
            partial = _Partial([(m.running_mean.clone(), m.running_var.clone()) for m in self._bn], [], 0)
        else:
            for m, (mean, var) in zip(self._bn, partial.bn_state):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
        _sync(self.device)
        t1 = time.perf_counter()
        self.evaluator.reset()
        for inputs, outputs in partial.outputs:
            self.evaluator.process(inputs, outputs)
        keep = fraction < 1.0 and self._keep > 0  # the search may ask for a larger slice next
        images_eval = 0
        for segment in self.eval_segments[partial.segments : segments]:
            for batch in segment:
                outputs = self.model(batch)
                self.evaluator.process(batch, outputs)
                if keep:
                    partial.outputs.append(_kept(batch, outputs))
            images_eval += segment.total_images
        partial.segments = max(partial.segments, segments)
        _sync(self.device)
        t2 = time.perf_counter()
        with _quiet(type(self.evaluator).__module__):
            results = self.task.evaluate(self.evaluator, self._eval_dicts[:num])
        score = self.task.headline(results) if comm.is_main_process() or not self.distributed else None
        if self.distributed:
            score = comm.all_gather(score)[0]
        if keep:
            self._partial[tuple(arch)] = partial
            while len(self._partial) > self._keep:
                self._partial.popitem(last=False)
        t3 = time.perf_counter()
        return {
            "score": score, "images_recalib": images_recalib, "images_eval": images_eval,
            "seconds_recalib": t1 - t0, "seconds_inference": t2 - t1, "seconds_metric": t3 - t2,
        }
