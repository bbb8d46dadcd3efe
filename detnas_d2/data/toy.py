"""Toy shape datasets, generated deterministically from a seed on first use.

Small stand-ins for COCO and ImageNet so that every step of the pipeline runs on a CPU in seconds.

- Detection (COCO json + JPEGs): 128x128 images, 1 to 6 shapes each, category ids 1..5 in the order
  of CATEGORIES; textured backgrounds (gradient, smooth blotches, sometimes hard stripes, pixel noise);
  shapes of varied size (about a quarter small, 10-20 px), aspect, rotation, colour and shading,
  some truncated by the border, some overlapping (each stays at least 60% visible).
  bbox: the tight box of the whole shape inside the image; area: its visible pixels.
- Classification (ImageNet layout): 64x64 images, one shape each, the shapes as classes; 300 / 40 / 40
  images per class (train / val / search). Large (radius 13-22 px), near-upright (tilt <= 0.35 rad)
  shapes in random light colours on dark, faded (low-contrast texture) backgrounds: no colour is tied to
  a class, and the toy subnet learns the outlines in a few hundred CPU iterations.

Cache (root: $DETNAS_TOY_ROOT, default ~/.cache/detnas-d2/toy), one folder per kind, generator version
(per kind) and seed (and split sizes, when not the defaults), so different seeds or versions never
collide:
    det-v1-seed0/manifest.json
    det-v1-seed0/annotations/{train,val,search}.json
    det-v1-seed0/images/{train,val,search}/000001.jpg
    det-v1-seed0-search512/...  (a dataset of some splits only: the larger search split)
    det-v1-seed0-train1280/...  (the larger training split)
    cls-v2-seed0/manifest.json
    cls-v2-seed0/{train,val,search}/<class>/0000.jpg
A folder only ever appears complete: it is written to a temporary sibling and renamed into place,
under a file lock so that concurrent processes (DDP ranks) generate it once. Its manifest lists every
file and its size; a damaged folder raises an error naming it (delete it and it is generated again).
The same seed gives byte-identical files (every image has its own RNG stream from (seed, split, index)).
"""

import io
import json
import logging
import os
import shutil
import tempfile
import time

import numpy as np
from iopath.common.file_io import file_lock
from PIL import Image

from ..user_errors import UserError

__all__ = [
    "CATEGORIES",
    "ToyDataError",
    "GENERATOR_VERSIONS",
    "DET_SPLIT_SIZES",
    "DET_LARGE_SEARCH_IMAGES",
    "DET_LARGE_TRAIN_IMAGES",
    "CLS_SPLIT_SIZES",
    "toy_root",
    "toy_dir",
    "ensure_toy_data",
    "generate_toy_data",
    "verify_toy_dir",
]

logger = logging.getLogger(__name__)

# Generator version per kind: bump a kind's whenever its generated data changes, so that old caches
# are not reused. cls v2: large light shapes on dark low-contrast backgrounds (v1, small shapes of any
# colour on busy textures, stayed near chance in a toy training budget).
GENERATOR_VERSIONS = {"det": 1, "cls": 2}
CATEGORIES = ("ellipse", "rectangle", "triangle", "cross", "star")
DET_IMAGE_SIZE = 128
CLS_IMAGE_SIZE = 64
# Detection: images per split. ~1100 training boxes (~220 per category) train a narrow detector far
# above chance in a few hundred CPU iterations; 80 val images (~280 boxes) give a stable AP; the
# held-out search split is kept small because search scores every candidate on it.
DET_SPLIT_SIZES = {"train": 320, "val": 80, "search": 64}
# A larger detection search split (toy_det_search_large, a dataset of its own), on which cheaper scoring
# protocols can show their effect; its first 64 images are those of toy_det_search.
DET_LARGE_SEARCH_IMAGES = 512
# A larger detection training split (toy_det_train_large, a dataset of its own; its first 320 images are
# toy_det_train's): 320 images are seen ~37 times in the toy step-5 schedule, and what a detector memorises
# of them varies from seed to seed more than these archs differ (studies/rank_audit_toy).
DET_LARGE_TRAIN_IMAGES = 1280
# Classification: images per class and split (1500 / 200 / 200 images in all); 200 val images
# measure top-1 to about +-3 points.
CLS_SPLIT_SIZES = {"train": 300, "val": 40, "search": 40}
JPEG_QUALITY = 90
_SPLIT_IDS = {"train": 0, "val": 1, "search": 2}
_KIND_IDS = {"det": 0, "cls": 1}
_MANIFEST = "manifest.json"
_VERIFIED = set()  # folders of this process's ensure_toy_data calls that passed verify_toy_dir


