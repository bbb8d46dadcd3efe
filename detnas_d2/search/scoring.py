"""Scoring a candidate arch of a supernet: exact BN recalibration of its path (recalibration.py), then
evaluation on the held-out split with the task's evaluator and headline metric.

The mapped recalibration and evaluation inputs are kept in memory when they fit in
DETNAS.SEARCH.CACHE_MB, and reused for every candidate.
"""
import contextlib
import io
import logging
import time
from typing import Dict, Sequence

import torch
from detectron2.utils import comm
from torch import nn

from detnas_d2.modeling import find_supernet
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


class CandidateScorer:
    """Scores archs of the supernet inside `model` (built and loaded by the caller).

    `distributed=True`: all processes score the same candidate, each on its share of the images
    (DETNAS.SEARCH.DIST_MODE split_images); False: this process scores alone on all images.
    `score(arch)` returns {"score", "images_recalib", "images_eval", "seconds_recalib",
    "seconds_inference", "seconds_metric"}; the score is the same on every process.
    """

    def __init__(self, cfg, task: Task, settings: ScoringSettings, model: nn.Module, distributed: bool):
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
        mapper = task.mapper(cfg, is_train=False)
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
        self.eval_batches = InputBatches(
            self._eval_dicts, mapper, settings.eval_batch_size, self.distributed, workers, cache_bytes,
            name=f"evaluation ({self.eval_name})",
        )
        with _quiet():
            self.evaluator = task.build_evaluator(cfg, self.eval_name, output_dir=None, distributed=self.distributed)
        self._recalib_forward = task.recalibration_forward(self.model)

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
            results = self.task.evaluate(self.evaluator, self._eval_dicts)
        score = self.task.headline(results) if comm.is_main_process() or not self.distributed else None
        if self.distributed:
            score = comm.all_gather(score)[0]
        t3 = time.perf_counter()
        return {
            "score": score, "images_recalib": self.recalib_batches.total_images,
            "images_eval": self.eval_batches.total_images,
            "seconds_recalib": t1 - t0, "seconds_inference": t2 - t1, "seconds_metric": t3 - t2,
        }
