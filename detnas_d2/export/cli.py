"""Export a DetNAS subnet model to TorchScript or ONNX and check the exported model against PyTorch.

The shape of Detectron2's tools/deploy/export_model.py, without `detectron2.export` (caffe2; it fails to
import on torch 2): a tracing adapter flattens the model to tensors (detnas_d2/export/), BatchNorms
are folded into the convs before them, and the exported model (torch.jit.load / onnxruntime on CPU)
and the unfolded PyTorch model are run on sample images; the largest difference is printed, and a
mismatch beyond the tolerance exits with status 1 (a bad config, arch, weights file or option: 2).

    python tools/export_model.py --config-file configs/Toy/det_subnet.yaml --format onnx --output out/det
    python tools/export_model.py --config-file configs/Toy/cls_subnet.yaml --format torchscript \
        --output out/cls MODEL.WEIGHTS output/toy/4/model_final.pth
    python tools/export_model.py --config-file configs/Toy/det_subnet.yaml --backbone-only --format onnx \
        --output out/backbone MODEL.DETNAS.ARCH output/toy/3/best_arch.yaml

Writes <output>/model.ts or <output>/model.onnx and <output>/export_info.json (inputs, outputs, arch,
BatchNorms folded, parity per sample). Models run on CPU. Inputs and outputs: see
detnas_d2/export/__init__.py.
"""

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Sequence

# run from a checkout
import detnas_d2  # noqa: F401  (first: compat shims, registrations)

import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model
from torch import nn

from detnas_d2.checkpoint import DetNASCheckpointer
from detnas_d2.config import ConfigError, get_detnas_cfg
from detnas_d2.config_files import config_file
from detnas_d2.data.classification import ClassificationDatasetMapper
from detnas_d2.export import (
    DEFAULT_OPSET,
    DEFAULT_RTOL,
    FORMATS,
    DetectorAdapter,
    ExportError,
    adapter_inputs,
    as_tuple,
    compare_outputs,
    export_onnx,
    export_torchscript,
    exported_file,
    find_subnet,
    load_exported,
    make_adapter,
    model_kind,
    non_finite_output,
)
from detnas_d2.input_size import parse_input_size
from detnas_d2.modeling.bn_fold import BatchNormFoldError, count_batchnorms, fold_batchnorm


