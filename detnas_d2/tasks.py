"""The task of a model: detection or classification, decided once from the config.

A `Task` supplies everything that differs between the two: the dataset mapper, the train and test
loaders, the evaluator, the headline metric (the search's fitness) and what to run on a batch to
recalibrate BN statistics. The trainer, the scorer and the tools ask the task instead of branching.
Tasks live in `TASK_REGISTRY`; `get_task(cfg)` picks one by MODEL.META_ARCHITECTURE and, for a
detector, by the dataset it is scored on (a Pascal VOC one: fitness AP50).
"""

import logging
import math
import os
from typing import Dict, Sequence, Tuple

from detectron2.data import (
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.structures import ImageList
from detectron2.utils.registry import Registry
from torch import nn

from .compat import has_compiled_ops
from .data.classification import (
    ClassificationDatasetMapper,
    build_classification_test_loader,
    build_classification_train_loader,
)
from .data.stream import build_resumable_loader, stream_seed
from .evaluation import VOC_IOU_THRESHOLDS, ClassificationEvaluator, build_detection_evaluator
from .modeling.bn import bn_layers

__all__ = [
    "TASK_REGISTRY",
    "Task",
    "DetectionTask",
    "PascalVOCDetectionTask",
    "ClassificationTask",
    "get_task",
]

TASK_REGISTRY = Registry("DETNAS_TASK")
TASK_REGISTRY.__doc__ = "Tasks (detection, classification); `get_task(cfg)` picks one."

CLASSIFIER_META_ARCH = "DetNASClassifier"
logger = logging.getLogger(__name__)


class Task:
    name = ""
    fitness = ""  # the headline metric's name in search records and state files

    def mapper(self, cfg, is_train: bool):
        raise NotImplementedError

    def build_train_loader(self, cfg):
        raise NotImplementedError

    def build_test_loader(self, cfg, dataset_name: str):
        raise NotImplementedError

    def build_evaluator(self, cfg, dataset_name: str, output_dir=None, distributed: bool = True):
        """The evaluator of `dataset_name`; `output_dir=None` writes no prediction files (scoring)."""
        raise NotImplementedError

    def evaluate(self, evaluator, dataset_dicts: Sequence[Dict]) -> Dict:
        """`evaluator.evaluate()` restricted to `dataset_dicts` (a prefix of its dataset)."""
        return evaluator.evaluate()

    def headline(self, results: Dict) -> float:
        """The one number of an evaluation's results: the search's fitness, the pipeline's summary."""
        raise NotImplementedError

    def test_input_size(self, cfg) -> Tuple[int, int]:
        """(H, W) of the model's test input, at most: what a latency table for it is measured at."""
        raise NotImplementedError

    def recalibration_forward(self, model: nn.Module):
        """What to run on a batch so that every BN layer of `model` sees its inputs."""
        return model


@TASK_REGISTRY.register()
class DetectionTask(Task):
    name = "detection"
    fitness = "bbox_AP"

    def mapper(self, cfg, is_train):
        return DatasetMapper(cfg, is_train)

    def build_train_loader(self, cfg):
        """Detectron2's detection train loader, as a stream that resumes exactly (data/stream.py), for
        its default TrainingSampler; another DATALOADER.SAMPLER_TRAIN gets Detectron2's own loader."""
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logger.warning(
                f"DATALOADER.SAMPLER_TRAIN={cfg.DATALOADER.SAMPLER_TRAIN}: Detectron2's loader, whose data "
                "order restarts on --resume (only TrainingSampler resumes exactly)"
            )
            return build_detection_train_loader(cfg)
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
            if cfg.MODEL.KEYPOINT_ON
            else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        return build_resumable_loader(
            dicts,
            self.mapper(cfg, True),
            cfg.SOLVER.IMS_PER_BATCH,
            stream_seed(cfg),
            group_by_aspect=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    def build_test_loader(self, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name)

    def build_evaluator(self, cfg, dataset_name, output_dir=None, distributed=True):
        """COCOEvaluator, or PascalVOCEvaluator for a VOC dataset (scoring: AP50 only, the fitness)."""
        meta = MetadataCatalog.get(dataset_name)
        is_voc = meta.get("evaluator_type") == "pascal_voc"
        if output_dir is None and not is_voc and not hasattr(meta, "json_file"):
            # COCOEvaluator converts only into its output_dir: convert once, under a file lock.
            path = os.path.join(cfg.OUTPUT_DIR, f"{dataset_name}_coco_format.json")
            convert_to_coco_json(dataset_name, path)
            meta.json_file = path
        return build_detection_evaluator(
            dataset_name,
            output_dir=output_dir,
            distributed=distributed,
            use_fast_impl=has_compiled_ops(),
            iou_thresholds=(50,) if output_dir is None and is_voc else VOC_IOU_THRESHOLDS,
        )

    def evaluate(self, evaluator, dataset_dicts):
        return evaluator.evaluate(img_ids=[d["image_id"] for d in dataset_dicts])

    def test_input_size(self, cfg):
        return cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST

    def headline(self, results):
        ap = float(results["bbox"]["AP"])
        return 0.0 if math.isnan(ap) else ap  # NaN: the model made no detection at all

    def recalibration_forward(self, model):
        """The backbone alone when every BN layer sits in `model.backbone` (a plain-BN backbone under
        an FPN/head without BN), else the whole model."""
        backbone = getattr(model, "backbone", None)
        in_backbone = set(backbone.modules()) if backbone is not None else set()
        if hasattr(model, "preprocess_image") and all(m in in_backbone for m in bn_layers(model)):

            def forward(batch):
                images = model.preprocess_image(batch)
                backbone(images.tensor if isinstance(images, ImageList) else images)

            return forward
        return model


@TASK_REGISTRY.register()
class PascalVOCDetectionTask(DetectionTask):
    """Detection scored as on Pascal VOC: the fitness is box AP50 (VOC's headline metric)."""

    fitness = "bbox_AP50"

    def headline(self, results):
        ap50 = float(results["bbox"]["AP50"])
        return 0.0 if math.isnan(ap50) else ap50


@TASK_REGISTRY.register()
class ClassificationTask(Task):
    name = "classification"
    fitness = "top1"

    def mapper(self, cfg, is_train):
        return ClassificationDatasetMapper(cfg, is_train)

    def build_train_loader(self, cfg):
        return build_classification_train_loader(cfg)

    def build_test_loader(self, cfg, dataset_name):
        return build_classification_test_loader(cfg, dataset_name)

    def build_evaluator(self, cfg, dataset_name, output_dir=None, distributed=True):
        return ClassificationEvaluator(dataset_name, distributed=distributed)

    def test_input_size(self, cfg):
        return cfg.INPUT.CLS.TEST_CROP, cfg.INPUT.CLS.TEST_CROP

    def headline(self, results):
        return float(results["classification"]["top1"])


def get_task(cfg) -> Task:
    """Classification for the DetNASClassifier meta-architecture, detection for every other: scored as
    on Pascal VOC when the dataset it is scored on (DETNAS.SEARCH.EVAL_DATASET, else DATASETS.TEST[0])
    is a VOC dataset (metadata evaluator_type "pascal_voc")."""
    if cfg.MODEL.META_ARCHITECTURE == CLASSIFIER_META_ARCH:
        return TASK_REGISTRY.get("ClassificationTask")()
    scored = cfg.DETNAS.SEARCH.EVAL_DATASET or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
    is_voc = bool(scored) and MetadataCatalog.get(scored).get("evaluator_type") == "pascal_voc"
    return TASK_REGISTRY.get("PascalVOCDetectionTask" if is_voc else "DetectionTask")()
