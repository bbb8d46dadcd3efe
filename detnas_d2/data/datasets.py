"""Dataset registration: toy shapes (generated on first use) and ImageNet-layout folders.

Registered at `import detnas_d2` (nothing is read or generated until a dataset is loaded):
- toy_det_train, toy_det_val, toy_det_search, toy_det_search_large (512 held-out images, the first 64 those
  of toy_det_search: cheaper scoring protocols show their effect there), toy_det_train_large (1280 training
  images, the first 320 those of toy_det_train): COCO-format detection (toy.py);
  metadata thing_classes, thing_dataset_id_to_contiguous_id, evaluator_type "coco", json_file, image_root.
  Reading json_file or image_root generates the data if needed, so a COCOEvaluator can be built before
  any data loader.
- toy_cls_train, toy_cls_val, toy_cls_search: classification dicts
  {"file_name", "label", "height", "width"}; metadata classes (= thing_classes), image_root,
  evaluator_type "classification".
- imagenet_train, imagenet_val: `train/` and `val/` class folders under $DETNAS_IMAGENET
  (default $DETECTRON2_DATASETS/imagenet, else ./datasets/imagenet); labels follow the sorted class
  folders of train/. Dicts {"file_name", "label"} (sizes unknown without decoding 1.3M images).
  Metadata classes is set when the dataset is loaded.
COCO itself needs nothing here: use Detectron2's builtin names (coco_2017_train, coco_2017_val, ...)
with $DETECTRON2_DATASETS pointing at the folder that holds coco/.
- coco_2017_train_minus5k, coco_2017_train_5k: COCO train 2017 split in two by a seeded sample of 5000
  image ids, as the official DetNAS holds out 5k training images for the search: the supernet trains on
  the first, the search scores on the second (`register_held_out_split` makes such splits of any dataset).
Pascal VOC likewise uses Detectron2's builtin names (voc_2007_trainval, voc_2012_trainval, voc_2007_test, ...,
under $DETECTRON2_DATASETS/VOC2007 and VOC2012), plus, as the DetNAS paper splits VOC:
- voc_2007_2012_trainval: the 16,551 images of voc_2007_trainval and voc_2012_trainval (`register_union`);
  evaluator_type "pascal_voc", scored with VOC 2007's 11-point AP as the final test on voc_2007_test;
- voc_2007_2012_trainval_minus5k, voc_2007_2012_trainval_5k: it split in two by a seeded sample of 5000
  images: the supernet trains on the first, the search scores (AP50) on the second.

Own folders: `register_imagenet_layout("mydata_train", "/path/train")`; more toy seeds:
`register_toy_datasets(seed=1, prefix="toy1")` (toy1_det_train, ...).
"""

import difflib
import os
import random

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.datasets import load_coco_json
from detectron2.data.datasets.coco import convert_to_coco_json

from ..user_errors import UserError
from . import toy

