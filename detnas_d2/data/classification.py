"""Classification data: the ImageNet-style mapper and the train/test loaders built on Detectron2's.

Dataset dicts: {"file_name": str, "label": int, ...} (e.g. `imagenet_train`, `toy_cls_train`).
Mapped dicts add "image": a uint8 tensor (3, crop, crop) in INPUT.FORMAT channel order.

Decoding is the CPU cost that matters: the crop box is chosen from the header size before decoding,
JPEGs are decoded at a reduced scale (PIL draft mode: 1/2, 1/4 or 1/8 in the decoder) whenever the
crop still has at least the output resolution there, and crop + resize run as one PIL resize with a
source box. Like torchvision's ImageFolder, EXIF orientation is not applied.
"""

import logging
import math

import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.config import configurable
from detectron2.data import get_detection_dataset_dicts
from detectron2.data.build import trivial_batch_collator
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.data.samplers import InferenceSampler
from detectron2.utils.file_io import PathManager
from PIL import Image
from torchvision import transforms as T

from .stream import build_resumable_loader, stream_seed

__all__ = [
    "ClassificationDatasetMapper",
    "build_classification_train_loader",
    "build_classification_test_loader",
    "check_classification_dicts",
]

logger = logging.getLogger(__name__)


def _decode_region(file_name, box_fn, out_size):
    """Open `file_name`, pick a crop box (x0, y0, x1, y1) in its pixels with `box_fn(width, height)`,
    and return that region resized to (out_size, out_size) as an RGB PIL image."""
    with PathManager.open(file_name, "rb") as f:
        img = Image.open(f)
        width, height = img.size
        x0, y0, x1, y1 = box_fn(width, height)
        if img.format == "JPEG":
            # The decoder may shrink by up to the factor that keeps the box >= out_size.
            shrink = min((x1 - x0) / out_size, (y1 - y0) / out_size)
            if shrink >= 2:
                img.draft("RGB", (math.ceil(width / shrink), math.ceil(height / shrink)))
                sx, sy = img.size[0] / width, img.size[1] / height
                x0, y0, x1, y1 = x0 * sx, y0 * sy, x1 * sx, y1 * sy
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        img = img.resize((out_size, out_size), Image.BILINEAR, box=(x0, y0, x1, y1))
    return img if img.mode == "RGB" else img.convert("RGB")


