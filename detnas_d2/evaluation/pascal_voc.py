"""Pascal VOC box AP of any VOC-format detection dataset, and the evaluator of a detection dataset.

`PascalVOCEvaluator` scores what Detectron2's `PascalVOCDetectionEvaluator` cannot: a union of VOC
splits and a held-out split of one (the VOC search split, data/datasets.py), whose images lie in
several VOC folders and are listed in no image-set file; and the images asked for only
(`evaluate(img_ids)`: the search scores prefixes of its split). Its matching is Detectron2's
(`pascal_voc_evaluation.voc_eval`, run in memory: the same rounding of scores and boxes, greedy
matching by score, difficult objects ignored, `parse_rec` and `voc_ap`), so on a Detectron2 split in
which every class has an object it gives that evaluator's numbers. A class without ground truth in
the evaluated images is left out of the mean, as COCOeval leaves it out (Detectron2's VOC evaluator
counts it 0 with the 2007 metric, NaN with the other). An image's ground truth is the annotation file
next to its JPEG, <VOC folder>/Annotations/<image_id>.xml, where Detectron2's VOC loader read it.

The metric is the VOC 2007 11-point AP when the dataset's metadata `year` is 2007 (Detectron2's
choice), else the area under the precision-recall curve.
"""

import logging
import os
from collections import OrderedDict, defaultdict
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator
from detectron2.evaluation.pascal_voc_evaluation import parse_rec, voc_ap
from detectron2.utils import comm

__all__ = [
    "VOC_IOU_THRESHOLDS",
    "PascalVOCEvaluator",
    "build_detection_evaluator",
    "voc_annotation_file",
]

logger = logging.getLogger(__name__)

VOC_IOU_THRESHOLDS = tuple(range(50, 100, 5))  # percent; "AP" is their mean, as Detectron2's


def voc_annotation_file(file_name: str, image_id: str) -> str:
    """The annotation XML of a VOC image: <VOC folder>/Annotations/<image_id>.xml beside JPEGImages/."""
    return os.path.join(
        os.path.dirname(os.path.dirname(file_name)), "Annotations", f"{image_id}.xml"
    )