class ToyDataError(UserError):
    """A toy dataset folder that is damaged (delete it: it is generated again) or cannot be written."""


def toy_root():
    """The cache folder of the toy datasets: $DETNAS_TOY_ROOT, default ~/.cache/detnas-d2/toy."""
    return os.path.expanduser(os.environ.get("DETNAS_TOY_ROOT") or "~/.cache/detnas-d2/toy")


def _default_sizes(kind):
    if kind not in _KIND_IDS:
        raise ValueError(f"Unknown toy dataset kind {kind!r}; expected one of {sorted(_KIND_IDS)}")
    return DET_SPLIT_SIZES if kind == "det" else CLS_SPLIT_SIZES


def _check_sizes(kind, split_sizes):
    """The split sizes of a dataset: all the kind's default splits, or the ones `split_sizes` names."""
    default = _default_sizes(kind)
    if split_sizes is None:
        return dict(default)
    if (
        not split_sizes
        or not set(split_sizes) <= set(default)
        or any(not isinstance(n, int) or n < 1 for n in split_sizes.values())
    ):
        raise ValueError(
            f"split_sizes for toy {kind!r} must give a positive int for each of the splits it makes, some of "
            f"{sorted(default)}, got {split_sizes}"
        )
    return {split: split_sizes[split] for split in default if split in split_sizes}


def toy_dir(kind, seed=0, split_sizes=None, root=None):
    """The folder of one toy dataset ("det" or "cls") inside `root` (default: toy_root())."""
    sizes = _check_sizes(kind, split_sizes)
    name = f"{kind}-v{GENERATOR_VERSIONS[kind]}-seed{int(seed)}"
    if sizes != _default_sizes(kind):
        name += "-" + "-".join(f"{split}{n}" for split, n in sizes.items())
    return os.path.join(root or toy_root(), name)


def ensure_toy_data(kind, seed=0, split_sizes=None, root=None):
    """Return the folder of a toy dataset, generating it first if it does not exist yet.

    Safe to call from several processes at once: one generates, the others wait on the lock.
    The folder is checked against its manifest once per process.
    """
    path = toy_dir(kind, seed, split_sizes, root)
    if path in _VERIFIED and os.path.isdir(path):
        return path
    if not os.path.isdir(path):
        try:
            with file_lock(path):
                if not os.path.isdir(path):
                    _generate_atomically(kind, path, seed, _check_sizes(kind, split_sizes))
        except OSError as e:
            where = " ($DETNAS_TOY_ROOT)" if os.environ.get("DETNAS_TOY_ROOT") else " (default)"
            where = "" if root else where
            raise ToyDataError(
                f"cannot write the toy dataset to {os.path.dirname(path)}{where}: {e.strerror or e}; "
                "give a folder this user can write (DETNAS_TOY_ROOT sets it)"
            ) from None
    verify_toy_dir(path, kind, seed, split_sizes)
    _VERIFIED.add(path)
    return path


def _generate_atomically(kind, path, seed, split_sizes):
    parent, name = os.path.split(path)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    start = time.perf_counter()
    logger.info(f"Generating toy {kind} dataset (seed {seed}, {split_sizes}) in {path} ...")
    try:
        generate_toy_data(kind, tmp, seed, split_sizes)
        os.chmod(tmp, 0o755)
        try:
            os.replace(tmp, path)
        except OSError:
            if not os.path.isdir(path):
                raise
            # another process (where file locks do not work, e.g. some NFS) finished first: use its folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
    logger.info(f"Generated toy {kind} dataset in {time.perf_counter() - start:.1f}s: {path}")