class ClassificationDatasetMapper:
    """Reads an image and makes the model input of a classification dataset dict.

    Training: random-resized crop to INPUT.CLS.TRAIN_CROP (area fraction INPUT.CLS.TRAIN_SCALE, aspect
    ratio 3/4..4/3, torchvision's sampling), horizontal flip with probability 0.5, colour jitter of
    brightness/contrast/saturation with strength INPUT.CLS.COLOR_JITTER (0: off).
    Testing: resize the shorter side to INPUT.CLS.TEST_RESIZE, centre crop INPUT.CLS.TEST_CROP.
    Randomness comes from torch's RNG, which Detectron2 seeds per data-loader worker.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        image_format: str,
        train_crop: int = 224,
        train_scale=(0.08, 1.0),
        color_jitter: float = 0.4,
        test_resize: int = 256,
        test_crop: int = 224,
    ):
        if image_format not in ("RGB", "BGR"):
            raise ValueError(
                f"INPUT.FORMAT must be RGB or BGR for classification, got '{image_format}'"
            )
        lo, hi = train_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(
                f"INPUT.CLS.TRAIN_SCALE must satisfy 0 < min <= max <= 1, got {train_scale}"
            )
        if test_crop > test_resize:
            raise ValueError(
                f"INPUT.CLS.TEST_CROP ({test_crop}) must not exceed INPUT.CLS.TEST_RESIZE ({test_resize})"
            )
        self.is_train = is_train
        self.image_format = image_format
        self.train_crop = train_crop
        self.train_scale = (lo, hi)
        self.test_resize = test_resize
        self.test_crop = test_crop
        self.color_jitter = (
            T.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter)
            if is_train and color_jitter > 0
            else None
        )

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return {
            "is_train": is_train,
            "image_format": cfg.INPUT.FORMAT,
            "train_crop": cfg.INPUT.CLS.TRAIN_CROP,
            "train_scale": tuple(cfg.INPUT.CLS.TRAIN_SCALE),
            "color_jitter": cfg.INPUT.CLS.COLOR_JITTER,
            "test_resize": cfg.INPUT.CLS.TEST_RESIZE,
            "test_crop": cfg.INPUT.CLS.TEST_CROP,
        }

    def _train_box(self, width, height):
        size_only = torch.empty(()).expand(1, height, width)  # all get_params reads; no memory
        top, left, h, w = T.RandomResizedCrop.get_params(
            size_only, scale=self.train_scale, ratio=(3 / 4, 4 / 3)
        )
        return left, top, left + w, top + h

    def _test_box(self, width, height):
        side = self.test_crop * min(width, height) / self.test_resize  # crop side in source pixels
        x0, y0 = (width - side) / 2, (height - side) / 2
        return x0, y0, x0 + side, y0 + side

    def __call__(self, dataset_dict):
        dataset_dict = dict(dataset_dict)
        if self.is_train:
            img = _decode_region(dataset_dict["file_name"], self._train_box, self.train_crop)
            if torch.rand(1).item() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            if self.color_jitter is not None:
                img = self.color_jitter(img)
        else:
            img = _decode_region(dataset_dict["file_name"], self._test_box, self.test_crop)
        array = np.asarray(img)
        if self.image_format == "BGR":
            array = array[:, :, ::-1]
        dataset_dict["image"] = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        return dataset_dict


def check_classification_dicts(dataset_dicts, dataset_names, num_classes):
    """Raise ValueError naming the dataset and file of the first dict without a valid label."""
    for i, d in enumerate(dataset_dicts):
        label = d.get("label")
        if (
            "file_name" not in d
            or not isinstance(label, (int, np.integer))
            or not 0 <= label < num_classes
        ):
            raise ValueError(
                f"dataset {list(dataset_names)}, item {i} ({d.get('file_name', 'no file_name')}): "
                f"needs 'file_name' and an int 'label' in [0, {num_classes}) "
                f"(MODEL.CLASSIFIER.NUM_CLASSES), got label {label!r}"
            )


def _classification_dicts(cfg, names):
    dicts = get_detection_dataset_dicts(list(names), filter_empty=False)
    check_classification_dicts(dicts, names, cfg.MODEL.CLASSIFIER.NUM_CLASSES)
    return dicts


def build_classification_train_loader(cfg, mapper=None):
    """Infinite loader over cfg.DATASETS.TRAIN: lists of SOLVER.IMS_PER_BATCH / world-size mapped
    dicts per process, each process drawing its shard of one shuffled sequence that resumes exactly
    (stream.py)."""
    dicts = _classification_dicts(cfg, cfg.DATASETS.TRAIN)
    if mapper is None:
        mapper = ClassificationDatasetMapper(cfg, is_train=True)
    logger.info(f"Classification training on {list(cfg.DATASETS.TRAIN)}: {len(dicts)} images")
    return build_resumable_loader(
        dicts,
        mapper,
        cfg.SOLVER.IMS_PER_BATCH,
        stream_seed(cfg),
        group_by_aspect=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def build_classification_test_loader(cfg, dataset_name, mapper=None, batch_size=None):
    """Loader over `dataset_name`, split over processes without overlap (InferenceSampler); batches
    of `batch_size` (default TEST.CLS_IMS_PER_BATCH) mapped dicts, the last one possibly smaller."""
    names = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name)
    dicts = _classification_dicts(cfg, names)
    if mapper is None:
        mapper = ClassificationDatasetMapper(cfg, is_train=False)
    dataset = MapDataset(DatasetFromList(dicts, copy=False), mapper)
    logger.info(f"Classification evaluation on {names}: {len(dataset)} images")
    return torchdata.DataLoader(
        dataset,
        batch_size=batch_size or cfg.TEST.CLS_IMS_PER_BATCH,
        sampler=InferenceSampler(len(dataset)),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=trivial_batch_collator,
    )
