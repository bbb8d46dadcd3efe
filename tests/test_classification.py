"""Classification steps: mapper, loaders, ClassificationEvaluator (one and two processes),
DetNASClassifier, and toy subnet / supernet training far above chance."""

import json
import os
import socket

import detnas_d2  # noqa: F401  (compat shims, registrations)
from detnas_d2 import add_detnas_config

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.config import get_cfg
from detectron2.data.samplers import InferenceSampler
from detectron2.engine import HookBase
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage
from PIL import Image
from torchvision import transforms as T

from detnas_d2.data.classification import (
    ClassificationDatasetMapper,
    build_classification_test_loader,
    build_classification_train_loader,
    check_classification_dicts,
)
from detnas_d2.evaluation import ClassificationEvaluator
from detnas_d2.modeling import find_supernet

NUM_TOY_CLASSES = 5


def _toy_cfg(name="cls_subnet.yaml", **overrides):
    cfg = get_cfg()
    add_detnas_config(cfg)
    cfg.merge_from_file(os.path.join("configs/Toy", name))
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


# ---- mapper -----------------------------------------------------------------------------------------


def _smooth_image(width, height, seed=0):
    """A photo-like RGB image: gradients and low-frequency waves (no detail finer than ~20 px)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy = rng.uniform(0.5, 3, 2) * 2 * np.pi / max(width, height)  # 0.5-3 cycles per image
        wave = np.sin(xs * fx + ys * fy + rng.uniform(0, 2 * np.pi))
        channels.append(128 + 60 * wave + 50 * (xs / width - ys / height))
    return Image.fromarray(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    photo = _smooth_image(600, 480)  # 600 * 64 / 480 = 80: torchvision's Resize(64) has no rounding
    files = {
        "jpeg": photo,
        "png": photo,
        "gray_jpeg": photo.convert("L"),
        "palette_png": photo.convert("P"),
        "rgba_png": photo.convert("RGBA"),
        "square_jpeg": _smooth_image(96, 96, seed=1),
    }
    paths = {}
    for name, img in files.items():
        paths[name] = str(folder / (name + (".jpg" if name.endswith("jpeg") else ".png")))
        img.save(paths[name], quality=95) if name.endswith("jpeg") else img.save(paths[name])
    return paths


def _mapper(is_train, **kwargs):
    args = dict(image_format="RGB", train_crop=40, test_resize=64, test_crop=56, color_jitter=0.4)
    args.update(kwargs)
    return ClassificationDatasetMapper(is_train, **args)


def test_mapper_sizes_dtype_and_modes(image_files):
    for name, path in image_files.items():
        for is_train, size in ((True, 40), (False, 56)):
            out = _mapper(is_train)({"file_name": path, "label": 3, "height": 1, "width": 2})
            assert out["image"].shape == (3, size, size), name
            assert out["image"].dtype == torch.uint8 and out["image"].is_contiguous(), name
            assert out["label"] == 3 and out["file_name"] == path and out["height"] == 1
    # A grayscale source gives three equal channels.
    gray = _mapper(False)({"file_name": image_files["gray_jpeg"], "label": 0})["image"]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_mapper_bgr_is_reversed_rgb(image_files):
    item = {"file_name": image_files["jpeg"], "label": 0}
    rgb = _mapper(False)(item)["image"]
    bgr = _mapper(False, image_format="BGR")(item)["image"]
    assert torch.equal(bgr, rgb.flip(0))
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        _mapper(False, image_format="YUV")


@pytest.mark.parametrize("name", ["jpeg", "png"])  # JPEG: decoded at 1/4 scale (draft); PNG: full
def test_test_transform_matches_torchvision(image_files, name):
    ours = _mapper(False)({"file_name": image_files[name], "label": 0})["image"]
    with Image.open(image_files[name]) as img:
        reference = T.Compose([T.Resize(64), T.CenterCrop(56), T.PILToTensor()])(img.convert("RGB"))
    assert (ours.float() - reference.float()).abs().mean() < 2.0


def test_train_crop_box_and_flip(image_files):
    # Scale (1, 1) on a square image: the crop is the whole image, flipped or not.
    item = {"file_name": image_files["square_jpeg"], "label": 0}
    mapper = _mapper(True, train_scale=(1.0, 1.0), color_jitter=0.0)
    with Image.open(image_files["square_jpeg"]) as img:
        whole = T.PILToTensor()(img.resize((40, 40), Image.BILINEAR)).float()
    torch.manual_seed(0)
    flipped = []
    for _ in range(12):
        out = mapper(item)["image"].float()
        error, error_flipped = (out - whole).abs().mean(), (out - whole.flip(2)).abs().mean()
        assert min(error, error_flipped) < 1.0
        flipped.append(bool(error_flipped < error))
    assert any(flipped) and not all(flipped)


def test_mapper_rejects_bad_options():
    with pytest.raises(ValueError, match="TRAIN_SCALE"):
        _mapper(True, train_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="TEST_CROP"):
        _mapper(False, test_resize=32, test_crop=64)


# ---- loaders ----------------------------------------------------------------------------------------


def test_train_loader_batches():
    cfg = _toy_cfg(**{"SOLVER.IMS_PER_BATCH": 6})
    batch = next(iter(build_classification_train_loader(cfg)))
    crop = cfg.INPUT.CLS.TRAIN_CROP
    assert len(batch) == 6
    for item in batch:
        assert item["image"].shape == (3, crop, crop) and item["image"].dtype == torch.uint8
        assert 0 <= item["label"] < NUM_TOY_CLASSES


def test_test_loader_covers_dataset_once():
    cfg = _toy_cfg()
    loader = build_classification_test_loader(cfg, "toy_cls_val", batch_size=32)
    batches = list(loader)
    files = [item["file_name"] for batch in batches for item in batch]
    assert [len(b) for b in batches] == [32] * 6 + [8]  # 200 images
    assert len(set(files)) == 200


def test_bad_labels_are_named():
    with pytest.raises(ValueError, match=r"mydata.*item 1 \(b.jpg\).*\[0, 5\).*label 7"):
        check_classification_dicts(
            [{"file_name": "a.jpg", "label": 0}, {"file_name": "b.jpg", "label": 7}], ["mydata"], 5
        )
    cfg = _toy_cfg(**{"MODEL.CLASSIFIER.NUM_CLASSES": 3})
    with pytest.raises(ValueError, match="toy_cls_val.*NUM_CLASSES"):
        build_classification_test_loader(cfg, "toy_cls_val")


# ---- evaluator --------------------------------------------------------------------------------------


def _scores_with_label_rank(label, rank, num_classes):
    """Logits where `label` has the given rank (0: highest)."""
    order = [c for c in range(num_classes) if c != label]
    order.insert(rank, label)
    scores = torch.empty(num_classes)
    scores[torch.tensor(order)] = torch.arange(num_classes, 0, -1).float()
    return scores


# (label, rank of the label among the scores) for 7 images over 8 classes: top-1 2/7, top-5 5/7.
KNOWN = [(0, 0), (5, 0), (3, 1), (7, 4), (1, 5), (2, 7), (6, 3)]


def _evaluate(evaluator, items, num_classes, batch_size=3):
    evaluator.reset()
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        inputs = [{"label": label} for label, _ in chunk]
        outputs = [
            {"pred_logits": _scores_with_label_rank(label, rank, num_classes)}
            for label, rank in chunk
        ]
        evaluator.process(inputs, outputs)
    return evaluator.evaluate()


def test_evaluator_known_predictions():
    results = _evaluate(ClassificationEvaluator("known"), KNOWN, 8)
    assert results["classification"]["top1"] == pytest.approx(100 * 2 / 7)
    assert results["classification"]["top5"] == pytest.approx(100 * 5 / 7)
    # Three classes: "top5" is top-3, so every image counts.
    results = _evaluate(ClassificationEvaluator("three"), [(0, 0), (1, 1), (2, 2)], 3)
    assert results["classification"] == {"top1": pytest.approx(100 / 3), "top5": 100.0}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _evaluate_on_rank(rank, world_size, port, out_dir):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        shard = [KNOWN[i] for i in InferenceSampler(len(KNOWN))]  # this rank's part (4 or 3 images)
        results = _evaluate(ClassificationEvaluator("known"), shard, 8, batch_size=2)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"num_images": len(shard), "results": results}, f)
    finally:
        dist.destroy_process_group()


def test_evaluator_exact_over_two_processes(tmp_path):
    # fork: the children need nothing but the evaluator, and re-importing Detectron2 costs seconds.
    mp.start_processes(
        _evaluate_on_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="fork"
    )
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (rank0["num_images"], rank1["num_images"]) == (4, 3)
    assert rank1["results"] == {}
    single = _evaluate(ClassificationEvaluator("known", distributed=False), KNOWN, 8)
    assert rank0["results"] == pytest.approx(single)  # exact counts, not an average of averages


# ---- model ------------------------------------------------------------------------------------------


def test_classifier_inputs_and_outputs():
    cfg = _toy_cfg()
    model = build_model(cfg)
    images = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8) for _ in range(3)]
    batch = [{"image": img, "label": i} for i, img in enumerate(images)]
    with EventStorage() as storage:
        losses = model(batch)
        assert set(losses) == {"loss_cls"} and torch.isfinite(losses["loss_cls"])
        assert 0 <= storage.history("cls_accuracy").latest() <= 1
        with pytest.raises(ValueError, match=r"labels must be in \[0, 5\)"):
            model([{"image": images[0], "label": 5}])
    model.eval()
    with torch.no_grad():
        outputs = model(batch)
        assert len(outputs) == 3 and all(
            o["pred_logits"].shape == (NUM_TOY_CLASSES,) for o in outputs
        )
        # Per-image results do not depend on the batch (BN in eval mode).
        torch.testing.assert_close(model(batch[1:2])[0]["pred_logits"], outputs[1]["pred_logits"])
        with pytest.raises(ValueError, match="one size per batch"):
            model([{"image": images[0]}, {"image": images[1][:, :16]}])


# ---- toy training -----------------------------------------------------------------------------------
# toy_cls (shapes, 1500 training images) needs the 400 iterations of configs/Toy/cls_base.yaml, too
# many for a test's time budget. Training is tested on colours instead, in 100 iterations: 4 classes of
# dominant hue (red, yellow-green, cyan, violet) under random saturation, brightness and stripes. Hue
# survives every augmentation of the mapper (crops, flips, brightness/contrast/saturation jitter).

HUE_CLASSES = ("red", "yellow-green", "cyan", "violet")


def _hue_image(rng, label, size=64):
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    period, angle = rng.uniform(6, 20), rng.uniform(0, np.pi)
    stripes = np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period) > 0
    hue = (label * 64 + rng.normal(0, 8, (size, size))) % 256
    saturation = rng.uniform(120, 255) - 60 * stripes
    value = rng.uniform(100, 255) * (1 - 0.3 * stripes) + rng.normal(0, 10, (size, size))
    hsv = np.stack([hue, saturation, value], axis=-1)
    return Image.fromarray(np.clip(hsv, 0, 255).astype(np.uint8), mode="HSV").convert("RGB")


@pytest.fixture(scope="module")
def hue_datasets(tmp_path_factory):
    """Registers hue_cls_train (200 images) and hue_cls_val (100); yields their names."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    folder = tmp_path_factory.mktemp("hues")
    rng = np.random.default_rng(0)
    names = {}
    for split, per_class in (("train", 50), ("val", 25)):
        dicts = []
        for label in range(len(HUE_CLASSES)):
            for i in range(per_class):
                path = str(folder / f"{split}_{label}_{i}.jpg")
                _hue_image(rng, label).save(path, quality=90)
                dicts.append({"file_name": path, "label": label, "height": 64, "width": 64})
        names[split] = f"hue_cls_{split}"
        DatasetCatalog.register(names[split], lambda dicts=dicts: dicts)
        MetadataCatalog.get(names[split]).classes = list(HUE_CLASSES)
    yield names
    for name in names.values():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _hue_cfg(config, hue_datasets, output_dir, **overrides):
    return _toy_cfg(
        config,
        **{
            "DATASETS.TRAIN": (hue_datasets["train"],),
            "DATASETS.TEST": (hue_datasets["val"],),
            "MODEL.CLASSIFIER.NUM_CLASSES": len(HUE_CLASSES),
            "INPUT.CLS.TRAIN_SCALE": (0.35, 1.0),  # the hue tests' recipe, independent of toy_cls'
            "OUTPUT_DIR": str(output_dir),
            **overrides,
        },
    )


