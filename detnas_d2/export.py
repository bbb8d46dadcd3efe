"""Deployment export of DetNAS subnet models: BN folding, tracing adapters, TorchScript/ONNX, parity.

Detectron2 v0.6's `detectron2.export` imports caffe2 and fails on torch 2, so this module does what its
`TracingAdapter` and `tools/deploy/export_model.py` do, with torch's own tools, for the three model forms
of this project:

- detector (GeneralizedRCNN, RetinaNet): input `image`, float32 (3, H, W) in INPUT.FORMAT channel order,
  0-255, already resized by the test transform; outputs `boxes` (N, 4) XYXY in input pixels, `scores`
  (N,), `classes` (N,) int64;
- classifier (DetNASClassifier): input `images`, float32 (B, 3, H, W), INPUT.FORMAT order, 0-255;
  output `logits` (B, num_classes);
- backbone (`backbone_only`): input `images`, float32 (B, 3, H, W), normalised ((x - PIXEL_MEAN) /
  PIXEL_STD, padded for detectors); one output (B, C, H/s, W/s) per MODEL.DETNAS.OUT_FEATURES.

Detector post-processing (box decoding, score threshold, NMS, top-k) is part of the graph: it traces
(Detectron2 v0.6 wrote it to be traceable) and exports to ONNX with opset >= 16 (ROIAlign with
`aligned=True`). Boxes come in the coordinates of the resized input image; scale them by
(original width / W, original height / H) to the original image (Detectron2's `detector_postprocess`).

`fold_batchnorm` folds every BatchNorm (BN, SyncBN, naiveSyncBN, FrozenBN) into the conv before it:
`W' = W * g / sqrt(v + eps)`, `b' = (b - m) * g / sqrt(v + eps) + beta`.

Parity (`compare_outputs`): an output passes when `max|exported - pytorch| <= rtol * max(max|pytorch|,
1e-6)` (error relative to the largest magnitude of that output; default rtol 1e-4) and shapes agree;
integer outputs (classes) must be equal. Detections are compared after matching each PyTorch detection
to an exported one of the same class (nearest box): tied scores may come out in another order. A
different number of detections is a mismatch.
"""
import copy
import inspect
import json
import os
import time
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import GeneralizedRCNN, RetinaNet, build_model

from .checkpoint import DetNASCheckpointer
from .data.classification import ClassificationDatasetMapper
from .modeling.backbone import ShuffleNetV2Subnet, ShuffleNetV2Supernet
from .modeling.classifier import DetNASClassifier

__all__ = [
    "DEFAULT_RTOL",
    "DEFAULT_OPSET",
    "ExportError",
    "fold_batchnorm",
    "count_batchnorms",
    "DetectorAdapter",
    "ClassifierAdapter",
    "BackboneAdapter",
    "make_adapter",
    "model_kind",
    "export_torchscript",
    "export_onnx",
    "load_exported",
    "compare_outputs",
    "find_subnet",
    "build_export_model",
    "sample_images",
    "adapter_inputs",
    "run_export",
]

DEFAULT_RTOL = 1e-4
DEFAULT_OPSET = 17  # >= 16: ROIAlign(aligned=True) exports exactly from opset 16 on
_SCALE_FLOOR = 1e-6


class ExportError(RuntimeError):
    """An export that cannot be done or whose exported model disagrees with PyTorch."""


# ---- BatchNorm folding ------------------------------------------------------------------------------

def _bn_types():

    # _BatchNorm: BatchNorm2d, naiveSyncBN (a BatchNorm2d) and nn.SyncBatchNorm (not a BatchNorm2d)
    return (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)


def _is_foldable_bn(module) -> bool:
    if not isinstance(module, _bn_types()):
        return False
    return getattr(module, "running_mean", None) is not None and getattr(module, "running_var", None) is not None