def _class_ap(
    detections, objects, class_name: str, iou: float, use_07_metric: bool
) -> Optional[float]:
    """AP of one class (`detections`: (image_id, score, box) of that class; `objects`: image_id -> its
    parsed annotation objects), matched as voc_eval does; None when no object of the class counts."""
    gt = {}
    num_positives = 0
    for image_id, objs in objects.items():
        objs = [o for o in objs if o["name"] == class_name]
        difficult = np.array([o["difficult"] for o in objs], dtype=bool)
        gt[image_id] = (
            np.array([o["bbox"] for o in objs], dtype=float),
            difficult,
            [False] * len(objs),
        )
        num_positives += int((~difficult).sum())
    if num_positives == 0:
        return None
    image_ids = [d[0] for d in detections]
    scores = np.array([d[1] for d in detections])
    boxes = np.array([d[2] for d in detections], dtype=float).reshape(-1, 4)
    order = np.argsort(-scores)
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for rank, index in enumerate(order):
        gt_boxes, difficult, matched = gt[image_ids[index]]
        box = boxes[index]
        best = -np.inf
        if gt_boxes.size:
            iw = np.maximum(
                np.minimum(gt_boxes[:, 2], box[2]) - np.maximum(gt_boxes[:, 0], box[0]) + 1.0, 0
            )
            ih = np.maximum(
                np.minimum(gt_boxes[:, 3], box[3]) - np.maximum(gt_boxes[:, 1], box[1]) + 1.0, 0
            )
            inter = iw * ih
            union = (
                (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
                + (gt_boxes[:, 2] - gt_boxes[:, 0] + 1.0) * (gt_boxes[:, 3] - gt_boxes[:, 1] + 1.0)
                - inter
            )
            overlaps = inter / union
            best, j = np.max(overlaps), int(np.argmax(overlaps))
        if best > iou:
            if not difficult[j]:
                if not matched[j]:
                    tp[rank] = 1.0
                    matched[j] = True
                else:
                    fp[rank] = 1.0
        else:
            fp[rank] = 1.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / float(num_positives)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return float(voc_ap(recall, precision, use_07_metric))


class PascalVOCEvaluator(DatasetEvaluator):
    """Box AP (module doc) of a dataset whose images are VOC folders' (Detectron2's VOC loader's
    dicts: "file_name" <folder>/JPEGImages/<image_id>.jpg). Returns {"bbox": {"AP50", ...}} on the main
    process (an empty dict elsewhere): "AP<t>" per IoU threshold t of `iou_thresholds` (percent), and
    with all of VOC_IOU_THRESHOLDS also "AP" (their mean), as Detectron2's evaluator."""

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        iou_thresholds: Sequence[int] = VOC_IOU_THRESHOLDS,
    ):
        meta = MetadataCatalog.get(dataset_name)
        self._dataset_name = dataset_name
        self._class_names = list(meta.thing_classes)
        self._use_07_metric = meta.get("year") == 2007
        self._distributed = distributed
        self._iou_thresholds = tuple(int(t) for t in iou_thresholds)
        self.reset()

    def reset(self):
        self._detections = defaultdict(list)  # class id -> [(image_id, score, box)], as processed
        self._annotation_files = {}  # image_id -> annotation XML

    def process(self, inputs, outputs):
        for input, output in zip(inputs, outputs):
            image_id = input["image_id"]
            self._annotation_files[image_id] = voc_annotation_file(input["file_name"], image_id)
            instances = output["instances"].to("cpu")
            boxes = instances.pred_boxes.tensor.numpy()
            for box, score, cls in zip(
                boxes, instances.scores.tolist(), instances.pred_classes.tolist()
            ):
                # Detectron2's evaluator writes "%.3f" scores and "%.1f" boxes, 1-based (the inverse
                # of its loader's), and reads them back: the same numbers here.
                x0, y0, x1, y1 = (
                    float(f"{v:.1f}") for v in (box[0] + 1, box[1] + 1, box[2], box[3])
                )
                self._detections[cls].append((image_id, float(f"{score:.3f}"), (x0, y0, x1, y1)))

    def _gathered(self):
        if not self._distributed:
            return self._detections, self._annotation_files
        comm.synchronize()
        shares = comm.gather((dict(self._detections), self._annotation_files), dst=0)
        if not comm.is_main_process():
            return None, None
        detections = defaultdict(list)
        files = {}
        for share_detections, share_files in shares:
            for cls, found in share_detections.items():
                detections[cls].extend(found)
            files.update(share_files)
        return detections, files

    def evaluate(self, img_ids: Optional[Iterable[str]] = None) -> Dict:
        """AP over the processed images, or over those of `img_ids` (each must have been processed)."""
        detections, files = self._gathered()
        if detections is None:
            return {}
        if img_ids is not None:
            img_ids = list(img_ids)
            missing = [i for i in img_ids if i not in files]
            if missing:
                raise ValueError(
                    f"PascalVOCEvaluator on '{self._dataset_name}': images {missing[:5]} were not "
                    "processed; evaluate the images the model ran on"
                )
            files = {i: files[i] for i in img_ids}
        if not files:
            logger.warning(f"PascalVOCEvaluator on '{self._dataset_name}' received no images")
            return {}
        objects = {image_id: parse_rec(path) for image_id, path in files.items()}
        aps: Dict[int, List[float]] = {t: [] for t in self._iou_thresholds}
        for cls, name in enumerate(self._class_names):
            found = [d for d in detections.get(cls, []) if d[0] in objects]
            for t in self._iou_thresholds:
                ap = _class_ap(found, objects, name, t / 100.0, self._use_07_metric)
                if ap is not None:
                    aps[t].append(100.0 * ap)
        metric = "VOC2007 11-point" if self._use_07_metric else "area"
        if not aps[self._iou_thresholds[0]]:
            logger.warning(
                f"'{self._dataset_name}': no class has ground truth in {len(files)} images"
            )
            return {}
        bbox = OrderedDict((f"AP{t}", float(np.mean(aps[t]))) for t in self._iou_thresholds)
        if self._iou_thresholds == VOC_IOU_THRESHOLDS:
            bbox = OrderedDict(
                [
                    ("AP", float(np.mean(list(bbox.values())))),
                    ("AP50", bbox["AP50"]),
                    ("AP75", bbox["AP75"]),
                ]
            )
        logger.info(
            f"Pascal VOC box AP ({metric}) of '{self._dataset_name}', {len(files)} images, "
            f"{len(aps[self._iou_thresholds[0]])} classes: "
            + ", ".join(f"{k} {v:.2f}" for k, v in bbox.items())
        )
        return OrderedDict(bbox=bbox)


def build_detection_evaluator(
    dataset_name: str,
    output_dir: Optional[str] = None,
    distributed: bool = True,
    use_fast_impl: bool = False,
    iou_thresholds: Sequence[int] = VOC_IOU_THRESHOLDS,
) -> DatasetEvaluator:
    """The evaluator of a detection dataset, by its metadata's evaluator_type: PascalVOCEvaluator for
    "pascal_voc" (over `iou_thresholds`), else Detectron2's COCOEvaluator (`output_dir`: where it
    writes its predictions and converted json; `use_fast_impl`: Detectron2's compiled COCOeval)."""
    if MetadataCatalog.get(dataset_name).get("evaluator_type") == "pascal_voc":
        return PascalVOCEvaluator(
            dataset_name, distributed=distributed, iou_thresholds=iou_thresholds
        )
    return COCOEvaluator(
        dataset_name, distributed=distributed, output_dir=output_dir, use_fast_impl=use_fast_impl
    )