CHANCE = 100.0 / len(HUE_CLASSES)


@pytest.mark.slow
def test_toy_subnet_trains_above_chance(hue_datasets, tmp_path):
    from detnas_d2.engine import DetNASTrainer

    seed_all_rng(0)
    cfg = _hue_cfg("cls_subnet.yaml", hue_datasets, tmp_path, **{"SOLVER.MAX_ITER": 100})
    trainer = DetNASTrainer(cfg)
    trainer.train()
    top1 = DetNASTrainer.test(cfg, trainer.model)["classification"]["top1"]
    assert top1 > 2 * CHANCE, top1


def test_toy_supernet_trainer_runs_random_paths(hue_datasets, tmp_path):
    from detnas_d2.engine import DetNASTrainer, RandomPathHook

    cfg = _hue_cfg(
        "cls_supernet.yaml",
        hue_datasets,
        tmp_path,
        **{"SOLVER.MAX_ITER": 8, "DETNAS.SAMPLER.PROGRESSIVE_ITERS": 4},
    )
    trainer = DetNASTrainer(cfg)
    path_hook = next(h for h in trainer._hooks if isinstance(h, RandomPathHook))
    paths = []
    trainer.register_hooks([_RecordPath(paths)])
    trainer.train()
    assert path_hook.num_sampled == 8 and len(set(paths)) == 8
    # The progressive warm-up: iterations 0-3 keep the reference arch (all 0) but for the last 1-16 layers.
    random_layers = trainer.storage.history("detnas/random_layers").values()
    assert [int(v) for v, _ in random_layers] == [1, 6, 11, 16]
    assert paths[0][:19] == (0,) * 19 and paths[1][:14] == (0,) * 14
    supernet = find_supernet(trainer.model)
    results = DetNASTrainer.test(cfg, trainer.model)["classification"]
    assert 0 <= results["top1"] <= results["top5"] == 100.0  # 4 classes: top-5 is everything
    assert (
        supernet.arch == paths[-1]
    )  # evaluation (on the reference arch) restores the training path


