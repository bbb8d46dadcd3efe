"""Per-image evaluation of a candidate: its score recomputed on any multiset of the evaluation images, the
basis of the finalists' bootstrap intervals (finalists.py).

What is resampled. A classifier's top-1 is a mean over images, of the per-image hit (x100): `ImageMean`.
COCO AP is not a mean over images, and no per-image quantity averages to it; so the bootstrap resamples
images and recomputes AP exactly as COCOeval computes it on the resampled list of images. COCOeval's
`evaluate` matches detections to ground truth per (image, category), independently of the other images;
its `accumulate` concatenates those per-image matches over the list of images, sorts them by score and
reads precision at 101 recall points. `DetectionImages` runs `evaluate` once (area "all", the last
maxDets, as the headline AP uses) and keeps, per category, each image's matches; `score(counts)`
concatenates them over the list in which image i (in COCOeval's order) appears counts[i] times and
accumulates as COCOeval does: exact, and with every count 1 it is the candidate's AP itself. The
detections are sorted once; a resample repeats each in place (one sort per resample only for a category
where two detections of one image tie): about 1 ms per resample on the toy split, 0.2 s on 5000 images
of 100 detections (80 categories, one CPU core), i.e. minutes for FINALISTS.BOOTSTRAP 1000 on COCO.

The resample plan (`resample_counts`) depends only on the number of images, the number of resamples and
the seed: every finalist and supernet is resampled alike, so differences are paired.
"""

import contextlib
import io
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from pycocotools.cocoeval import COCOeval

__all__ = [
    "ClassificationCollector",
    "DetectionCollector",
    "DetectionImages",
    "ImageMean",
    "NoPerImageCollector",
    "per_image_collector",
    "resample_counts",
]


def resample_counts(num_images: int, samples: int, seed: int) -> np.ndarray:
    """(samples, num_images): how many times each image is drawn in each bootstrap resample."""
    draws = np.random.default_rng(seed).integers(0, num_images, size=(samples, num_images))
    flat = (draws + num_images * np.arange(samples)[:, None]).ravel()
    return np.bincount(flat, minlength=samples * num_images).reshape(samples, num_images)


class ImageMean:
    """A score that is `scale` times the mean of per-image `values` (a classifier's top-1: hits x 100)."""

    def __init__(self, values: Sequence[float], scale: float = 1.0):
        self.values = np.asarray(values, dtype=np.float64)
        self.scale = scale

    @property
    def num_images(self) -> int:
        return len(self.values)

    def score(self, counts: np.ndarray) -> float:
        return float(self.scale * float(np.dot(counts, self.values)) / int(counts.sum()))


class _Category:
    """One category's per-image matches, images in COCOeval's order (filled by DetectionImages)."""

    def __init__(self, num_images: int, num_thresholds: int):
        self.starts = np.zeros(num_images, dtype=np.int64)
        self.lengths = np.zeros(num_images, dtype=np.int64)
        self.gts = np.zeros(num_images, dtype=np.int64)  # ground truth not ignored
        self.scores, self.tps, self.fps = [], [], []
        self.present = np.zeros(num_images, dtype=bool)  # COCOeval's evalImgs entry is not None
        self.num_thresholds = num_thresholds

    def finish(self):
        thresholds = self.num_thresholds
        self.scores = np.concatenate(self.scores) if self.scores else np.zeros(0)
        self.tps = (
            np.concatenate(self.tps, axis=1) if self.tps else np.zeros((thresholds, 0), dtype=bool)
        )
        self.fps = (
            np.concatenate(self.fps, axis=1) if self.fps else np.zeros((thresholds, 0), dtype=bool)
        )
        # COCOeval's order of the detections of an image list without repeats: by score, ties by image then
        # by place in the image (a stable sort of the concatenation)
        order = np.argsort(-self.scores, kind="mergesort")
        self.sorted_image = np.repeat(np.arange(len(self.lengths)), self.lengths)[order]
        self.sorted_tps, self.sorted_fps = self.tps[:, order], self.fps[:, order]
        # With repeats, the copies of an image's detection follow each other in that order, unless two
        # detections of one image tie (then the copies interleave: sorted again for each resample).
        tied = self.scores[order][1:] == self.scores[order][:-1]
        self.repeat_in_order = not np.any(tied & (self.sorted_image[1:] == self.sorted_image[:-1]))

    def cumulative(self, counts: np.ndarray, copies: np.ndarray):
        """COCOeval's cumulative true and false positives (T, detections) on the list in which image i
        appears counts[i] times (`copies`: the image of each place of that list)."""
        if self.repeat_in_order:
            repeats = counts[self.sorted_image]
            tps, fps = (
                np.repeat(self.sorted_tps, repeats, axis=1),
                np.repeat(self.sorted_fps, repeats, axis=1),
            )
        else:
            lengths = self.lengths[copies]
            # the detections of every copy of every image, concatenated in the list's order, then sorted
            index = np.repeat(
                self.starts[copies] - np.cumsum(lengths) + lengths, lengths
            ) + np.arange(lengths.sum())
            order = index[np.argsort(-self.scores[index], kind="mergesort")]
            tps, fps = self.tps[:, order], self.fps[:, order]
        return np.cumsum(tps, axis=1).astype(float), np.cumsum(fps, axis=1).astype(float)


