"""Synthetic stand-ins for ImageNet and COCO at their real sizes, for a machine without the datasets.

JPEG files of photo-like content (smooth colour fields plus fine noise: they compress and decode like
photos, unlike pure noise) with random labels, or random boxes of random classes, registered as
Detectron2 datasets. The checks then run the configs' own mappers, loaders and evaluators on them:
what they measure is the cost of the real code at the real sizes, never an accuracy.
"""

import copy
import itertools
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

__all__ = [
    "IMAGENET_SIZE",
    "COCO_SIZE",
    "COCO_BOXES_PER_IMAGE",
    "photo",
    "write_jpegs",
    "register_classification",
    "register_detection",
    "mapped_batch",
    "sizes_of",
]

IMAGENET_SIZE = (500, 375)  # (width, height): about the mean ImageNet image
COCO_SIZE = (640, 480)  # the most common COCO image size
COCO_BOXES_PER_IMAGE = 7  # COCO train2017 has 7.3 instances per image


def photo(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A JPEG-compressible photo stand-in: bicubically upsampled colour blotches plus pixel noise."""
    small = rng.uniform(0, 255, (height // 16 + 1, width // 16 + 1, 3)).astype(np.uint8)
    img = np.asarray(
        Image.fromarray(small).resize((width, height), Image.BICUBIC), dtype=np.float32
    )
    img = img + rng.normal(0, 8, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_jpegs(folder: str, count: int, size: Tuple[int, int], seed: int = 0) -> List[str]:
    """`count` photo-like JPEGs of `size` (width, height) in `folder` (kept when already there)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"{i:06d}.jpg")
        if not os.path.isfile(path):
            tmp = path + ".tmp.jpg"
            photo(size[0], size[1], rng).save(tmp, quality=90)
            os.replace(tmp, path)
        paths.append(path)
    return paths


def _register(name: str, dicts: List[Dict], **metadata) -> str:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: copy.deepcopy(dicts))
    MetadataCatalog.get(name).set(**metadata)
    return name


def register_classification(
    name: str,
    folder: str,
    count: int,
    size: Tuple[int, int] = IMAGENET_SIZE,
    num_classes: int = 1000,
    seed: int = 0,
) -> str:
    """An ImageNet-like classification dataset `name`: `count` JPEGs of `size`, random labels."""
    rng = np.random.default_rng(seed + 1)
    dicts = [
        {"file_name": path, "label": int(rng.integers(num_classes)), "image_id": i}
        for i, path in enumerate(write_jpegs(folder, count, size, seed))
    ]
    return _register(
        name,
        dicts,
        classes=[f"class_{c}" for c in range(num_classes)],
        evaluator_type="classification",
    )


def register_detection(
    name: str,
    folder: str,
    count: int,
    size: Tuple[int, int] = COCO_SIZE,
    num_classes: int = 80,
    boxes_per_image: int = COCO_BOXES_PER_IMAGE,
    seed: int = 0,
) -> str:
    """A COCO-like detection dataset `name`: `count` JPEGs of `size`, each with `boxes_per_image`
    random boxes (2% to 50% of the image side) of random classes."""
    width, height = size
    rng = np.random.default_rng(seed + 1)
    dicts = []
    for i, path in enumerate(write_jpegs(folder, count, size, seed)):
        annotations = []
        for _ in range(boxes_per_image):
            w, h = rng.uniform(0.02, 0.5) * width, rng.uniform(0.02, 0.5) * height
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            annotations.append(
                {
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "category_id": int(rng.integers(num_classes)),
                    "iscrowd": 0,
                }
            )
        dicts.append(
            {
                "file_name": path,
                "height": height,
                "width": width,
                "image_id": i,
                "annotations": annotations,
            }
        )
    return _register(
        name,
        dicts,
        thing_classes=[f"class_{c}" for c in range(num_classes)],
        evaluator_type="coco",
        thing_dataset_id_to_contiguous_id={c + 1: c for c in range(num_classes)},
    )


def mapped_batch(name: str, mapper, batch_size: int) -> List[Dict]:
    """The first `batch_size` dicts of dataset `name` (cycled when it has fewer), through `mapper`."""
    dicts = DatasetCatalog.get(name)
    return [mapper(copy.deepcopy(d)) for d in itertools.islice(itertools.cycle(dicts), batch_size)]


def sizes_of(batch: Sequence[Dict]) -> str:
    """'3x800x1067' (the first image's shape) for a report."""
    return "x".join(str(s) for s in batch[0]["image"].shape)
