"""Scoring a candidate arch of a supernet: exact BN recalibration of its path (recalibration.py), then
evaluation on the held-out split with the task's evaluator and headline metric.

The mapped recalibration and evaluation inputs are kept in memory when they fit in
DETNAS.SEARCH.CACHE_MB, and reused for every candidate.

With several supernets (DETNAS.SEARCH.ENSEMBLE_WEIGHTS) a candidate's score is the mean of its scores on
each, every one with its own BN recalibration; a single supernet can also be asked for (the finalists).
For the finalists, the scorer also keeps what each image contributes (per_image.py) and returns the score
on every bootstrap resample of the images.

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
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.utils import comm
from torch import nn

from detnas_d2.modeling import bn_layers, find_supernet
from detnas_d2.recalibration import (
    InputBatches,
    dataset_dicts,
    recalibrate_bn,
    recalibration_batches,
)
from detnas_d2.tasks import Task

from .per_image import per_image_collector, resample_counts
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
    """Scores archs of the supernets inside `models` (built and loaded by the caller; one, or several for an
    ensemble).

    `distributed=True`: all processes score the same candidate, each on its share of the images
    (DETNAS.SEARCH.DIST_MODE split_images); False: this process scores alone on all images.
    `score(arch, fraction=1.0, supernet=None, bootstrap=None)` scores on the first `fraction` of the
    evaluation images (one of `slices`, or 1.0) and returns {"score", "images_recalib", "images_eval",
    "seconds_recalib", "seconds_inference", "seconds_metric"}: the images forwarded and the seconds spent
    by this call; with several supernets the score is the mean of theirs ("supernet_scores"), the rest
    summed. The score is the same on every process. `keep`: how many candidates scored on a slice are
    held to go on (module doc).
    """

    def __init__(
        self,
        cfg,
        task: Task,
        settings: ScoringSettings,
        models: Sequence[nn.Module],
        distributed: bool,
        slices: Sequence[float] = (),
        keep: int = 0,
    ):
        self.models = [model.eval() for model in models]
        self.supernets = [find_supernet(model) for model in self.models]
        if any(supernet is None for supernet in self.supernets):
            raise ValueError(
                f"MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME} builds no ShuffleNetV2Supernet: search needs a "
                "supernet backbone (e.g. build_detnas_supernet_fpn_backbone)"
            )
        self.task = task
        self.distributed = distributed and comm.get_world_size() > 1
        self.device = next(self.models[0].parameters()).device
        mapper = task.mapper(scoring_cfg(cfg, settings.eval_min_size), is_train=False)
        cache_bytes = int(settings.cache_mb * 2**20)
        workers = cfg.DATALOADER.NUM_WORKERS
        recalib = settings.recalib
        self.recalib_batches = recalibration_batches(
            recalib.dataset,
            recalib.images,
            recalib.batch_size,
            settings.seed,
            mapper,
            self.distributed,
            workers,
            cache_bytes,
        )
        self.eval_name = settings.eval_dataset
        self._eval_dicts = dataset_dicts(self.eval_name)
        if settings.eval_images > 0:
            self._eval_dicts = self._eval_dicts[: settings.eval_images]
        num = len(self._eval_dicts)
        self._batch_size = settings.eval_batch_size
        self._bounds = {
            f: slice_images(num, settings.eval_batch_size, f) for f in list(slices) + [1.0]
        }
        self._segment_ends = bounds = sorted(set(self._bounds.values()))
        self.eval_segments = [
            InputBatches(
                self._eval_dicts[start:end],
                mapper,
                settings.eval_batch_size,
                self.distributed,
                workers,
                cache_bytes * (end - start) // num,
                name=f"evaluation ({self.eval_name}, images {start}-{end - 1})",
            )
            for start, end in zip([0] + bounds[:-1], bounds)
        ]
        self._keep = keep
        self._partial: "OrderedDict[tuple, _Partial]" = OrderedDict()
        with _quiet():
            self.evaluator = task.build_evaluator(
                cfg, self.eval_name, output_dir=None, distributed=self.distributed
            )
        self._per_image = per_image_collector(task.name, self.eval_name)
        self._recalib_forwards = [task.recalibration_forward(model) for model in self.models]
        self._bn = [bn_layers(model) for model in self.models]

    @torch.no_grad()
    def score(
        self,
        arch: Sequence[int],
        fraction: float = 1.0,
        supernet: Optional[int] = None,
        bootstrap: Optional[Tuple[int, int]] = None,
    ) -> Dict:
        """`supernet`: on that one of the models only (None: all, the mean). `bootstrap` (samples, seed), on
        one supernet and the whole set: the result also holds "replicates", the score on each resample of
        the images (per_image.py; on the main process, None elsewhere)."""
        if fraction not in self._bounds:
            raise ValueError(
                f"No evaluation slice {fraction}: the scorer has {sorted(self._bounds)}"
            )
        indices = range(len(self.models)) if supernet is None else [supernet]
        if bootstrap is not None and (len(indices) != 1 or fraction != 1.0):
            raise ValueError(
                "bootstrap replicates are scored on one supernet and the whole evaluation set"
            )
        results = [self._score_on(i, tuple(arch), fraction, bootstrap) for i in indices]
        if len(results) == 1:
            return results[0]
        scores = [r["score"] for r in results]
        out = {k: sum(r[k] for r in results) for k in results[0] if k != "score"}
        out.update(score=sum(scores) / len(scores), supernet_scores=scores)
        return out

    def _positions(self, segment: int, batch: int, size: int) -> List[int]:
        """The evaluation-set indices of the images of this process's `batch`-th batch of `segment`
        (InputBatches: global batch b runs on process b mod world size)."""
        start = ([0] + self._segment_ends)[segment]
        b = comm.get_rank() + batch * comm.get_world_size() if self.distributed else batch
        return list(range(start + b * self._batch_size, start + b * self._batch_size + size))

    def _score_on(self, index: int, arch: Tuple[int, ...], fraction: float, bootstrap) -> Dict:
        model, bn = self.models[index], self._bn[index]
        num = self._bounds[fraction]
        segments = self._segment_ends.index(num) + 1
        self.supernets[index].set_arch(arch)
        partial = self._partial.pop((index, arch), None)
        t0 = time.perf_counter()
        images_recalib = 0
        if partial is None:
            recalibrate_bn(
                model,
                self.recalib_batches,
                self._recalib_forwards[index],
                all_reduce=self.distributed,
            )
            images_recalib = self.recalib_batches.total_images
            partial = _Partial([(m.running_mean.clone(), m.running_var.clone()) for m in bn], [], 0)
        else:
            for m, (mean, var) in zip(bn, partial.bn_state):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
        _sync(self.device)
        t1 = time.perf_counter()
        self.evaluator.reset()
        for inputs, outputs in partial.outputs:
            self.evaluator.process(inputs, outputs)
        keep = fraction < 1.0 and self._keep > 0  # the search may ask for a larger slice next
        images_eval = 0
        items = []  # per-image evaluation (bootstrap)
        for s in range(partial.segments, segments):
            for b, batch in enumerate(self.eval_segments[s]):
                outputs = model(batch)
                self.evaluator.process(batch, outputs)
                if keep:
                    partial.outputs.append(_kept(batch, outputs))
                if bootstrap is not None:
                    items += self._per_image.items(
                        batch, outputs, self._positions(s, b, len(batch))
                    )
            images_eval += self.eval_segments[s].total_images
        partial.segments = max(partial.segments, segments)
        _sync(self.device)
        t2 = time.perf_counter()
        with _quiet(type(self.evaluator).__module__):
            results = self.task.evaluate(self.evaluator, self._eval_dicts[:num])
        score = (
            self.task.headline(results) if comm.is_main_process() or not self.distributed else None
        )
        if self.distributed:
            score = comm.all_gather(score)[0]
        if keep:
            self._partial[(index, arch)] = partial
            while len(self._partial) > self._keep:
                self._partial.popitem(last=False)
        t3 = time.perf_counter()
        out = {
            "score": score,
            "images_recalib": images_recalib,
            "images_eval": images_eval,
            "seconds_recalib": t1 - t0,
            "seconds_inference": t2 - t1,
            "seconds_metric": t3 - t2,
        }
        if bootstrap is not None:
            out["replicates"] = self._replicates(items, *bootstrap)
            out["seconds_bootstrap"] = time.perf_counter() - t3
        return out

    def _replicates(self, items: List, samples: int, seed: int) -> Optional[List[float]]:
        """The score on each of `samples` bootstrap resamples of the images (main process)."""
        if self.distributed:
            gathered = comm.gather(items, dst=0)
            if not comm.is_main_process():
                return None
            items = [item for share in gathered for item in share]
        evaluation = self._per_image.evaluation(items, self.evaluator)
        return [evaluation.score(c) for c in resample_counts(evaluation.num_images, samples, seed)]