def build_export_model(cfg, backbone_only: bool = False) -> nn.Module:
    """The eval-mode model of `cfg` on CPU, with MODEL.WEIGHTS loaded through the project's checkpointer
    (which hands a classifier or supernet checkpoint's backbone over, and refuses NaN weights); random
    init when it is empty. Weights that leave the heads random are refused unless `backbone_only` or
    MODEL.DETNAS.ALLOW_RANDOM_HEADS."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    find_subnet(model)  # a clear error for supernets before any weights are read
    if cfg.MODEL.WEIGHTS:
        weights = cfg.MODEL.WEIGHTS
        if "://" not in weights and not os.path.isfile(weights):
            raise ExportError(f"MODEL.WEIGHTS {weights}: no such file")
        allow_random_heads = backbone_only or cfg.MODEL.DETNAS.ALLOW_RANDOM_HEADS
        DetNASCheckpointer(model, allow_random_heads=allow_random_heads).load(weights)
    return model.eval()


def sample_images(
    cfg,
    kind: str,
    num: int = 4,
    image_files: Sequence[str] = (),
    random_size: str = "",
    seed: int = 0,
) -> List[torch.Tensor]:
    """Test-time model inputs, uint8/float (3, H, W) in INPUT.FORMAT order: `image_files` through the test
    mapper, else a random image of `random_size` (HxW), else the first `num` images of DATASETS.TEST[0]."""
    if random_size:
        h, w = parse_input_size(random_size)
        g = torch.Generator().manual_seed(seed)
        return [
            torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
            for _ in range(max(1, num))
        ]
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
            raise ExportError(
                "DATASETS.TEST is empty: give --sample-image FILE or --random-input HxW"
            )
        name = cfg.DATASETS.TEST[0]
        try:
            dicts = DatasetCatalog.get(name)[:num]
        except Exception as e:  # unregistered name, missing folder: the loaders raise many types
            raise ExportError(
                f"cannot read sample images of DATASETS.TEST[0] '{name}' ({type(e).__name__}: {e}); "
                "give --sample-image FILE or --random-input HxW"
            ) from e
        if not dicts:
            raise ExportError(
                f"dataset '{name}' is empty: give --sample-image FILE or --random-input HxW"
            )
    if not image_files:
        return [mapper(dict(d))["image"] for d in dicts]
    images = []
    for d in dicts:
        try:
            images.append(mapper(dict(d))["image"])
        except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
            raise ExportError(
                f"--sample-image {d['file_name']}: cannot be read as an image ({type(e).__name__}); "
                "give an image file (JPEG, PNG)"
            ) from None
    return images


def _write_info(path: str, info: Dict) -> None:
    with open(path, "w") as f:
        json.dump(info, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def _cell(out) -> str:
    return "-" if out is None else f"{out['max_abs']:.2e} / {out['rel']:.2e}"


def _case_label(rep) -> str:
    shape = "x".join(str(d) for d in rep["input_shape"])
    dets = f", {rep['detections']} det" if "detections" in rep else ""
    return f"{rep['case']} ({shape}{dets})".ljust(30)


def _require_finite_pytorch(model, reference, images, cases, ref_out) -> None:
    """ExportError when PyTorch's own outputs hold NaN or Inf: the model is broken before any export
    (parity would compare NaN with NaN). A detector's backbone features are checked too: its score
    threshold drops NaN detections, which would leave finite, empty outputs."""
    checks = [(label, out, reference.output_names) for (label, _), out in zip(cases, ref_out)]
    if isinstance(reference, DetectorAdapter):
        backbone = make_adapter(model, backbone_only=True)
        inputs = adapter_inputs(model, backbone, images)
        checks += [
            (f"image {i}", as_tuple(backbone(x)), backbone.output_names)
            for i, x in enumerate(inputs)
        ]
    for label, outputs, names in checks:
        bad = non_finite_output(outputs, names)
        if bad:
            raise ExportError(
                f"PyTorch's own output '{bad}' on {label} holds NaN or Inf: the model is broken before any "
                "export; check MODEL.WEIGHTS (nothing was exported)"
            )


def run_export(
    model: nn.Module,
    fmt: str,
    output_dir: str,
    images: Sequence[torch.Tensor],
    *,
    backbone_only: bool = False,
    method: str = "tracing",
    fold_bn: bool = True,
    opset: int = DEFAULT_OPSET,
    rtol: float = DEFAULT_RTOL,
    log=print,
) -> Dict:
    """Export `model` (eval mode) to `output_dir`/model.{ts,onnx}, run the exported model and PyTorch on
    `images`, and write `output_dir`/export_info.json. Returns the info dict; info["ok"] is the parity."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format '{fmt}': torchscript or onnx")
    if fmt == "onnx" and method != "tracing":
        raise ExportError("ONNX export uses tracing (--export-method tracing)")
    model = model.eval()
    reference = make_adapter(model, backbone_only)
    inputs = adapter_inputs(model, reference, images)
    batch_input = None
    if (
        not isinstance(reference, DetectorAdapter)
        and len(inputs) > 1
        and len({tuple(x.shape) for x in inputs}) == 1
    ):
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
        ref_out = [as_tuple(reference(x)) for _, x in cases]
        _require_finite_pytorch(model, reference, images, cases, ref_out)
        fold_reports = (
            [
                compare_outputs(r, as_tuple(exported(x)), names, detections, rtol)
                for r, (_, x) in zip(ref_out, cases)
            ]
            if fold_bn
            else []
        )

    os.makedirs(output_dir, exist_ok=True)
    path = exported_file(output_dir, fmt)
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
        "space": subnet.space.ref,
        "width_mult": subnet.space.width_mult,
        "arch": list(subnet.arch),
        "inputs": {reference.input_names[0]: reference.input_doc},
        "outputs": names,
        "bn_folded": n_folded,
        "bn_left": bn_before - n_folded,
        "torch_version": torch.__version__,
        "export_seconds": round(export_s, 3),
        "tolerance": f"max|exported - pytorch| <= {rtol:g} * max|pytorch| per output; integer outputs equal; "
        "detections matched by class and box first",
        "fold_check": [
            {
                "case": label,
                "ok": rep["ok"],
                "problem": rep["problem"],
                "rel": {k: v["rel"] for k, v in rep["outputs"].items()},
            }
            for (label, _), rep in zip(cases, fold_reports)
        ],
        "parity": reports,
    }
    info["ok"] = all(r["ok"] for r in reports) and all(r["ok"] for r in fold_reports)
    info_path = os.path.join(output_dir, "export_info.json")
    _write_info(info_path, info)

    log(
        f"Exported {kind} ({subnet.space.name} x{subnet.space.width_mult}) to {path} ({fmt}, {method}, "
        f"{export_s:.1f} s); BatchNorms folded: {n_folded} of {bn_before}"
    )
    log("Largest difference, exported vs PyTorch (max abs / relative to max|pytorch|):")
    log("case".ljust(30) + "".join(f"{n:>26}" for n in names))
    for rep in reports:
        cells = "".join(f"{_cell(rep['outputs'].get(n)):>26}" for n in names)
        log(_case_label(rep) + cells + ("" if rep["ok"] else f"   MISMATCH: {rep['problem']}"))
    if fold_bn:
        worst = max(
            (max(v["rel"] for v in r["outputs"].values()) for r in fold_reports if r["outputs"]),
            default=0.0,
        )
        bad = [r for r in fold_reports if not r["ok"]]
        log(
            f"BN folding (PyTorch folded vs unfolded): largest relative difference {worst:.2e}"
            + (f"; MISMATCH: {bad[0]['problem']}" if bad else "")
        )
    if detections and not any(r.get("detections") for r in reports):
        info["warning"] = (
            "PyTorch gave no detection on any sample image, so the post-processing was not compared "
            "(untrained heads score below the test score threshold); check with trained weights"
        )
        log(f"Warning: {info['warning']}")
        _write_info(info_path, info)
    worst = max(
        (max((v["rel"] for v in r["outputs"].values()), default=0.0) for r in reports), default=0.0
    )
    if info["ok"]:
        log(f"Parity OK: largest relative difference {worst:.2e} (tolerance {rtol:g})")
    else:
        first = next(r for r in reports + fold_reports if not r["ok"])
        log(
            f"Parity FAILED: {first['problem']} (largest relative difference where comparable {worst:.2e}, "
            f"tolerance {rtol:g})"
        )
    return info