__all__ = [
    "DatasetError",
    "IMAGE_EXTENSIONS",
    "imagenet_root",
    "load_imagenet_layout",
    "register_held_out_split",
    "register_imagenet_layout",
    "register_union",
    "register_toy_datasets",
    "require_registered",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DatasetError(UserError):
    """A dataset whose files are not where it is registered (the message names the folder to set)."""


def require_registered(names, key: str):
    """Every dataset of `names` (option `key`'s) is registered, else a DatasetError naming the closest."""
    for name in names:
        if name not in DatasetCatalog.list():
            close = difflib.get_close_matches(name, DatasetCatalog.list(), n=3)
            hint = (
                f"did you mean {', '.join(close)}?"
                if close
                else "register it first (Detectron2's guide)"
            )
            raise DatasetError(f"{key}: no dataset '{name}' is registered; {hint}")


# ---- Detectron2's builtin datasets ------------------------------------------------------------------


def _naming_the_root(name, load):
    """`load` (a builtin dataset's) with a missing file reported as a DatasetError naming the
    dataset, the file, DETECTRON2_DATASETS and the folder it must hold."""

    def loaded():
        try:
            return load()
        except FileNotFoundError as e:
            root = os.environ.get("DETECTRON2_DATASETS")
            where = root or f"unset: ./datasets, here {os.path.abspath('datasets')}"
            meta = MetadataCatalog.get(name)
            files = [meta.get(k) for k in ("json_file", "image_root", "dirname") if meta.get(k)]
            top = os.path.relpath(files[0], root or "datasets").split(os.sep)[0] if files else ""
            holding = f"the folder that holds {top}/" if top and top != ".." else "its folder"
            raise DatasetError(
                f"dataset '{name}': {e.filename or e} not found. Detectron2 reads its builtin datasets "
                f"under DETECTRON2_DATASETS ({where}): set it to {holding} "
                f"({' and '.join(files)}; layout: Detectron2's datasets/README.md)"
            ) from None

    return loaded


def _name_the_root_of_builtin_datasets():
    """Every dataset registered before this module's own (Detectron2's builtins)."""
    for name in DatasetCatalog.list():
        DatasetCatalog[name] = _naming_the_root(name, DatasetCatalog[name])


# ---- toy --------------------------------------------------------------------------------------------


class _ToyMetadata(Metadata):
    """Metadata of a toy split whose `json_file` / `image_root` generate the data on first access."""

    @property
    def _folder(self):
        return toy.ensure_toy_data(self.toy_kind, self.toy_seed, self.toy_split_sizes)

    @property
    def json_file(self):
        if self.toy_kind != "det":
            raise AttributeError(f"Classification dataset '{self.name}' has no json_file")
        return os.path.join(self._folder, "annotations", f"{self.toy_split}.json")

    @property
    def image_root(self):
        if self.toy_kind == "det":
            return os.path.join(self._folder, "images", self.toy_split)
        return os.path.join(self._folder, self.toy_split)


def _load_toy_detection(name):
    meta = MetadataCatalog.get(name)
    json_file = meta.json_file
    try:
        return load_coco_json(json_file, meta.image_root, name)
    except (ValueError, KeyError) as e:  # json.JSONDecodeError is a ValueError
        raise toy.ToyDataError(
            f"Toy annotation file {json_file} is unreadable ({e!r}). "
            f"Delete {os.path.dirname(os.path.dirname(json_file))} and it is generated again."
        ) from e


def _load_toy_classification(name):
    meta = MetadataCatalog.get(name)
    size = toy.CLS_IMAGE_SIZE
    return [
        {**record, "height": size, "width": size}
        for record in load_imagenet_layout(meta.image_root, classes=toy.CATEGORIES)
    ]


def register_toy_datasets(
    seed=0,
    prefix="toy",
    large_search_images=toy.DET_LARGE_SEARCH_IMAGES,
    large_train_images=toy.DET_LARGE_TRAIN_IMAGES,
):
    """Register <prefix>_det_{train,val,search}, <prefix>_cls_{train,val,search}, <prefix>_det_search_large
    and <prefix>_det_train_large (`large_search_images` held-out and `large_train_images` training images,
    each a folder of its own) for a seed."""
    splits = [("det", split, split, None) for split in toy.DET_SPLIT_SIZES]
    splits += [("cls", split, split, None) for split in toy.CLS_SPLIT_SIZES]
    splits.append(("det", "search_large", "search", {"search": int(large_search_images)}))
    splits.append(("det", "train_large", "train", {"train": int(large_train_images)}))
    for kind, suffix, split, sizes in splits:
        loader = _load_toy_detection if kind == "det" else _load_toy_classification
        name = f"{prefix}_{kind}_{suffix}"
        DatasetCatalog.register(name, lambda name=name, loader=loader: loader(name))
        meta = _ToyMetadata(
            name=name, toy_kind=kind, toy_split=split, toy_seed=int(seed), toy_split_sizes=sizes
        )
        meta.thing_classes = list(toy.CATEGORIES)
        if kind == "det":
            meta.thing_dataset_id_to_contiguous_id = {i + 1: i for i in range(len(toy.CATEGORIES))}
            meta.evaluator_type = "coco"
        else:
            meta.classes = list(toy.CATEGORIES)
            meta.evaluator_type = "classification"
        MetadataCatalog[name] = meta


# ---- ImageNet layout --------------------------------------------------------------------------------


def imagenet_root():
    """$DETNAS_IMAGENET, else $DETECTRON2_DATASETS/imagenet, else ./datasets/imagenet."""
    return os.environ.get("DETNAS_IMAGENET") or os.path.join(
        os.environ.get("DETECTRON2_DATASETS", "datasets"), "imagenet"
    )


def _class_folders(root, hint):
    if not os.path.isdir(root):
        raise DatasetError(f"Image folder {root} does not exist. {hint}")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise DatasetError(
            f"Image folder {root} has no class folders: expected {root}/<class>/<image>. {hint}"
        )
    return classes


def load_imagenet_layout(root, classes=None, hint=""):
    """Dicts {"file_name", "label"} of the images in `root`/<class>/, sorted by class then file name.

    Args:
        classes: the class list defining the labels (default: the sorted class folders of `root`);
            every class folder of `root` must be in it, a class may have no folder.
        hint: appended to error messages (how to point at the right folder).
    """
    folders = _class_folders(root, hint)
    classes = list(classes) if classes is not None else folders
    unknown = sorted(set(folders) - set(classes))
    if unknown:
        raise DatasetError(
            f"Class folders {unknown[:5]} of {root} are not among the {len(classes)} classes. {hint}"
        )
    records, empty = [], []
    for folder in folders:
        label = classes.index(folder)
        files = sorted(
            entry.name
            for entry in os.scandir(os.path.join(root, folder))
            if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not files:
            empty.append(os.path.join(root, folder))
        records.extend({"file_name": os.path.join(root, folder, f), "label": label} for f in files)
    if empty:
        raise DatasetError(
            f"{len(empty)} class folder(s) hold no images ({', '.join(IMAGE_EXTENSIONS)}), "
            f"e.g. {empty[0]}. {hint}"
        )
    return records


def register_imagenet_layout(name, root, class_root=None, hint=""):
    """Register an ImageNet-layout folder (`root`/<class>/<image>) as classification dataset `name`.

    `root` and `class_root` may be callables returning the path, resolved at load time.
    Labels follow the sorted class folders of `class_root` (default `root`): give a val split the
    train folder there, so that its labels match even if a class folder is missing.
    The metadata `classes` / `thing_classes` are set when the dataset is loaded (replaced if a later
    load finds other classes, e.g. after $DETNAS_IMAGENET changed).
    """

    def load():
        folder = root() if callable(root) else root
        label_root = (class_root() if callable(class_root) else class_root) or folder
        classes = _class_folders(label_root, hint)
        records = load_imagenet_layout(folder, classes, hint)
        meta = MetadataCatalog.get(name)
        if meta.get("classes") not in (None, classes):  # the folder changed since the last load
            MetadataCatalog.remove(name)
            meta = MetadataCatalog.get(name).set(evaluator_type="classification")
        meta.set(classes=classes, thing_classes=classes)
        return records

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(evaluator_type="classification")


def _register_imagenet():
    hint = (
        "Set $DETNAS_IMAGENET to the ImageNet folder holding train/ and val/, each with one folder per "
        "class (default $DETECTRON2_DATASETS/imagenet or ./datasets/imagenet)."
    )
    train = lambda: os.path.join(imagenet_root(), "train")  # noqa: E731
    register_imagenet_layout("imagenet_train", train, hint=hint)
    register_imagenet_layout(
        "imagenet_val", lambda: os.path.join(imagenet_root(), "val"), class_root=train, hint=hint
    )


# ---- held-out splits -------------------------------------------------------------------------------


class _HeldOutMetadata(Metadata):
    """Metadata of a held-out split whose `json_file` (COCO format, for COCOEvaluator) is written on
    first access, into $DETNAS_CACHE (default ~/.cache/detnas-d2)/held_out_splits/."""

    @property
    def json_file(self):
        cache = os.path.join(
            os.environ.get("DETNAS_CACHE", os.path.expanduser("~/.cache/detnas-d2")),
            "held_out_splits",
        )
        path = os.path.join(cache, f"{self.name}.json")
        if not os.path.exists(path):
            convert_to_coco_json(
                self.name, path
            )  # under a file lock; a file another process wrote is kept
        return path


def _held_out_split(base, num_images, seed, held_out):
    dicts = DatasetCatalog.get(base)
    if not 0 < num_images < len(dicts):
        raise ValueError(f"cannot hold out {num_images} of the {len(dicts)} images of '{base}'")
    chosen = set(random.Random(seed).sample(sorted(d["image_id"] for d in dicts), num_images))
    return [d for d in dicts if (d["image_id"] in chosen) == held_out]


def register_held_out_split(base, num_images, rest_name, held_out_name, seed=0):
    """Register `held_out_name` (a seeded sample of `num_images` images of the detection dataset `base`)
    and `rest_name` (the other images of `base`). The two are disjoint and together make `base`."""
    for name, held_out in ((rest_name, False), (held_out_name, True)):
        DatasetCatalog.register(name, lambda h=held_out: _held_out_split(base, num_images, seed, h))
        meta = _HeldOutMetadata(name=name)
        for key, value in MetadataCatalog.get(base).as_dict().items():
            if key not in ("name", "json_file"):
                setattr(meta, key, value)
        MetadataCatalog[name] = meta


# ---- unions -----------------------------------------------------------------------------------------


def _union(bases):
    dicts = [d for base in bases for d in DatasetCatalog.get(base)]
    ids = [d["image_id"] for d in dicts]
    if len(set(ids)) != len(ids):
        raise ValueError(f"datasets {list(bases)} share image ids: their union would mix up images")
    return dicts


def register_union(name, bases, **metadata):
    """Register `name`: the images of the detection datasets `bases`, in that order (their image ids must
    differ). Metadata: the first base's, without what names one folder (dirname, split, json_file),
    updated with `metadata`."""
    bases = tuple(bases)
    DatasetCatalog.register(name, lambda: _union(bases))
    meta = MetadataCatalog.get(name)
    for key, value in MetadataCatalog.get(bases[0]).as_dict().items():
        if key not in ("name", "dirname", "split", "json_file"):
            meta.set(**{key: value})
    meta.set(**metadata)


_name_the_root_of_builtin_datasets()
register_toy_datasets()
_register_imagenet()
register_held_out_split("coco_2017_train", 5000, "coco_2017_train_minus5k", "coco_2017_train_5k")
# year 2007: the search's AP50 is VOC 2007's 11-point AP, as the test on voc_2007_test
register_union("voc_2007_2012_trainval", ("voc_2007_trainval", "voc_2012_trainval"), year=2007)
register_held_out_split(
    "voc_2007_2012_trainval", 5000, "voc_2007_2012_trainval_minus5k", "voc_2007_2012_trainval_5k"
)
