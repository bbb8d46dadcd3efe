"""The paper's settings as configs and presets ({COCO, VOC} x {Faster R-CNN FPN, RetinaNet} in the small
space, COCO Faster R-CNN FPN in the large and large-wide spaces; docs/paper_settings.md): each setting's
recipe, its presets, one training step of every full-scale model at a reduced input size (at the real
size: benchmarks/paper_configs.py), Pascal VOC (the loader, the evaluator against Detectron2's, the
held-out search split, a search scored by AP50) and the toy RetinaNet pipeline (slow)."""

import math
import os
import random
import runpy
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import detnas_d2  # noqa: F401  (registers the datasets, applies the compat shims)

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_pascal_voc
from detectron2.data.datasets.pascal_voc import CLASS_NAMES
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from PIL import Image

from detnas_d2.config import get_detnas_cfg
from detnas_d2.config_files import config_file
from detnas_d2.data.datasets import register_held_out_split, register_union
from detnas_d2.evaluation import PascalVOCEvaluator
from detnas_d2.flops import get_flops_table
from detnas_d2.run_pipeline import PRESETS
from detnas_d2.search.runner import build_scorer
from detnas_d2.search.settings import ScoringSettings
from detnas_d2.search_space import space_from_cfg
from detnas_d2.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]

# the models of the presets and one training step of them (benchmarks/paper_configs.py)
STEP = runpy.run_path(str(ROOT / "benchmarks" / "paper_configs.py"))
PAPER_PRESETS = sorted(p for p in PRESETS if not p.startswith("toy"))

# (preset, dataset, detector meta-architecture, space, step-2 training set, search split, step-5 sets,
# test set, classes, iterations, lr)
COCO_TRAIN, COCO_SEARCH = ("coco_2017_train_minus5k",), "coco_2017_train_5k"
VOC_TRAIN, VOC_SEARCH = ("voc_2007_2012_trainval_minus5k",), "voc_2007_2012_trainval_5k"
VOC_SUBNET_TRAIN = ("voc_2007_trainval", "voc_2012_trainval")
SETTINGS = {
    "coco-small": (
        "GeneralizedRCNN",
        "small",
        COCO_TRAIN,
        COCO_SEARCH,
        ("coco_2017_train",),
        "coco_2017_val",
        80,
        90000,
        0.02,
    ),
    "coco-small-retinanet": (
        "RetinaNet",
        "small",
        COCO_TRAIN,
        COCO_SEARCH,
        ("coco_2017_train",),
        "coco_2017_val",
        80,
        90000,
        0.01,
    ),
    "voc-small": (
        "GeneralizedRCNN",
        "small",
        VOC_TRAIN,
        VOC_SEARCH,
        VOC_SUBNET_TRAIN,
        "voc_2007_test",
        20,
        22500,
        0.02,
    ),
    "voc-small-retinanet": (
        "RetinaNet",
        "small",
        VOC_TRAIN,
        VOC_SEARCH,
        VOC_SUBNET_TRAIN,
        "voc_2007_test",
        20,
        22500,
        0.01,
    ),
    "coco-large": (
        "GeneralizedRCNN",
        "large",
        COCO_TRAIN,
        COCO_SEARCH,
        ("coco_2017_train",),
        "coco_2017_val",
        80,
        90000,
        0.02,
    ),
    "coco-large-wide": (
        "GeneralizedRCNN",
        "large-wide",
        COCO_TRAIN,
        COCO_SEARCH,
        ("coco_2017_train",),
        "coco_2017_val",
        80,
        90000,
        0.02,
    ),
}


def load(config, *opts):
    return get_detnas_cfg(config_file(config), list(opts))


def num_classes(cfg):
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        return cfg.MODEL.RETINANET.NUM_CLASSES
    return cfg.MODEL.ROI_HEADS.NUM_CLASSES


# ---- recipes and presets ---------------------------------------------------------------------------