def generate_toy_data(kind, out_dir, seed=0, split_sizes=None):
    """Write a toy dataset and its manifest into `out_dir` (not atomic: see ensure_toy_data)."""
    split_sizes = _check_sizes(kind, split_sizes)
    files = {}
    for split, count in split_sizes.items():
        if kind == "det":
            files.update(_detection_split_files(seed, split, count))
        else:
            files.update(_classification_split_files(seed, split, count))
    manifest = {
        "generator": __name__,
        "version": GENERATOR_VERSIONS[kind],
        "kind": kind,
        "seed": int(seed),
        "split_sizes": split_sizes,
        "categories": list(CATEGORIES),
        "files": {rel: len(data) for rel, data in sorted(files.items())},
    }
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(out_dir, rel)), exist_ok=True)
        with open(os.path.join(out_dir, rel), "wb") as f:
            f.write(data)
    with open(os.path.join(out_dir, _MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)


def verify_toy_dir(path, kind=None, seed=None, split_sizes=None):
    """Check a toy dataset folder against its manifest; raise an error naming what is wrong."""
    fix = f"Delete {path} and it is generated again on next use."
    manifest_file = os.path.join(path, _MANIFEST)
    if not os.path.isfile(manifest_file):
        raise ToyDataError(f"Toy dataset folder {path} has no {_MANIFEST}. {fix}")
    try:
        with open(manifest_file) as f:
            manifest = json.load(f)
        listed = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as e:
        raise ToyDataError(
            f"Toy dataset manifest {manifest_file} is unreadable ({e}). {fix}"
        ) from e
    expected_kind = manifest.get("kind") if kind is None else kind
    if expected_kind not in GENERATOR_VERSIONS:
        raise ToyDataError(
            f"Toy dataset manifest {manifest_file} has kind={expected_kind!r}, "
            f"expected one of {sorted(GENERATOR_VERSIONS)}. {fix}"
        )
    expected = {"kind": expected_kind, "version": GENERATOR_VERSIONS[expected_kind]}
    if kind is not None:
        expected["split_sizes"] = _check_sizes(kind, split_sizes)
    if seed is not None:
        expected["seed"] = int(seed)
    for key, value in expected.items():
        if manifest.get(key) != value:
            raise ToyDataError(
                f"Toy dataset manifest {manifest_file} has {key}={manifest.get(key)!r}, "
                f"expected {value!r}. {fix}"
            )
    for rel, size in listed.items():
        file = os.path.join(path, rel)
        try:
            actual = os.path.getsize(file)
        except OSError as e:
            raise ToyDataError(f"Toy dataset file {file} is missing. {fix}") from e
        if actual != size:
            raise ToyDataError(
                f"Toy dataset file {file} has {actual} bytes, expected {size}. {fix}"
            )


# ---- file contents ------------------------------------------------------------------------------


def _rng(seed, kind, split, *index):
    return np.random.default_rng([int(seed), _KIND_IDS[kind], _SPLIT_IDS[split], *index])


def _jpeg_bytes(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _detection_split_files(seed, split, count):
    """{relative path: bytes} of a detection split: its JPEGs and its COCO json."""
    files = {}
    images, annotations = [], []
    for image_id in range(1, count + 1):
        file_name = f"{image_id:06d}.jpg"
        image, objects = _render_detection_image(_rng(seed, "det", split, image_id))
        files[f"images/{split}/{file_name}"] = _jpeg_bytes(image)
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": image.shape[0],
                "width": image.shape[1],
            }
        )
        for obj in objects:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0, **obj}
            )
    coco = {
        "info": {
            "description": f"detnas-d2 toy shapes, split {split}",
            "version": str(GENERATOR_VERSIONS["det"]),
            "seed": int(seed),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(CATEGORIES)
        ],
    }
    files[f"annotations/{split}.json"] = json.dumps(coco).encode()
    return files


def _classification_split_files(seed, split, per_class):
    files = {}
    for label, name in enumerate(CATEGORIES):
        for index in range(per_class):
            image = _render_classification_image(_rng(seed, "cls", split, label, index), label)
            files[f"{split}/{name}/{index:04d}.jpg"] = _jpeg_bytes(image)
    return files


# ---- rendering (numpy, vectorised over pixels) -----------------------------------------------------

_MIN_VISIBLE = 0.6  # every detection object keeps at least this fraction of its pixels visible
_MIN_PIXELS = 30  # smallest visible area of a detection object
_MIN_SIDE = 4  # smallest box side
_CLS_RADIUS = (13, 22)  # range of a classification shape's radius, in pixels of the 64 px image
_CLS_TEXTURE_CONTRAST = (0.15, 0.4)  # classification backgrounds: fraction of the texture kept
_CLS_MAX_TILT = 0.35  # classification shapes are upright up to this rotation (radians)
_CLS_BACKGROUND_DIM = 0.45  # classification backgrounds are dimmed to about 0-115 ...
_CLS_SHAPE_BRIGHTNESS = (150, 255)  # ... and their shapes' colour channels drawn from this range