def get_parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config-file",
        required=True,
        metavar="FILE",
        help="a subnet config (detector or classifier)",
    )
    p.add_argument("--format", choices=FORMATS, default="torchscript")
    p.add_argument(
        "--export-method",
        choices=("tracing", "scripting"),
        default="tracing",
        help="scripting: TorchScript of --backbone-only or a classifier, when the model scripts",
    )
    p.add_argument("--output", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--backbone-only", action="store_true", help="export the ShuffleNetV2 subnet backbone alone"
    )
    p.add_argument(
        "--no-fold-bn",
        action="store_true",
        help="keep BatchNorms (default: fold them into the convs)",
    )
    p.add_argument(
        "--num-samples", type=int, default=4, help="sample images of DATASETS.TEST[0] (default 4)"
    )
    p.add_argument(
        "--sample-image",
        action="append",
        default=[],
        metavar="FILE",
        help="sample image file(s) instead of DATASETS.TEST[0] (repeatable)",
    )
    p.add_argument(
        "--random-input",
        default="",
        metavar="HxW",
        help="random images of this size instead of a dataset (e.g. when COCO is not installed)",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset (>= 16; default {DEFAULT_OPSET})",
    )
    p.add_argument(
        "--rtol",
        type=float,
        default=DEFAULT_RTOL,
        help=f"parity tolerance: max|exported - pytorch| <= rtol * max|pytorch| (default {DEFAULT_RTOL:g})",
    )
    p.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config options KEY VALUE ..."
    )
    return p


def _error(message: str) -> int:
    print(f"export_model.py: error: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:  # a path, or one of the package's configs, as train_net.py finds them
        args.config_file = config_file(args.config_file)
    except FileNotFoundError:
        return _error(
            f"--config-file {args.config_file}: no such file (nor one of the package's configs)"
        )
    if not os.path.isfile(args.config_file):
        return _error(f"--config-file {args.config_file}: no such file")
    if args.format == "onnx" and args.opset < 16:
        return _error(
            f"--opset {args.opset}: ROIAlign(aligned=True) and this exporter need opset 16 or higher"
        )
    if args.num_samples < 1:
        return _error("--num-samples must be at least 1")
    try:
        cfg = get_detnas_cfg(args.config_file, args.opts)
    except ConfigError as e:  # names the file or option
        return _error(str(e))
    try:
        model = build_export_model(cfg, args.backbone_only)
    except ExportError as e:
        return _error(str(e))
    except (
        ValueError,
        KeyError,
        FileNotFoundError,
    ) as e:  # arch files, MODEL.DETNAS.*, checkpoint fit
        return _error(f"cannot build the model of {args.config_file}: {e}")
    try:
        images = sample_images(
            cfg, model_kind(model), args.num_samples, args.sample_image, args.random_input
        )
        info = run_export(
            model,
            args.format,
            args.output,
            images,
            backbone_only=args.backbone_only,
            method=args.export_method,
            fold_bn=not args.no_fold_bn,
            opset=args.opset,
            rtol=args.rtol,
        )
    except (ExportError, BatchNormFoldError, ValueError) as e:
        return _error(str(e))
    if not info["ok"]:
        print(
            f"export_model.py: the exported model differs from PyTorch beyond the tolerance (details in "
            f"{os.path.join(args.output, 'export_info.json')})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