def test_every_setting_of_the_paper_has_a_preset():
    assert sorted(SETTINGS) == PAPER_PRESETS
    assert {"toy", "toy-retinanet"} <= set(PRESETS)
    for preset in PRESETS.values():
        assert sorted(preset) == [
            "cls_subnet",
            "cls_supernet",
            "det_subnet",
            "det_supernet",
            "search",
        ]
        assert all(os.path.isfile(config_file(c)) for c in preset.values())


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_setting_configs_hold_the_recipe(preset):
    meta_arch, space, train, search_split, subnet_train, test, classes, iters, lr = SETTINGS[preset]
    cfgs = {step: load(path) for step, path in PRESETS[preset].items()}
    supernet, search, subnet = cfgs["det_supernet"], cfgs["search"], cfgs["det_subnet"]
    for step, cfg in cfgs.items():
        assert cfg.MODEL.DETNAS.SPACE == space, step
    for cfg in (supernet, subnet):
        assert cfg.MODEL.META_ARCHITECTURE == meta_arch and num_classes(cfg) == classes
        assert cfg.MODEL.DETNAS.NORM == cfg.MODEL.FPN.NORM == "SyncBN"
        solver = cfg.SOLVER
        assert (solver.MAX_ITER, solver.IMS_PER_BATCH, solver.BASE_LR) == (iters, 16, lr)
        assert solver.STEPS == (iters * 2 // 3, iters * 8 // 9) and solver.WARMUP_ITERS == 500
        assert (cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN) == ((800,), 1333)
        assert cfg.DATASETS.TEST == (test,)
    assert "supernet" in supernet.MODEL.BACKBONE.NAME and "subnet" in subnet.MODEL.BACKBONE.NAME
    assert supernet.DETNAS.SAMPLER.NAME == "flops_uniform" and not supernet.TEST.PRECISE_BN.ENABLED
    assert supernet.DATASETS.TRAIN == train and subnet.DATASETS.TRAIN == subnet_train
    assert cfgs["cls_supernet"].MODEL.BACKBONE.NAME == "build_detnas_supernet_backbone"
    assert cfgs["cls_subnet"].MODEL.BACKBONE.NAME == "build_detnas_subnet_backbone"

    # step 3 scores the step-2 model on the held-out split, recalibrating BN on the training split
    assert search.MODEL == supernet.MODEL and search.DATASETS.TRAIN == supernet.DATASETS.TRAIN
    s = search.DETNAS.SEARCH
    assert s.EVAL_DATASET == search_split and s.EVAL_IMAGES == 5000
    assert search.DETNAS.BN_RECALIB.DATASET == train[0] and search.DETNAS.BN_RECALIB.IMAGES == 4000
    assert (s.POPULATION, s.GENERATIONS, s.TOPK, s.MAX_CANDIDATES) == (50, 20, 10, 1000)
    table = get_flops_table(space_from_cfg(search), int(s.INPUT_SIZE))
    assert table.min_flops < s.FLOPS_MIN < s.FLOPS_MAX < table.max_flops
    assert s.FLOPS_MAX == pytest.approx(1.1 * s.FLOPS_MIN)

    # the fitness: COCO bbox AP, or VOC AP50 for the VOC settings
    voc = preset.startswith("voc")
    for cfg in (supernet, search, subnet):
        task = get_task(cfg)
        assert task.fitness == ("bbox_AP50" if voc else "bbox_AP")
    assert ScoringSettings.from_cfg(search).fitness == ("bbox_AP50" if voc else "bbox_AP")
    for name in (search_split, train[0]):
        assert MetadataCatalog.get(name).evaluator_type == ("pascal_voc" if voc else "coco")


# ---- every full-scale model, one training step at a reduced input size ---------------------------------


def test_every_model_config_is_checked():
    configs = STEP["model_configs"]()
    assert len(configs) == 18 and set(configs) == {
        path for p in PAPER_PRESETS for step, path in PRESETS[p].items() if step != "search"
    }


# Fewer proposals into the box head of Faster R-CNN: its cost (512 per image through a 12544 x 1024 fc)
# does not shrink with the image.
FEWER_PROPOSALS = [
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "64",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "32",
]


@pytest.mark.parametrize("config", STEP["model_configs"]())
def test_full_scale_model_trains_one_step(config):
    """The model at its full width and depth, one image whose longest side is 256 px, 32 proposals into
    the box head (the real sizes: benchmarks/paper_configs.py): a finite loss, a non-zero stem gradient."""
    cfg = STEP["load_config"](config, *FEWER_PROPOSALS)
    size = STEP["input_size"](cfg, max_side=256)
    real = STEP["input_size"](cfg)
    assert max(size) == min(256, max(real)) and size[0] / size[1] == pytest.approx(
        real[0] / real[1], abs=0.01
    )
    model = STEP["build_training_model"](cfg)
    loss = STEP["training_step"](model, STEP["synthetic_batch"](cfg, size))
    assert math.isfinite(loss) and loss > 0


# ---- Pascal VOC --------------------------------------------------------------------------------------


def write_voc_folder(folder: Path, image_ids, split="trainval", seed=0, image_size=(96, 128)):
    """A VOC-layout folder (Annotations/, ImageSets/Main/<split>.txt, JPEGImages/) of random boxes: image
    i holds objects of classes 2i, 2i+1 and, "difficult", 2i+5 (mod 20). Returns
    {image_id: [(class name, box (1-based, inclusive), difficult)]}."""
    rng = random.Random(seed)
    height, width = image_size
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    truth = {}
    for i, image_id in enumerate(image_ids):
        root = ET.Element("annotation")
        size = ET.SubElement(root, "size")
        for key, value in (("width", width), ("height", height), ("depth", 3)):
            ET.SubElement(size, key).text = str(value)
        objects = []
        for k in range(3):
            x0, y0 = rng.randint(1, width // 2), rng.randint(1, height // 2)
            box = (x0, y0, rng.randint(x0 + 8, width), rng.randint(y0 + 8, height))
            name = CLASS_NAMES[(2 * i + (k if k < 2 else 5)) % len(CLASS_NAMES)]
            obj = ET.SubElement(root, "object")
            for key, value in (
                ("name", name),
                ("pose", "Unspecified"),
                ("truncated", 0),
                ("difficult", int(k == 2)),
            ):
                ET.SubElement(obj, key).text = str(value)
            bndbox = ET.SubElement(obj, "bndbox")
            for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
                ET.SubElement(bndbox, key).text = str(value)
            objects.append((name, box, k == 2))
        ET.ElementTree(root).write(folder / "Annotations" / f"{image_id}.xml")
        color = tuple(rng.randint(0, 255) for _ in range(3))
        Image.new("RGB", (width, height), color).save(folder / "JPEGImages" / f"{image_id}.jpg")
        truth[image_id] = objects
    (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(image_ids) + "\n")
    return truth


def predictions(dicts, truth, seed, perfect=False):
    """Model outputs for `dicts`: jittered copies of the true boxes (some of them twice) and random
    boxes, random scores (rounded, so that some tie); `perfect`: the true boxes, score 1."""
    rng = random.Random(seed)
    outputs = []
    for d in dicts:
        boxes, scores, classes = [], [], []
        for name, (x0, y0, x1, y1), _ in truth[d["image_id"]]:
            copies = 1 if perfect else rng.choice([0, 1, 1, 2])
            for _ in range(copies):
                jitter = 0 if perfect else 6
                boxes.append(
                    [
                        x0 - 1 + rng.uniform(-jitter, jitter),
                        y0 - 1 + rng.uniform(-jitter, jitter),
                        x1 + rng.uniform(-jitter, jitter),
                        y1 + rng.uniform(-jitter, jitter),
                    ]
                )
                scores.append(1.0 if perfect else round(rng.random(), 2))
                classes.append(CLASS_NAMES.index(name))
        for _ in range(0 if perfect else 3):
            x0, y0 = rng.uniform(0, 60), rng.uniform(0, 40)
            boxes.append([x0, y0, x0 + rng.uniform(5, 60), y0 + rng.uniform(5, 50)])
            scores.append(round(rng.random(), 2))
            classes.append(rng.randrange(len(CLASS_NAMES)))
        instances = Instances((d["height"], d["width"]))
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.tensor(scores)
        instances.pred_classes = torch.tensor(classes, dtype=torch.long)
        outputs.append({"instances": instances})
    return outputs


def run_evaluator(evaluator, dicts, outputs, **kwargs):
    evaluator.reset()
    for d, o in zip(dicts, outputs):
        evaluator.process([d], [o])
    return evaluator.evaluate(**kwargs)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    """Two VOC folders (2007-style and 2012-style ids, 10 images each) registered as Detectron2 splits,
    their union, and the union split in 6 held-out images and the rest."""
    root = tmp_path_factory.mktemp("voc")
    ids_2007 = [f"{i:06d}" for i in range(1, 11)]
    ids_2012 = [f"2008_{i:06d}" for i in range(1, 11)]
    truth = write_voc_folder(root / "VOC2007", ids_2007, seed=1)
    truth.update(write_voc_folder(root / "VOC2012", ids_2012, seed=2))
    tag = f"test_voc_{os.getpid()}"
    register_pascal_voc(f"{tag}_2007", str(root / "VOC2007"), "trainval", 2007)
    register_pascal_voc(f"{tag}_2012", str(root / "VOC2012"), "trainval", 2012)
    for year in (2007, 2012):
        MetadataCatalog.get(f"{tag}_{year}").evaluator_type = "pascal_voc"
    register_union(f"{tag}_union", (f"{tag}_2007", f"{tag}_2012"), year=2007)
    register_held_out_split(f"{tag}_union", 6, f"{tag}_rest", f"{tag}_held_out")
    return tag, truth


def test_detectron2_voc_loader_runs(voc_root):
    """Detectron2 v0.6 reads VOC image sets with `np.str`, gone from NumPy 1.24 (compat.py aliases it)."""
    tag, truth = voc_root
    dicts = DatasetCatalog.get(f"{tag}_2007")
    assert [d["image_id"] for d in dicts] == sorted(i for i in truth if "_" not in i)
    assert all(len(d["annotations"]) == 3 for d in dicts)


@pytest.mark.parametrize("year", [2007, 2012])
def test_voc_evaluator_gives_detectron2s_numbers(voc_root, year):
    tag, truth = voc_root
    name = f"{tag}_{year}"
    dicts = DatasetCatalog.get(name)
    outputs = predictions(dicts, truth, seed=year)
    ours = run_evaluator(PascalVOCEvaluator(name), dicts, outputs)
    theirs = run_evaluator(PascalVOCDetectionEvaluator(name), dicts, outputs)
    assert set(ours["bbox"]) == set(theirs["bbox"]) == {"AP", "AP50", "AP75"}
    for key, value in theirs["bbox"].items():
        assert ours["bbox"][key] == pytest.approx(value, abs=1e-9), key
    # the predictions are neither all wrong nor all right
    assert 0 < ours["bbox"]["AP75"] < ours["bbox"]["AP50"] < 100
    # only AP50, as the search asks
    only50 = run_evaluator(PascalVOCEvaluator(name, iou_thresholds=(50,)), dicts, outputs)
    assert only50 == {"bbox": {"AP50": pytest.approx(theirs["bbox"]["AP50"])}}


def test_voc_union_and_held_out_split(voc_root):
    tag, truth = voc_root
    union = DatasetCatalog.get(f"{tag}_union")
    held_out, rest = DatasetCatalog.get(f"{tag}_held_out"), DatasetCatalog.get(f"{tag}_rest")
    held_out_ids, rest_ids = {d["image_id"] for d in held_out}, {d["image_id"] for d in rest}
    assert (
        len(held_out) == 6
        and held_out_ids.isdisjoint(rest_ids)
        and held_out_ids | rest_ids == set(truth)
    )
    assert {("_" in i) for i in held_out_ids} == {True, False}  # images of both folders
    for name in (f"{tag}_union", f"{tag}_held_out"):
        meta = MetadataCatalog.get(name)
        assert (meta.evaluator_type, meta.year) == ("pascal_voc", 2007)
        assert meta.thing_classes == list(CLASS_NAMES)
        # no one folder: Detectron2's VOC evaluator cannot score it
        assert not hasattr(meta, "dirname")
    assert len(union) == 20

    # scored across both folders: perfect predictions give 100 on the held-out images
    evaluator = PascalVOCEvaluator(f"{tag}_held_out")
    perfect = predictions(held_out, truth, seed=0, perfect=True)
    assert run_evaluator(evaluator, held_out, perfect)["bbox"]["AP50"] == pytest.approx(100.0)
    # restricted to some images: the objects missed elsewhere do not count
    mixed = perfect[:3] + [{"instances": o["instances"][:0]} for o in perfect[3:]]
    first = [d["image_id"] for d in held_out[:3]]
    restricted = run_evaluator(evaluator, held_out, mixed, img_ids=first)
    assert restricted["bbox"]["AP50"] == pytest.approx(100.0)
    assert run_evaluator(evaluator, held_out, mixed)["bbox"]["AP50"] < 100.0
    with pytest.raises(ValueError, match="were not processed"):
        run_evaluator(evaluator, held_out[:2], mixed[:2], img_ids=first)


def test_voc_search_scores_ap50_on_the_held_out_split(voc_root, tmp_path):
    """The search's scorer on a VOC held-out split: PascalVOCEvaluator (AP50 only), fitness AP50."""
    tag, _ = voc_root
    cfg = load(
        "configs/Toy/search_det.yaml",
        "MODEL.ROI_HEADS.NUM_CLASSES",
        "20",
        "DETNAS.SEARCH.EVAL_DATASET",
        f"{tag}_held_out",
        "DETNAS.SEARCH.EVAL_BATCH_SIZE",
        "3",
        "DETNAS.BN_RECALIB.DATASET",
        f"{tag}_rest",
        "DETNAS.BN_RECALIB.IMAGES",
        "6",
        "DETNAS.BN_RECALIB.BATCH_SIZE",
        "3",
        "OUTPUT_DIR",
        str(tmp_path),
    )
    torch.manual_seed(0)
    weights = tmp_path / "supernet.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    cfg.MODEL.WEIGHTS = str(weights)
    scoring = ScoringSettings.from_cfg(cfg)
    assert (scoring.fitness, scoring.eval_dataset) == ("bbox_AP50", f"{tag}_held_out")
    scorer = build_scorer(cfg, scoring)
    assert isinstance(scorer.evaluator, PascalVOCEvaluator)
    assert scorer.evaluator._iou_thresholds == (50,)
    result = scorer.score(space_from_cfg(cfg).default_arch())
    assert 0.0 <= result["score"] <= 100.0 and result["images_eval"] == 6
    with pytest.raises(ValueError, match="FINALISTS.TOPK 0"):  # no per-image VOC AP to resample
        scorer.score(space_from_cfg(cfg).default_arch(), bootstrap=(10, 0))


# ---- the toy RetinaNet pipeline --------------------------------------------------------------------


@pytest.mark.slow
def test_toy_retinanet_pipeline_runs_all_six_steps(tmp_path):
    out = tmp_path / "pipeline"
    cmd = [
        sys.executable,
        str(ROOT / "tools/run_pipeline.py"),
        "--preset",
        "toy-retinanet",
        "--quick",
        "--output-dir",
        str(out),
    ]
    # the steps on one thread each: the other test process shares the cores
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=1500, env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [
        "1_cls_supernet",
        "2_det_supernet",
        "3_search",
        "4_cls_subnet",
        "5_det_subnet",
        "6_eval",
    ]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == steps
    for step in steps:
        assert (out / step / "step_done.json").exists(), step
    assert "RetinaNet" in (out / "2_det_supernet" / "config.yaml").read_text()
    summary = (out / "summary.md").read_text()
    assert "bbox AP" in summary and "searched subnet (small space" in summary