def _plane_wave(size, freq, theta, phase):
    """sin(2 pi freq (x cos theta + y sin theta) + phase) at the pixel centres, for a batch of waves.

    Separable (sin(a + b) = sin a cos b + cos a sin b): O(size) trigonometry per wave.
    """
    centres = np.arange(size, dtype=np.float64) + 0.5
    along_x = 2 * np.pi * (freq * np.cos(theta))[:, None] * centres
    along_y = 2 * np.pi * (freq * np.sin(theta))[:, None] * centres + np.asarray(phase)[:, None]
    waves = np.sin(along_y)[:, :, None] * np.cos(along_x)[:, None, :]
    waves += np.cos(along_y)[:, :, None] * np.sin(along_x)[:, None, :]
    return waves.astype(np.float32)


def _background(rng, size):
    """Linear gradient between two colours + smooth colour blotches + (half the time) hard stripes."""
    colours = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    centres = np.arange(size, dtype=np.float32)
    ramp = np.sin(angle) * centres[:, None] + np.cos(angle) * centres[None, :]
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    image = colours[0] + ramp[..., None] * (colours[1] - colours[0])

    waves = 3
    freq = rng.uniform(0.5, 4.0, waves) / size  # cycles per pixel
    theta = rng.uniform(0, 2 * np.pi, waves)
    phase = rng.uniform(0, 2 * np.pi, waves)
    amplitude = rng.uniform(-25, 25, (waves, 3)).astype(np.float32)
    image += np.tensordot(_plane_wave(size, freq, theta, phase), amplitude, axes=(0, 0))

    if rng.random() < 0.5:
        period = rng.uniform(4, 16)
        theta = rng.uniform(0, np.pi)
        stripes = _plane_wave(size, np.array([1 / period]), np.array([theta]), [0.0])[0] > 0
        image += stripes[..., None] * rng.uniform(-45, 45, 3).astype(np.float32)
    return image


def _inside(category, u, v, params):
    """Mask of the shape in its canonical frame (unit half-extent, centred at 0)."""
    if category == "ellipse":
        return u * u + v * v <= 1
    if category == "rectangle":
        return np.maximum(np.abs(u), np.abs(v)) <= 1
    if category == "cross":
        t = params["arm"]
        au, av = np.abs(u), np.abs(v)
        return ((au <= 1) & (av <= t)) | ((au <= t) & (av <= 1))
    # triangle and star: polygons star-shaped around 0, vertices at evenly spaced angles
    if category == "triangle":
        radii = np.ones(3)
    else:
        radii = np.tile([1.0, params["inner"]], 5)
    n = len(radii)
    angles = -np.pi / 2 + 2 * np.pi * np.arange(n + 1) / n
    vx, vy = (
        np.append(radii, radii[0]) * np.cos(angles),
        np.append(radii, radii[0]) * np.sin(angles),
    )
    sector = (np.floor((np.arctan2(v, u) + np.pi / 2) / (2 * np.pi / n)).astype(np.int64)) % n
    x0, y0, x1, y1 = vx[sector], vy[sector], vx[sector + 1], vy[sector + 1]
    return (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0


def _sample_shape(rng, category, radius_range, centre_range, max_tilt=None):
    """A random shape; rotated by at most max_tilt radians, default: rectangles and crosses by at most
    0.35, the other shapes by any angle."""
    radius = np.exp(rng.uniform(*np.log(radius_range)))
    aspect = np.exp(
        rng.uniform(np.log(0.8), np.log(1.25)) if category == "star" else rng.uniform(-0.5, 0.5)
    )
    if max_tilt is not None:
        rotation = rng.uniform(-max_tilt, max_tilt)
    elif category in ("rectangle", "cross"):
        rotation = rng.uniform(-0.35, 0.35)
    else:
        rotation = rng.uniform(0, 2 * np.pi)
    return {
        "category": category,
        "centre": rng.uniform(*centre_range, 2),
        "half": radius * np.array([np.sqrt(aspect), 1 / np.sqrt(aspect)]),
        "rotation": rotation,
        "arm": rng.uniform(0.25, 0.4),
        "inner": rng.uniform(0.38, 0.5),
        "shade": rng.uniform(-30, 30),
    }


def _rasterise(shape, size):
    """(mask, u, fraction inside the image) of a shape on a size x size image.

    u is the canonical horizontal coordinate (for shading); the mask is computed on the shape's whole
    extent, also outside the image, to know how much of it the border cuts off.
    """
    cx, cy = shape["centre"]
    reach = np.sqrt(2) * shape["half"].max() + 1
    x0, x1 = int(np.floor(cx - reach)), int(np.ceil(cx + reach))
    y0, y1 = int(np.floor(cy - reach)), int(np.ceil(cy + reach))
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    dx, dy = xs - cx, ys - cy
    cos, sin = np.cos(shape["rotation"]), np.sin(shape["rotation"])
    u = (dx * cos + dy * sin) / shape["half"][0]
    v = (-dx * sin + dy * cos) / shape["half"][1]
    local = _inside(shape["category"], u, v, shape)
    total = np.count_nonzero(local)
    cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, size), max(x0, 0), min(x1, size)
    mask = np.zeros((size, size), dtype=bool)
    u_full = np.zeros((size, size), dtype=np.float32)
    if cy0 < cy1 and cx0 < cx1:
        crop = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
        mask[cy0:cy1, cx0:cx1] = local[crop]
        u_full[cy0:cy1, cx0:cx1] = u[crop]
    return mask, u_full, np.count_nonzero(mask) / max(total, 1)


