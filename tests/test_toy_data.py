"""Toy datasets (generation, determinism, cache integrity, registration) and ImageNet-layout folders."""

import contextlib
import io
import itertools
import json
import multiprocessing
import os
import re
import shutil

import detnas_d2  # noqa: F401  (registers the datasets)

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from PIL import Image
from pycocotools.coco import COCO

from detnas_d2.data import toy
from detnas_d2.data.datasets import DatasetError, load_imagenet_layout, register_imagenet_layout

SMALL_DET = {"train": 24, "val": 8, "search": 8}
SMALL_CLS = {"train": 3, "val": 2, "search": 2}


def _files(folder):
    """{relative path: bytes} of every file under folder."""
    found = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


def _coco(json_file):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(json_file)


def _iou(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return iw * ih / (aw * ah + bw * bh - iw * ih)


@pytest.fixture(scope="module")
def small_det(tmp_path_factory):
    return toy.ensure_toy_data("det", 0, SMALL_DET, root=str(tmp_path_factory.mktemp("toy")))


@pytest.fixture(scope="module")
def small_cls(tmp_path_factory):
    return toy.ensure_toy_data("cls", 0, SMALL_CLS, root=str(tmp_path_factory.mktemp("toy")))


@pytest.fixture(scope="module")
def registered_root(tmp_path_factory):
    """A fresh DETNAS_TOY_ROOT for the registered (default-size) toy datasets."""
    root = str(tmp_path_factory.mktemp("toy_root"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DETNAS_TOY_ROOT", root)
        yield root


# ---- detection -------------------------------------------------------------------------------------


def test_detection_is_valid_coco(small_det):
    assert os.path.basename(small_det) == "det-v1-seed0-train24-val8-search8"
    for split, count in SMALL_DET.items():
        coco = _coco(os.path.join(small_det, "annotations", f"{split}.json"))
        cats = coco.loadCats(coco.getCatIds())
        assert [(c["id"], c["name"]) for c in cats] == list(enumerate(toy.CATEGORIES, start=1))
        assert len(coco.getImgIds()) == count
        for img in coco.loadImgs(coco.getImgIds()):
            with Image.open(os.path.join(small_det, "images", split, img["file_name"])) as im:
                assert im.size == (img["width"], img["height"]) == (128, 128)
                assert im.mode == "RGB"
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            assert 1 <= len(anns) <= 6
            for ann in anns:
                x, y, w, h = ann["bbox"]
                assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]
                assert w >= 4 and h >= 4
                assert 0 < ann["area"] <= w * h
                assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= len(toy.CATEGORIES)


def test_detection_has_overlaps_small_objects_and_all_categories(small_det):
    coco = _coco(os.path.join(small_det, "annotations", "train.json"))
    anns = coco.loadAnns(coco.getAnnIds())
    assert {a["category_id"] for a in anns} == set(range(1, len(toy.CATEGORIES) + 1))
    assert sum(max(a["bbox"][2:]) <= 16 for a in anns) >= 0.1 * len(anns)  # small objects
    assert sum(max(a["bbox"][2:]) >= 40 for a in anns) >= 0.1 * len(anns)  # large objects
    overlapping = [
        img
        for img in coco.getImgIds()
        if any(
            _iou(a["bbox"], b["bbox"]) > 0.05
            for a, b in itertools.combinations(coco.loadAnns(coco.getAnnIds(imgIds=img)), 2)
        )
    ]
    assert len(overlapping) >= 3
    # a partly hidden object has fewer visible pixels than its box would hold if it were a rectangle
    assert any(a["area"] < 0.5 * a["bbox"][2] * a["bbox"][3] for a in anns)


def test_boxes_are_on_the_shapes(small_det):
    """In single-object images, most of the box differs in colour from the background ring around it."""
    coco = _coco(os.path.join(small_det, "annotations", "val.json"))
    single = [
        img for img in coco.loadImgs(coco.getImgIds()) if len(coco.getAnnIds(imgIds=img["id"])) == 1
    ]
    assert len(single) >= 2
    for img in single:
        (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        path = os.path.join(small_det, "images", "val", img["file_name"])
        pixels = np.asarray(Image.open(path)).astype(np.float32)
        x, y, w, h = (int(v) for v in ann["bbox"])
        ring = np.zeros(pixels.shape[:2], bool)
        ring[max(y - 3, 0) : y + h + 3, max(x - 3, 0) : x + w + 3] = True
        ring[y : y + h, x : x + w] = False
        distance = np.abs(pixels[y : y + h, x : x + w] - pixels[ring].mean(axis=0)).sum(axis=-1)
        # the shape's colour was chosen far from the background under it
        assert (distance > 60).mean() > 0.4, (path, ann)


@pytest.mark.parametrize(
    "category,area",
    [
        ("ellipse", np.pi / 4),
        ("rectangle", 1.0),
        ("triangle", 3 * np.sqrt(3) / 16),  # equilateral, circumradius 1, over the 2x2 square
        ("cross", (2 * 0.3 - 0.3**2)),  # arms of half-width 0.3
    ],
)
def test_shape_rasteriser_areas(category, area):
    grid = (np.arange(400, dtype=np.float32) + 0.5) / 200 - 1
    v, u = np.meshgrid(grid, grid, indexing="ij")
    assert toy._inside(category, u, v, {"arm": 0.3, "inner": 0.4}).mean() == pytest.approx(
        area, abs=0.01
    )


def test_star_is_a_five_pointed_star():
    grid = (np.arange(400, dtype=np.float32) + 0.5) / 200 - 1
    v, u = np.meshgrid(grid, grid, indexing="ij")
    star = toy._inside("star", u, v, {"inner": 0.4})
    angles = -np.pi / 2 + 2 * np.pi * np.arange(5) / 5
    tips = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 0.95
    valleys = np.stack([np.cos(angles + np.pi / 5), np.sin(angles + np.pi / 5)], axis=1) * 0.6
    assert toy._inside("star", tips[:, 0], tips[:, 1], {"inner": 0.4}).all()
    assert not toy._inside("star", valleys[:, 0], valleys[:, 1], {"inner": 0.4}).any()
    assert star[200, 200] and 0.15 < star.mean() < 0.35


def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path, small_det):
    again = toy.ensure_toy_data("det", 0, SMALL_DET, root=str(tmp_path / "a"))
    first, second = _files(small_det), _files(again)
    assert sorted(first) == sorted(second) and len(first) == sum(SMALL_DET.values()) + 4
    assert all(first[name] == second[name] for name in first)

    other = _files(toy.ensure_toy_data("det", 1, SMALL_DET, root=str(tmp_path / "a")))
    assert os.path.isdir(tmp_path / "a" / "det-v1-seed1-train24-val8-search8")
    images = [name for name in first if name.endswith(".jpg")]
    assert sum(first[name] != other[name] for name in images) == len(images)
    assert first["annotations/train.json"] != other["annotations/train.json"]


def test_splits_are_disjoint(small_det):
    digests = {}
    for name, data in _files(small_det).items():
        if name.endswith(".jpg"):
            digests.setdefault(data, set()).add(name.split("/")[1])
    assert all(len(splits) == 1 for splits in digests.values())


def test_split_sizes_are_validated(tmp_path):
    with pytest.raises(ValueError, match="split_sizes"):
        toy.ensure_toy_data("det", 0, {"train": 2, "val": 0, "search": 1}, root=str(tmp_path))
    with pytest.raises(
        ValueError, match=r"some of \['search', 'train', 'val'\], got \{'test': 4\}"
    ):
        toy.ensure_toy_data("det", 0, {"test": 4}, root=str(tmp_path))


def test_a_larger_search_split_extends_the_default_one(tmp_path, small_det):
    """A dataset of the search split only, larger: a folder of its own whose first images (and their
    annotations) are byte for byte those of the search split of the same seed."""
    larger = toy.ensure_toy_data("det", 0, {"search": 12}, root=str(tmp_path))
    assert os.path.basename(larger) == "det-v1-seed0-search12"
    files, small = _files(larger), _files(small_det)
    assert sorted(f for f in files if f.endswith(".jpg")) == [
        f"images/search/{i:06d}.jpg" for i in range(1, 13)
    ]
    assert all(files[f] == small[f] for f in small if f.startswith("images/search/"))
    coco, first = (
        json.loads(files["annotations/search.json"]),
        json.loads(small["annotations/search.json"]),
    )
    assert coco["images"][:8] == first["images"] and len(coco["images"]) == 12
    assert coco["annotations"][: len(first["annotations"])] == first["annotations"]
    with pytest.raises(ValueError, match="kind"):
        toy.toy_dir("seg", 0)


def _generate_in(root):
    return toy.ensure_toy_data("det", 3, {"train": 6, "val": 2, "search": 2}, root=root)


def test_concurrent_generation_gives_one_complete_folder(tmp_path):
    with multiprocessing.get_context("fork").Pool(2) as pool:
        paths = pool.map(_generate_in, [str(tmp_path)] * 2)
    assert paths[0] == paths[1]
    toy.verify_toy_dir(paths[0], "det", 3, {"train": 6, "val": 2, "search": 2})
    assert sorted(os.listdir(tmp_path)) == sorted(
        [os.path.basename(paths[0]), os.path.basename(paths[0]) + ".lock"]
    )  # no temporary folders left


def test_damaged_cache_is_reported(tmp_path, small_det):
    damaged = str(tmp_path / os.path.basename(small_det))
    shutil.copytree(small_det, damaged)
    image = os.path.join(damaged, "images", "val", "000002.jpg")
    os.remove(image)
    message = f"{re.escape(image)} is missing.*Delete {re.escape(damaged)}"
    with pytest.raises(toy.ToyDataError, match=message):
        toy.ensure_toy_data("det", 0, SMALL_DET, root=str(tmp_path))

    shutil.rmtree(damaged)
    shutil.copytree(small_det, damaged)
    json_file = os.path.join(damaged, "annotations", "val.json")
    with open(json_file, "ab") as f:
        f.write(b"\n")
    with pytest.raises(
        ValueError, match=f"{re.escape(json_file)} has .* bytes.*Delete {re.escape(damaged)}"
    ):
        toy.ensure_toy_data("det", 0, SMALL_DET, root=str(tmp_path))

    manifest = os.path.join(damaged, "manifest.json")
    with open(manifest, "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match=f"{re.escape(manifest)} is unreadable"):
        toy.ensure_toy_data("det", 0, SMALL_DET, root=str(tmp_path))
    os.remove(manifest)
    with pytest.raises(toy.ToyDataError, match=f"{re.escape(damaged)} has no manifest.json"):
        toy.ensure_toy_data("det", 0, SMALL_DET, root=str(tmp_path))

    other_seed = str(tmp_path / "det-v1-seed5-train24-val8-search8")
    shutil.copytree(small_det, other_seed)
    with pytest.raises(ValueError, match="seed=0, expected 5"):
        toy.ensure_toy_data("det", 5, SMALL_DET, root=str(tmp_path))


# ---- classification --------------------------------------------------------------------------------


def test_classification_folders(small_cls):
    for split, per_class in SMALL_CLS.items():
        assert sorted(os.listdir(os.path.join(small_cls, split))) == sorted(toy.CATEGORIES)
        records = load_imagenet_layout(os.path.join(small_cls, split), classes=toy.CATEGORIES)
        assert len(records) == per_class * len(toy.CATEGORIES)
        for record in records:
            folder = os.path.basename(os.path.dirname(record["file_name"]))
            assert folder == toy.CATEGORIES[record["label"]]
            with Image.open(record["file_name"]) as im:
                assert im.size == (64, 64) and im.mode == "RGB"


def test_generator_version_is_per_kind(tmp_path, small_cls):
    assert (
        os.path.basename(small_cls)
        == f"cls-v{toy.GENERATOR_VERSIONS['cls']}-seed0-train3-val2-search2"
    )
    assert toy.GENERATOR_VERSIONS["det"] != toy.GENERATOR_VERSIONS["cls"]  # cls changed alone
    stale = str(tmp_path / os.path.basename(small_cls))
    shutil.copytree(small_cls, stale)
    manifest_file = os.path.join(stale, "manifest.json")
    with open(manifest_file) as f:
        manifest = json.load(f)
    manifest["version"] = toy.GENERATOR_VERSIONS["det"]
    with open(manifest_file, "w") as f:
        json.dump(manifest, f)
    expected = f"version={toy.GENERATOR_VERSIONS['det']}, expected {toy.GENERATOR_VERSIONS['cls']}"
    with pytest.raises(ValueError, match=expected):
        toy.verify_toy_dir(stale)  # the kind comes from the manifest
    with pytest.raises(ValueError, match=expected):
        toy.ensure_toy_data("cls", 0, SMALL_CLS, root=str(tmp_path))


# ---- registration ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_registered_toy_detection(registered_root):
    # the metadata's json_file generates the data, so an evaluator can come before any loader
    evaluator = COCOEvaluator("toy_det_search", output_dir=None, use_fast_impl=False)
    assert len(evaluator._coco_api.getImgIds()) == toy.DET_SPLIT_SIZES["search"]
    for split, count in toy.DET_SPLIT_SIZES.items():
        name = f"toy_det_{split}"
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "coco" and meta.thing_classes == list(toy.CATEGORIES)
        folder = os.path.join(registered_root, "det-v1-seed0")
        assert meta.json_file == os.path.join(folder, "annotations", f"{split}.json")
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == count
        for d in dicts:
            assert d["file_name"].startswith(meta.image_root + os.sep) and os.path.isfile(
                d["file_name"]
            )
            assert all(0 <= a["category_id"] < len(toy.CATEGORIES) for a in d["annotations"])
    val = {os.path.basename(d["file_name"]) for d in DatasetCatalog.get("toy_det_val")}
    assert len(val) == toy.DET_SPLIT_SIZES["val"]
    large = DatasetCatalog.get("toy_det_search_large")
    assert len(large) == toy.DET_LARGE_SEARCH_IMAGES
    assert os.path.dirname(MetadataCatalog.get("toy_det_search_large").json_file) == os.path.join(
        registered_root, f"det-v1-seed0-search{toy.DET_LARGE_SEARCH_IMAGES}", "annotations"
    )
    assert os.listdir(folder + f"-search{toy.DET_LARGE_SEARCH_IMAGES}/images") == ["search"]
    large_train = DatasetCatalog.get("toy_det_train_large")
    assert len(large_train) == toy.DET_LARGE_TRAIN_IMAGES
    assert os.listdir(folder + f"-train{toy.DET_LARGE_TRAIN_IMAGES}/images") == ["train"]
    # toy_det_train's images come first, box for box; the rest are new
    train = [
        (os.path.basename(d["file_name"]), d["annotations"])
        for d in DatasetCatalog.get("toy_det_train")
    ]
    large_train = [(os.path.basename(d["file_name"]), d["annotations"]) for d in large_train]
    assert large_train[: len(train)] == train
    assert all(d[1] not in [t[1] for t in train] for d in large_train[len(train) : len(train) + 8])


def test_registered_toy_classification(registered_root):
    for split, per_class in toy.CLS_SPLIT_SIZES.items():
        name = f"toy_cls_{split}"
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == per_class * len(toy.CATEGORIES)
        assert {d["label"] for d in dicts} == set(range(len(toy.CATEGORIES)))
        assert all(d["height"] == d["width"] == 64 for d in dicts)
        folder = os.path.join(registered_root, "cls-v2-seed0", split)
        assert all(d["file_name"].startswith(folder + os.sep) for d in dicts)
        meta = MetadataCatalog.get(name)
        assert meta.classes == meta.thing_classes == list(toy.CATEGORIES)


def test_corrupt_registered_json_is_reported(tmp_path, monkeypatch, registered_root):
    DatasetCatalog.get("toy_det_val")  # generated in registered_root
    shutil.copytree(os.path.join(registered_root, "det-v1-seed0"), tmp_path / "det-v1-seed0")
    json_file = str(tmp_path / "det-v1-seed0" / "annotations" / "val.json")
    size = os.path.getsize(json_file)
    with open(json_file, "wb") as f:
        f.write(b"x" * size)  # same size: passes the manifest check, fails to parse
    monkeypatch.setenv("DETNAS_TOY_ROOT", str(tmp_path))
    message = f"{re.escape(json_file)} is unreadable.*Delete {re.escape(str(tmp_path))}"
    with pytest.raises(ValueError, match=message):
        DatasetCatalog.get("toy_det_val")


# ---- ImageNet layout -------------------------------------------------------------------------------


def _write_image(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)


def test_imagenet_registration(tmp_path, monkeypatch):
    for path in ["train/n01/a.JPEG", "train/n01/b.jpg", "train/n02/c.png", "val/n02/d.jpg"]:
        _write_image(str(tmp_path / path))
    (tmp_path / "train/n02/notes.txt").write_text("not an image")
    monkeypatch.setenv("DETNAS_IMAGENET", str(tmp_path))
    train = DatasetCatalog.get("imagenet_train")
    assert [(os.path.relpath(d["file_name"], tmp_path), d["label"]) for d in train] == [
        ("train/n01/a.JPEG", 0),
        ("train/n01/b.jpg", 0),
        ("train/n02/c.png", 1),
    ]
    # val labels follow train's class folders, though val has no n01
    assert [d["label"] for d in DatasetCatalog.get("imagenet_val")] == [1]
    assert MetadataCatalog.get("imagenet_val").classes == ["n01", "n02"]
    assert MetadataCatalog.get("imagenet_val").evaluator_type == "classification"


def test_imagenet_errors_name_the_path(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("DETNAS_IMAGENET", str(missing))
    message = f"{re.escape(str(missing / 'train'))} does not exist.*DETNAS_IMAGENET"
    with pytest.raises(DatasetError, match=message):
        DatasetCatalog.get("imagenet_train")

    _write_image(str(tmp_path / "train" / "n01" / "a.jpg"))
    _write_image(str(tmp_path / "val" / "a.jpg"))  # raw ImageNet val: no class folders
    monkeypatch.setenv("DETNAS_IMAGENET", str(tmp_path))
    with pytest.raises(
        ValueError, match=f"{re.escape(str(tmp_path / 'val'))} has no class folders"
    ):
        DatasetCatalog.get("imagenet_val")

    (tmp_path / "val" / "n99").mkdir()
    _write_image(str(tmp_path / "val" / "n99" / "x.jpg"))
    with pytest.raises(ValueError, match=r"\['n99'\] of .* are not among the 1 classes"):
        DatasetCatalog.get("imagenet_val")

    (tmp_path / "train" / "n02").mkdir()
    register_imagenet_layout("test_own_folder", str(tmp_path / "train"))
    try:
        with pytest.raises(ValueError, match=f"e.g. {re.escape(str(tmp_path / 'train' / 'n02'))}"):
            DatasetCatalog.get("test_own_folder")
    finally:
        DatasetCatalog.remove("test_own_folder")
        MetadataCatalog.remove("test_own_folder")


def test_held_out_split_is_a_disjoint_seeded_partition(tmp_path, monkeypatch):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import COCOEvaluator
    from pycocotools.coco import COCO

    from detnas_d2.data.datasets import register_held_out_split

    monkeypatch.setenv("DETNAS_CACHE", str(tmp_path))
    register_held_out_split("toy_det_val", 20, "test_val_rest", "test_val_20", seed=3)
    rest, held = DatasetCatalog.get("test_val_rest"), DatasetCatalog.get("test_val_20")
    base_ids = {d["image_id"] for d in DatasetCatalog.get("toy_det_val")}
    rest_ids, held_ids = {d["image_id"] for d in rest}, {d["image_id"] for d in held}
    assert len(held_ids) == 20 and not rest_ids & held_ids and rest_ids | held_ids == base_ids
    # the same seed gives the same split; the ground truth file holds exactly the held-out images
    assert {d["image_id"] for d in DatasetCatalog.get("test_val_20")} == held_ids
    assert set(COCO(MetadataCatalog.get("test_val_20").json_file).getImgIds()) == held_ids
    assert (
        MetadataCatalog.get("test_val_20").thing_classes
        == MetadataCatalog.get("toy_det_val").thing_classes
    )
    COCOEvaluator(
        "test_val_20", output_dir=None, use_fast_impl=False
    )  # builds from the written json

    register_held_out_split("toy_det_val", 200, "test_val_rest_all", "test_val_all")
    with pytest.raises(ValueError, match="cannot hold out 200 of the 80 images of 'toy_det_val'"):
        DatasetCatalog.get("test_val_all")