class _RecordPath(HookBase):
    def __init__(self, paths):
        self.paths = paths

    def after_step(self):
        self.paths.append(find_supernet(self.trainer.model).arch)


def test_supernet_evaluation_recalibrates_bn_and_restores_it(hue_datasets, tmp_path):
    """Supernet evaluation gives the reference arch BN statistics of its own (whatever the trained ones
    are) and puts the trained ones back afterwards."""
    from detnas_d2.engine import DetNASTrainer, reference_arch
    from detnas_d2.recalibration import recalibrated_bn

    cfg = _hue_cfg("cls_supernet.yaml", hue_datasets, tmp_path, **{"DETNAS.BN_RECALIB.IMAGES": 48})
    model = build_model(cfg).eval()
    find_supernet(model).set_arch(reference_arch(cfg))
    batch = next(iter(build_classification_test_loader(cfg, hue_datasets["val"])))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    def logits():
        with torch.no_grad():
            return torch.stack([o["pred_logits"] for o in model(batch)])

    def set_stats(seed):
        g = torch.Generator().manual_seed(seed)
        for m in bns:
            m.running_mean.normal_(0, 3, generator=g)
            m.running_var.uniform_(0.1, 10, generator=g)
        return {k: v.clone() for k, v in model.state_dict().items()}

    recalibrated = []
    for seed in (1, 2):
        trained = set_stats(seed)
        plain = logits()
        with recalibrated_bn(cfg, model):
            recalibrated.append(logits())
        assert not torch.allclose(plain, recalibrated[-1], atol=1e-3)
        restored = model.state_dict()
        assert all(torch.equal(trained[k], restored[k]) for k in trained)
    torch.testing.assert_close(
        recalibrated[0], recalibrated[1]
    )  # the trained statistics do not matter

    DetNASTrainer.test(cfg, model)
    restored = model.state_dict()
    assert all(torch.equal(trained[k], restored[k]) for k in trained)
    off = cfg.clone()
    off.DETNAS.BN_RECALIB.IMAGES = 0
    with recalibrated_bn(off, model):
        torch.testing.assert_close(logits(), plain)
