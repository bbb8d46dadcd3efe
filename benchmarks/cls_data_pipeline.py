#!/usr/bin/env python
"""Classification data pipeline vs training step, measured side by side in one run.

1. Toy config (configs/Toy/cls_subnet.yaml): images per second of the training data loader alone
   (DATALOADER.NUM_WORKERS of the config, default 0: the mapper runs in this process) and of the
   training step alone (forward, backward, SGD step on batches loaded beforehand). The ratio says how
   much faster the data arrives than the model consumes it, per CPU process.
2. ImageNet-sized JPEGs (synthetic photos, --size, default 500x375 like an average ImageNet image):
   images per second of our train and test mappers (224 crops) against the usual torchvision
   pipelines (full decode; RandomResizedCrop + flip + ColorJitter, or Resize(256) + CenterCrop(224)).

    python benchmarks/cls_data_pipeline.py [--iters 20] [--images 100] [--threads 1]
"""

import argparse
import os
import tempfile
import time

import detnas_d2  # noqa: F401  (first: compat shims, registrations)

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from PIL import Image
from torchvision import transforms as T

from detnas_d2.config import get_detnas_cfg
from detnas_d2.data.classification import (
    ClassificationDatasetMapper,
    build_classification_train_loader,
)
from detnas_d2.solver import build_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def images_per_second(fn, num_images):
    start = time.perf_counter()
    fn()
    return num_images / (time.perf_counter() - start)


def toy_pipeline_vs_step(config, iters, opts):
    cfg = get_detnas_cfg(config, opts)
    batch_size = cfg.SOLVER.IMS_PER_BATCH
    loader = iter(build_classification_train_loader(cfg))
    next(loader)  # start-up (workers, first decode) is not throughput

    batches = []
    data_rate = images_per_second(
        lambda: batches.extend(next(loader) for _ in range(iters)), iters * batch_size
    )

    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)

    def train(batches):
        with EventStorage():
            for batch in batches:
                loss = model(batch)["loss_cls"]
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

    train(batches[:2])  # warm-up: first-call kernel selection
    step_rate = images_per_second(lambda: train(batches), iters * batch_size)
    print(
        f"toy ({os.path.relpath(config, REPO)}, batch {batch_size}, crop {cfg.INPUT.CLS.TRAIN_CROP}, "
        f"{cfg.DATALOADER.NUM_WORKERS} workers):"
    )
    print(f"  data pipeline  {data_rate:9.1f} images/s")
    print(f"  training step  {step_rate:9.1f} images/s")
    print(f"  ratio data/step {data_rate / step_rate:.1f}x")


def _photo(width, height, seed):
    """A JPEG-compressible photo stand-in: smooth colour fields plus fine noise."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (height // 16 + 1, width // 16 + 1, 3)).astype(np.uint8)
    img = np.asarray(
        Image.fromarray(small).resize((width, height), Image.BICUBIC), dtype=np.float32
    )
    img += rng.normal(0, 8, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def imagenet_size_mappers(num_images, width, height):
    with tempfile.TemporaryDirectory() as folder:
        items = []
        for i in range(num_images):
            path = os.path.join(folder, f"{i}.jpg")
            _photo(width, height, i).save(path, quality=90)
            items.append({"file_name": path, "label": 0})

        def run(fn):
            return lambda: [fn(item) for item in items]

        def torchvision_pipeline(transform):
            def load(item):
                with Image.open(item["file_name"]) as img:
                    return transform(img.convert("RGB"))

            return load

        train_reference = T.Compose(
            [
                T.RandomResizedCrop(224),
                T.RandomHorizontalFlip(),
                T.ColorJitter(0.4, 0.4, 0.4),
                T.PILToTensor(),
            ]
        )
        test_reference = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])
        ours_train = ClassificationDatasetMapper(True, image_format="BGR")
        ours_test = ClassificationDatasetMapper(False, image_format="BGR")
        print(f"ImageNet-sized JPEGs ({width}x{height}, {num_images} images, 224 crops):")
        for name, ours, reference in (
            ("train", ours_train, torchvision_pipeline(train_reference)),
            ("test ", ours_test, torchvision_pipeline(test_reference)),
        ):
            run(ours)()  # page cache
            ours_rate = images_per_second(run(ours), num_images)
            reference_rate = images_per_second(run(reference), num_images)
            print(
                f"  {name} mapper {ours_rate:7.1f} images/s, torchvision {reference_rate:7.1f} images/s, "
                f"ratio {ours_rate / reference_rate:.2f}x"
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=os.path.join(REPO, "configs/Toy/cls_subnet.yaml"))
    parser.add_argument(
        "--iters", type=int, default=20, help="batches timed for the toy comparison"
    )
    parser.add_argument("--images", type=int, default=100, help="ImageNet-sized images timed")
    parser.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (model and mapper)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    toy_pipeline_vs_step(args.config, args.iters, args.opts)
    imagenet_size_mappers(args.images, *args.size)


if __name__ == "__main__":
    main()