def _fold_into(conv: nn.Conv2d, bn: nn.Module) -> None:
    """Fold `bn` (eval-mode statistics) into `conv`'s weight and bias, in place."""
    if bn.running_mean.shape[0] != conv.out_channels:
        raise ExportError(
            f"cannot fold {type(bn).__name__}({bn.running_mean.shape[0]}) into a conv with "
            f"{conv.out_channels} output channels"
        )
    with torch.no_grad():
        w = conv.weight
        std = torch.sqrt(bn.running_var.double() + bn.eps)
        gamma = bn.weight.double() if getattr(bn, "weight", None) is not None else torch.ones_like(std)
        beta = bn.bias.double() if getattr(bn, "bias", None) is not None else torch.zeros_like(std)
        scale = gamma / std
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(std)
        new_w = (w.double() * scale.reshape(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
        new_b = ((bias - bn.running_mean.double()) * scale + beta).to(w.dtype)
        conv.weight.copy_(new_w)
        if conv.bias is None:
            conv.bias = nn.Parameter(new_b, requires_grad=conv.weight.requires_grad)
        else:
            conv.bias.copy_(new_b)


def count_batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm-type modules (BN, SyncBN, naiveSyncBN, FrozenBN) in `model`."""
    return sum(1 for m in model.modules() if isinstance(m, _bn_types()))


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> Tuple[nn.Module, int]:
    """`model` with every BatchNorm that directly follows a conv folded into it; returns (model, count).

    Handles Detectron2's `Conv2d(..., norm=BN)` (the norm is removed) and `nn.Sequential` runs of a conv
    followed by a BN (the BN becomes `nn.Identity`). Eval-mode semantics: the model must be in eval mode
    (folding uses the running statistics). Without `inplace`, `model` is deep-copied first.
    """
    if model.training:
        raise ExportError("fold_batchnorm needs an eval-mode model (call model.eval()): it folds running statistics")
    if not inplace:
        model = copy.deepcopy(model)
    folded = 0
    for module in list(model.modules()):
        norm = getattr(module, "norm", None) if isinstance(module, nn.Conv2d) else None
        if norm is not None and _is_foldable_bn(norm):
            _fold_into(module, norm)
            module.norm = None
            folded += 1
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for prev, name in zip(names, names[1:]):
                conv, bn = module._modules[prev], module._modules[name]
                if (
                    isinstance(conv, nn.Conv2d)
                    and getattr(conv, "norm", None) is None
                    and getattr(conv, "activation", None) is None
                    and _is_foldable_bn(bn)
                ):
                    _fold_into(conv, bn)
                    module._modules[name] = nn.Identity()
                    folded += 1
    return model, folded


# ---- tracing adapters -------------------------------------------------------------------------------

def model_kind(model: nn.Module) -> str:
    """'rcnn', 'retinanet' or 'classifier' (raises ExportError for other models)."""


    if isinstance(model, GeneralizedRCNN):
        return "rcnn"
    if isinstance(model, RetinaNet):
        return "retinanet"
    if isinstance(model, DetNASClassifier):
        return "classifier"
    raise ExportError(
        f"cannot export a {type(model).__name__}: supported are GeneralizedRCNN (Faster R-CNN), RetinaNet "
        "and DetNASClassifier (MODEL.META_ARCHITECTURE), or --backbone-only"
    )


def find_subnet(model: nn.Module) -> ShuffleNetV2Subnet:
    """The ShuffleNetV2Subnet inside `model`; ExportError for a supernet or a model without one."""
    if any(isinstance(m, ShuffleNetV2Supernet) for m in model.modules()):
        raise ExportError(
            "the model holds a ShuffleNetV2 supernet: export needs a subnet. Use a subnet config "
            "(MODEL.BACKBONE.NAME build_detnas_subnet_*) with MODEL.DETNAS.ARCH; a supernet checkpoint in "
            "MODEL.WEIGHTS hands its chosen path over to the subnet"
        )
    found = [m for m in model.modules() if isinstance(m, ShuffleNetV2Subnet)]
    if len(found) != 1:
        raise ExportError(f"expected one ShuffleNetV2Subnet in {type(model).__name__}, found {len(found)}")
    return found[0]


class DetectorAdapter(nn.Module):
    """image (3, H, W) float32 -> (boxes (N, 4), scores (N,), classes (N,)) of a Detectron2 detector."""

    input_names = ("image",)
    output_names = ("boxes", "scores", "classes")
    dynamic_axes = {"image": {1: "height", 2: "width"}, "boxes": {0: "detections"},
                    "scores": {0: "detections"}, "classes": {0: "detections"}}

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.kind = model_kind(model)
        if self.kind == "classifier":
            raise ExportError("DetectorAdapter takes a detector; use ClassifierAdapter for a DetNASClassifier")

    def forward(self, image: torch.Tensor):
        inputs = [{"image": image}]
        if self.kind == "rcnn":
            inst = self.model.inference(inputs, do_postprocess=False)[0]
        else:  # RetinaNet: forward's post-processing to the input's own size is a scale of 1
            inst = self.model(inputs)[0]["instances"]
        return inst.pred_boxes.tensor, inst.scores, inst.pred_classes


class ClassifierAdapter(nn.Module):
    """images (B, 3, H, W) float32 pixels -> logits (B, num_classes) of a DetNASClassifier."""

    input_names = ("images",)
    output_names = ("logits",)
    dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}}

    def __init__(self, model: nn.Module):
        super().__init__()
        if model_kind(model) != "classifier":
            raise ExportError(f"ClassifierAdapter takes a DetNASClassifier, got {type(model).__name__}")
        self.model = model

    def forward(self, images: torch.Tensor):
        m = self.model
        x = (images - m.pixel_mean) / m.pixel_std
        return m.head(m.backbone(x)[m.in_feature])


class BackboneAdapter(nn.Module):
    """images (B, 3, H, W) normalised -> the subnet's output features, in network order."""

    input_names = ("images",)

    def __init__(self, backbone: ShuffleNetV2Subnet):
        super().__init__()
        self.backbone = backbone
        self.output_names = tuple(backbone._out_features)
        self.dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}}
        self.dynamic_axes.update({name: {0: "batch", 2: f"{name}_h", 3: f"{name}_w"} for name in self.output_names})

    def forward(self, images: torch.Tensor):
        out = self.backbone(images)
        return [out[name] for name in self.output_names]