class DetectionImages:
    """COCO box AP of a candidate on any multiset of the evaluation images (module doc).

    `coco_gt`: the dataset's COCO api; `results`: the candidate's detections as COCO json (dataset
    category ids); `img_ids`: the evaluation images."""

    def __init__(self, coco_gt, results: List[Dict], img_ids: Sequence[int]):
        self.num_images = len(set(img_ids))
        self._categories: List[_Category] = []
        if not results:  # no detection at all: AP is NaN, the headline's 0
            return
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' progress prints
            evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
            params = evaluator.params
            params.imgIds = list(img_ids)
            params.areaRng, params.areaRngLbl = (
                params.areaRng[:1],
                params.areaRngLbl[:1],
            )  # "all" alone
            evaluator.evaluate()
        max_det = params.maxDets[-1]
        self._rec_thrs = params.recThrs
        num_images, thresholds = len(params.imgIds), len(params.iouThrs)
        for k in range(len(params.catIds)):
            cat = _Category(num_images, thresholds)
            offset = 0
            for i in range(num_images):
                e = evaluator.evalImgs[k * num_images + i]
                if e is None:
                    continue
                cat.present[i] = True
                ignored = np.asarray(e["dtIgnore"][:, :max_det], dtype=bool)
                matched = np.asarray(e["dtMatches"][:, :max_det]) != 0
                cat.scores.append(np.asarray(e["dtScores"][:max_det], dtype=np.float64))
                cat.tps.append(matched & ~ignored)
                cat.fps.append(~matched & ~ignored)
                cat.gts[i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
                cat.starts[i], cat.lengths[i] = offset, len(cat.scores[-1])
                offset += cat.lengths[i]
            cat.finish()
            self._categories.append(cat)

    def score(self, counts: np.ndarray) -> float:
        """AP (x100) on the list in which image i appears counts[i] times; 0 where COCO's AP is NaN."""
        if not self._categories:
            return 0.0
        precision = -np.ones(
            (self._categories[0].num_thresholds, len(self._rec_thrs), len(self._categories))
        )
        copies = np.repeat(
            np.arange(len(counts)), counts
        )  # the image of each copy, in the list's order
        for k, cat in enumerate(self._categories):
            if not (counts * cat.present).any():
                continue
            num_gt = int(np.dot(counts, cat.gts))
            if num_gt == 0:
                continue
            tp, fp = cat.cumulative(counts, copies)
            total = tp.shape[1]
            precision[:, :, k] = 0.0
            if not total:
                continue
            recall = tp / num_gt
            prec = np.maximum.accumulate((tp / (fp + tp + np.spacing(1)))[:, ::-1], axis=1)[:, ::-1]
            for t in range(cat.num_thresholds):
                at = np.searchsorted(recall[t], self._rec_thrs, side="left")
                inside = at < total
                precision[t, inside, k] = prec[t, at[inside]]
        valid = precision[precision > -1]
        return float(np.mean(valid) * 100) if len(valid) else 0.0


class ClassificationCollector:
    """The top-1 hit of each image, as ClassificationEvaluator counts it."""

    def items(self, inputs, outputs, positions) -> List:
        logits = torch.stack([o["pred_logits"] for o in outputs])
        labels = torch.as_tensor([x["label"] for x in inputs], device=logits.device)
        k = min(5, logits.shape[1])
        hits = (logits.topk(k, dim=1).indices[:, 0] == labels).tolist()
        return [(p, float(h)) for p, h in zip(positions, hits)]

    def evaluation(self, items: List, evaluator) -> ImageMean:
        return ImageMean([hit for _, hit in sorted(items)], scale=100.0)


class DetectionCollector:
    """The detections of each image as COCO json, as COCOEvaluator converts them."""

    def __init__(self, dataset_name: str):
        mapping = MetadataCatalog.get(dataset_name).thing_dataset_id_to_contiguous_id
        self._dataset_id = {v: k for k, v in mapping.items()}

    def items(self, inputs, outputs, positions) -> List:
        items = []
        for x, out in zip(inputs, outputs):
            boxes = instances_to_coco_json(out["instances"].to("cpu"), x["image_id"])
            for box in boxes:
                box["category_id"] = self._dataset_id[box["category_id"]]
            items.append((x["image_id"], boxes))
        return items

    def evaluation(self, items: List, evaluator) -> DetectionImages:
        # the ground truth COCOEvaluator loaded (once) for the same dataset
        return DetectionImages(
            evaluator._coco_api, [b for _, boxes in items for b in boxes], [i for i, _ in items]
        )


class NoPerImageCollector:
    """A score with no per-image evaluation here (Pascal VOC AP): asked for one, a clear error."""

    def __init__(self, dataset_name: str):
        self._dataset_name = dataset_name

    def _refuse(self):
        raise ValueError(
            f"bootstrap intervals (DETNAS.SEARCH.FINALISTS.TOPK > 0) resample COCO AP or top-1; the Pascal "
            f"VOC AP of '{self._dataset_name}' has no per-image evaluation: set DETNAS.SEARCH.FINALISTS.TOPK 0"
        )

    def items(self, inputs, outputs, positions) -> List:
        self._refuse()

    def evaluation(self, items: List, evaluator):
        self._refuse()


def per_image_collector(task_name: str, dataset_name: str):
    """What a scorer keeps of each evaluated image (`items(inputs, outputs, positions)`, positions: the
    images' indices in the evaluation set) and turns, gathered, into the per-image evaluation
    (`evaluation(items, evaluator)`)."""
    if task_name == "classification":
        return ClassificationCollector()
    if MetadataCatalog.get(dataset_name).get("evaluator_type") == "pascal_voc":
        return NoPerImageCollector(dataset_name)
    return DetectionCollector(dataset_name)