def _paint(rng, image, mask, u, shade):
    """Fill the mask with a colour far from the background under it, shaded along the shape."""
    under = image[mask].mean(axis=0)
    for _ in range(10):
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        if np.linalg.norm(colour - under) > 100:
            break
    else:
        colour = np.where(under > 127, 20, 235).astype(np.float32)
    image[mask] = colour + (shade * u[mask])[:, None]


def _finish(rng, image):
    """Pixel noise over everything, then 8-bit."""
    sigma = rng.uniform(2, 12)
    image += sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _render_detection_image(rng, size=DET_IMAGE_SIZE):
    image = _background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int16)  # index of the object visible at each pixel
    placed = []  # (category id, box, full pixel count)
    for _ in range(rng.integers(1, 7)):
        for _attempt in range(20):
            category = int(rng.integers(len(CATEGORIES)))
            small = rng.random() < 0.25
            shape = _sample_shape(
                rng,
                CATEGORIES[category],
                (5, 10) if small else (10, 34),
                (0.05 * size, 0.95 * size),
            )
            mask, u, inside = _rasterise(shape, size)
            pixels = np.count_nonzero(mask)
            if inside < 0.5 or pixels < _MIN_PIXELS:
                continue
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            box = [
                int(cols[0]),
                int(rows[0]),
                int(cols[-1] + 1 - cols[0]),
                int(rows[-1] + 1 - rows[0]),
            ]
            if min(box[2:]) < _MIN_SIDE:
                continue
            if all(
                np.count_nonzero((owner == j) & ~mask) >= _MIN_VISIBLE * full
                for j, (_, _, full) in enumerate(placed)
            ):
                break
        else:
            continue
        owner[mask] = len(placed)
        placed.append((category + 1, box, pixels))
        _paint(rng, image, mask, u, shape["shade"])
    objects = [
        {
            "category_id": category_id,
            "bbox": [float(x) for x in box],
            "area": float(np.count_nonzero(owner == j)),
        }
        for j, (category_id, box, _) in enumerate(placed)
    ]
    return _finish(rng, image), objects


def _render_classification_image(rng, label, size=CLS_IMAGE_SIZE):
    """One large, light, near-upright shape on a dark faded background: at 64 px and a few hundred
    images per class, a small CNN learns the outlines only when nothing else in the image competes."""
    background = _background(rng, size)
    flat = background.mean(axis=(0, 1))
    image = _CLS_BACKGROUND_DIM * (flat + rng.uniform(*_CLS_TEXTURE_CONTRAST) * (background - flat))
    for _attempt in range(20):
        shape = _sample_shape(
            rng, CATEGORIES[label], _CLS_RADIUS, (0.4 * size, 0.6 * size), _CLS_MAX_TILT
        )
        mask, u, inside = _rasterise(shape, size)
        if inside >= 0.9:
            break
    colour = rng.uniform(*_CLS_SHAPE_BRIGHTNESS, 3).astype(np.float32)
    image[mask] = colour + (shape["shade"] * u[mask])[:, None]
    return _finish(rng, image)