def make_adapter(model: nn.Module, backbone_only: bool = False) -> nn.Module:
    """The tracing adapter of `model` (see the module doc); `backbone_only`: its ShuffleNetV2 subnet."""
    subnet = find_subnet(model)
    if backbone_only:
        return BackboneAdapter(subnet).eval()
    kind = model_kind(model)
    return (ClassifierAdapter(model) if kind == "classifier" else DetectorAdapter(model)).eval()


# ---- export and load ----------------------------------------------------------------------------

def _as_tuple(outputs) -> Tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def export_torchscript(adapter: nn.Module, example: torch.Tensor, path: str, method: str = "tracing") -> str:
    """Trace (or script) `adapter` and save it to `path`; returns `path`."""
    if method == "tracing":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings of Detectron2's shape arithmetic; parity checks instead
            ts = torch.jit.trace(adapter, (example,), check_trace=False, strict=False)
    elif method == "scripting":
        if isinstance(adapter, DetectorAdapter):
            raise ExportError(
                "--export-method scripting supports --backbone-only and classifiers: Detectron2 v0.6 scripts "
                "detectors only through detectron2.export, which fails to import on torch 2; use tracing"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ts = torch.jit.script(adapter)
        except Exception as e:  # torch.jit raises many types; report it as an export error
            raise ExportError(f"torch.jit.script failed ({type(e).__name__}: {e}); use --export-method tracing") from e
    else:
        raise ExportError(f"unknown export method '{method}': tracing or scripting")
    torch.jit.save(ts, path)
    return path


def export_onnx(adapter: nn.Module, example: torch.Tensor, path: str, opset: int = DEFAULT_OPSET) -> str:
    """Export `adapter` to ONNX at `path` (torch's TorchScript-based exporter, dynamic axes); returns `path`."""
    kwargs = dict(
        opset_version=opset,
        input_names=list(adapter.input_names),
        output_names=list(adapter.output_names),
        dynamic_axes=adapter.dynamic_axes,
        do_constant_folding=True,
    )

    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the tracing exporter: Detectron2's post-processing is data-dependent
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(adapter, (example,), path, **kwargs)
    return path


def load_exported(path: str, fmt: str, num_threads: Optional[int] = None):
    """A callable running the exported model at `path` (`fmt` torchscript or onnx) on CPU: it takes
    the adapter's input tensor and returns a tuple of tensors."""
    if fmt == "torchscript":
        module = torch.jit.load(path, map_location="cpu").eval()

        def run(x):
            with torch.no_grad():
                return _as_tuple(module(x))

        return run
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ExportError("checking an ONNX export needs onnxruntime: pip install onnxruntime") from e
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name

        def run(x):
            return tuple(torch.from_numpy(o) for o in session.run(None, {input_name: x.detach().cpu().numpy()}))

        return run
    raise ExportError(f"unknown format '{fmt}': torchscript or onnx")


# ---- parity ---------------------------------------------------------------------------------------

def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> Tuple[float, float]:
    """(max abs difference, that difference / max(max|ref|, 1e-6))."""
    if ref.numel() == 0:
        return 0.0, 0.0
    diff = (got.double() - ref.double()).abs().max().item()
    return diff, diff / max(ref.double().abs().max().item(), _SCALE_FLOOR)


def _match_detections(ref, got):
    """Permutation of `got`'s detections matching `ref`'s (same class, nearest box), or None."""
    ref_boxes, ref_scores, ref_classes = ref
    got_boxes, got_scores, got_classes = got
    n = ref_boxes.shape[0]
    cost = torch.cdist(ref_boxes.double(), got_boxes.double(), p=float("inf"))
    cost = cost + (ref_scores.double()[:, None] - got_scores.double()[None, :]).abs() * 1e3
    cost[ref_classes[:, None] != got_classes[None, :]] = float("inf")
    perm, used = [], torch.zeros(n, dtype=torch.bool)
    for i in torch.argsort(ref_scores, descending=True, stable=True).tolist():
        row = cost[i].masked_fill(used, float("inf"))
        j = int(row.argmin())
        if not torch.isfinite(row[j]):
            return None
        used[j] = True
        perm.append((i, j))
    order = torch.empty(n, dtype=torch.long)
    for i, j in perm:
        order[i] = j
    return order


def _tie_hint(scores: torch.Tensor, rtol: float) -> str:
    """A note when PyTorch's detection scores tie within the tolerance (untrained heads do): the order of
    tied candidates, and with it top-k and NMS, may legitimately differ between backends."""
    if scores.numel() < 2:
        return ""
    s = torch.sort(scores.double()).values
    ties = int(((s[1:] - s[:-1]) <= rtol * max(s.abs().max().item(), _SCALE_FLOOR)).sum())
    if ties == 0:
        return ""
    return (f"; {ties} of {scores.numel()} PyTorch scores tie within the tolerance (untrained heads?): tied "
            "candidates may be ordered differently, which changes top-k and NMS")


def compare_outputs(
    ref: Sequence[torch.Tensor], got: Sequence[torch.Tensor], names: Sequence[str],
    detections: bool = False, rtol: float = DEFAULT_RTOL,
) -> Dict:
    """Compare the exported model's outputs `got` with PyTorch's `ref` (see the module doc).

    Returns {"ok": bool, "outputs": {name: {"max_abs": ..., "rel": ..., "shape": ...}}, "problem": str|None}.
    """
    ref, got = [t.detach().cpu() for t in ref], [t.detach().cpu() for t in got]
    report = {"ok": True, "outputs": {}, "problem": None}
    if len(ref) != len(got):
        return {**report, "ok": False, "problem": f"{len(got)} outputs, PyTorch has {len(ref)}"}
    shapes = [(tuple(r.shape), tuple(g.shape)) for r, g in zip(ref, got)]
    bad = [(n, s) for n, s in zip(names, shapes) if s[0] != s[1]]
    if bad:
        name, (rs, gs) = bad[0]
        if detections:
            what = f"{gs[0]} detections, PyTorch {rs[0]}" + _tie_hint(ref[1], rtol)
        else:
            what = f"shape {gs}, PyTorch {rs}"
        return {**report, "ok": False, "problem": f"output '{name}': {what}"}
    if detections and ref[0].shape[0] > 0:
        order = _match_detections(ref, got)
        if order is None:
            return {**report, "ok": False, "problem": "the detections differ (some have no exported detection of "
                    "the same class)" + _tie_hint(ref[1], rtol)}
        got = [g[order] for g in got]
    for name, r, g in zip(names, ref, got):
        if r.dtype.is_floating_point:
            diff, rel = _rel_err(g, r)
            ok = rel <= rtol
        else:
            diff = float((g.long() - r.long()).abs().max().item()) if r.numel() else 0.0
            rel, ok = (0.0 if diff == 0 else float("inf")), diff == 0
        report["outputs"][name] = {"max_abs": diff, "rel": rel, "shape": list(r.shape)}
        if not ok and report["ok"]:
            report["ok"] = False
            report["problem"] = (
                f"output '{name}': max |exported - pytorch| = {diff:.3g}, {rel:.3g} of its largest magnitude "
                f"(tolerance {rtol:g})"
            )
    return report


def output_file(output_dir: str, fmt: str) -> str:
    return os.path.join(output_dir, "model.ts" if fmt == "torchscript" else "model.onnx")


def write_info(path: str, info: Dict) -> None:
    with open(path, "w") as f:
        json.dump(info, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


# ---- the whole export: model, samples, export, parity (tools/export_model.py) ---------------------

def build_export_model(cfg) -> nn.Module:
    """The eval-mode model of `cfg` on CPU, with MODEL.WEIGHTS loaded through the project's checkpointer
    (which hands a classifier or supernet checkpoint's backbone over); random init when it is empty."""

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    find_subnet(model)  # a clear error for supernets before any weights are read
    if cfg.MODEL.WEIGHTS:
        weights = cfg.MODEL.WEIGHTS
        if "://" not in weights and not os.path.isfile(weights):
            raise ExportError(f"MODEL.WEIGHTS {weights}: no such file")
        DetNASCheckpointer(model).load(weights)
    return model.eval()


def _parse_hw(text: str) -> Tuple[int, int]:
    try:
        parts = [int(p) for p in str(text).lower().replace(",", "x").split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise ValueError(f"an input size is HxW or one number (square), e.g. 224x224 or 800x1333; got '{text}'")
    return parts[0], parts[1]


def sample_images(cfg, kind: str, num: int = 4, image_files: Sequence[str] = (), random_size: str = "",
                  seed: int = 0) -> List[torch.Tensor]:
    """Test-time model inputs, uint8/float (3, H, W) in INPUT.FORMAT order: `image_files` through the test
    mapper, else a random image of `random_size` (HxW), else the first `num` images of DATASETS.TEST[0]."""
    if random_size:
        h, w = _parse_hw(random_size)
        g = torch.Generator().manual_seed(seed)
        return [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for _ in range(max(1, num))]
    if kind == "classifier":

        mapper = ClassificationDatasetMapper(cfg, is_train=False)
    else:

        mapper = DatasetMapper(cfg, is_train=False)
    if image_files:
        missing = [f for f in image_files if not os.path.isfile(f)]
        if missing:
            raise ExportError(f"--sample-image {missing[0]}: no such file")
        dicts = [{"file_name": f} for f in image_files]
    else:

        if not cfg.DATASETS.TEST:
            raise ExportError("DATASETS.TEST is empty: give --sample-image FILE or --random-input HxW")
        name = cfg.DATASETS.TEST[0]
        try:
            dicts = DatasetCatalog.get(name)[:num]
        except Exception as e:  # unregistered name, missing folder: the loaders raise many types
            raise ExportError(
                f"cannot read sample images of DATASETS.TEST[0] '{name}' ({type(e).__name__}: {e}); "
                "give --sample-image FILE or --random-input HxW"
            ) from e
        if not dicts:
            raise ExportError(f"dataset '{name}' is empty: give --sample-image FILE or --random-input HxW")
    return [mapper(dict(d))["image"] for d in dicts]


def adapter_inputs(model: nn.Module, adapter: nn.Module, images: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """The adapter's input tensor for each test-time image."""
    if isinstance(adapter, DetectorAdapter):
        return [im.float() for im in images]
    if isinstance(adapter, ClassifierAdapter):
        return [im.float()[None] for im in images]
    with torch.no_grad():  # backbone: the model's own normalisation (and padding, for detectors)
        if model_kind(model) == "classifier":
            return [model.preprocess_image([{"image": im}]) for im in images]
        return [model.preprocess_image([{"image": im}]).tensor for im in images]


def run_export(model: nn.Module, fmt: str, output_dir: str, images: Sequence[torch.Tensor], *,
               backbone_only: bool = False, method: str = "tracing", fold_bn: bool = True,
               opset: int = DEFAULT_OPSET, rtol: float = DEFAULT_RTOL, log=print) -> Dict:
    """Export `model` (eval mode) to `output_dir`/model.{ts,onnx}, run the exported model and PyTorch on
    `images`, and write `output_dir`/export_info.json. Returns the info dict; info["ok"] is the parity."""

    if fmt not in ("torchscript", "onnx"):
        raise ExportError(f"unknown format '{fmt}': torchscript or onnx")
    if fmt == "onnx" and method != "tracing":
        raise ExportError("ONNX export uses tracing (--export-method tracing)")
    os.makedirs(output_dir, exist_ok=True)
    model = model.eval()
    reference = make_adapter(model, backbone_only)
    inputs = adapter_inputs(model, reference, images)
    batch_input = None
    if not isinstance(reference, DetectorAdapter) and len(inputs) > 1 and len({tuple(x.shape) for x in inputs}) == 1:
        batch_input = torch.cat(inputs)  # also check a batch (dynamic batch size)

    bn_before = count_batchnorms(model)
    if fold_bn:
        folded_model, n_folded = fold_batchnorm(model)
        exported = make_adapter(folded_model, backbone_only)
    else:
        n_folded, exported = 0, reference
    names = list(reference.output_names)
    detections = isinstance(reference, DetectorAdapter)
    cases = [(f"image {i}", x) for i, x in enumerate(inputs)]
    if batch_input is not None:
        cases.append((f"batch of {batch_input.shape[0]}", batch_input))
    with torch.no_grad():
        ref_out = [_as_tuple(reference(x)) for _, x in cases]
        fold_reports = [
            compare_outputs(r, _as_tuple(exported(x)), names, detections, rtol) for r, (_, x) in zip(ref_out, cases)
        ] if fold_bn else []

    path = output_file(output_dir, fmt)
    t0 = time.perf_counter()
    if fmt == "torchscript":
        export_torchscript(exported, inputs[0], path, method)
    else:
        export_onnx(exported, inputs[0], path, opset)
    export_s = time.perf_counter() - t0
    run = load_exported(path, fmt)
    reports = []
    for (label, x), r in zip(cases, ref_out):
        rep = compare_outputs(r, run(x), names, detections, rtol)
        rep["case"], rep["input_shape"] = label, list(x.shape)
        if detections:
            rep["detections"] = int(r[0].shape[0])
        reports.append(rep)

    kind = "backbone" if backbone_only else model_kind(model)
    subnet = find_subnet(model)
    info = {
        "file": os.path.basename(path),
        "format": fmt,
        "export_method": method,
        "opset": opset if fmt == "onnx" else None,
        "model": kind,
        "space": subnet.space.name,
        "width_mult": subnet.space.width_mult,
        "arch": list(subnet.arch),
        "inputs": {reference.input_names[0]: _input_doc(reference)},
        "outputs": names,
        "bn_folded": n_folded,
        "bn_left": bn_before - n_folded,
        "torch_version": torch.__version__,
        "export_seconds": round(export_s, 3),
        "tolerance": f"max|exported - pytorch| <= {rtol:g} * max|pytorch| per output; integer outputs equal; "
                     "detections matched by class and box first",
        "fold_check": [
            {"case": label, "ok": rep["ok"], "problem": rep["problem"],
             "rel": {k: v["rel"] for k, v in rep["outputs"].items()}}
            for (label, _), rep in zip(cases, fold_reports)
        ],
        "parity": reports,
    }
    info["ok"] = all(r["ok"] for r in reports) and all(r["ok"] for r in fold_reports)
    write_info(os.path.join(output_dir, "export_info.json"), info)

    log(f"Exported {kind} ({subnet.space.name} x{subnet.space.width_mult}) to {path} ({fmt}, {method}, "
        f"{export_s:.1f} s); BatchNorms folded: {n_folded} of {bn_before}")
    def label(rep):
        shape = "x".join(str(d) for d in rep["input_shape"])
        dets = f", {rep['detections']} det" if "detections" in rep else ""
        return f"{rep['case']} ({shape}{dets})".ljust(30)

    header = "case".ljust(30) + "".join(f"{n:>26}" for n in names)
    log("Largest difference, exported vs PyTorch (max abs / relative to max|pytorch|):")
    log(header)
    for rep in reports:
        cells = "".join(
            f"{_cell(rep['outputs'].get(n)):>26}" for n in names
        )
        log(label(rep) + cells + ("" if rep["ok"] else f"   MISMATCH: {rep['problem']}"))
    if fold_bn:
        worst = max((max(v["rel"] for v in r["outputs"].values()) for r in fold_reports if r["outputs"]), default=0.0)
        bad = [r for r in fold_reports if not r["ok"]]
        log(f"BN folding (PyTorch folded vs unfolded): largest relative difference {worst:.2e}"
            + (f"; MISMATCH: {bad[0]['problem']}" if bad else ""))
    if detections and not any(r.get("detections") for r in reports):
        info["warning"] = (
            "PyTorch gave no detection on any sample image, so the post-processing was not compared "
            "(untrained heads score below the test score threshold); check with trained weights"
        )
        log(f"Warning: {info['warning']}")
        write_info(os.path.join(output_dir, "export_info.json"), info)
    worst = max((max((v["rel"] for v in r["outputs"].values()), default=0.0) for r in reports), default=0.0)
    if info["ok"]:
        log(f"Parity OK: largest relative difference {worst:.2e} (tolerance {rtol:g})")
    else:
        first = next(r for r in reports + fold_reports if not r["ok"])
        log(f"Parity FAILED: {first['problem']} (largest relative difference where comparable {worst:.2e}, "
            f"tolerance {rtol:g})")
    return info


def _cell(out) -> str:
    return "-" if out is None else f"{out['max_abs']:.2e} / {out['rel']:.2e}"


def _input_doc(adapter) -> str:
    if isinstance(adapter, DetectorAdapter):
        return "float32 (3, H, W), INPUT.FORMAT channel order, 0-255, resized by the test transform"
    if isinstance(adapter, ClassifierAdapter):
        return "float32 (B, 3, H, W), INPUT.FORMAT channel order, 0-255"
    return "float32 (B, 3, H, W), normalised: (pixels - MODEL.PIXEL_MEAN) / MODEL.PIXEL_STD"
