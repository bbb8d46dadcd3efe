#!/usr/bin/env python
"""Export a DetNAS subnet model to TorchScript or ONNX and check the exported model against PyTorch.

The shape of Detectron2's tools/deploy/export_model.py, without `detectron2.export` (caffe2; it fails to
import on torch 2): a tracing adapter flattens the model to tensors (detnas_d2/export.py), BatchNorms
are folded into the convs before them, and the exported model (torch.jit.load / onnxruntime on CPU)
and the unfolded PyTorch model are run on sample images; the largest difference is printed, and a
mismatch beyond the tolerance exits with status 1 (a bad config, arch, weights file or option: 2).

    python tools/export_model.py --config-file configs/Toy/det_subnet.yaml --format onnx --output out/det
    python tools/export_model.py --config-file configs/Toy/cls_subnet.yaml --format torchscript \
        --output out/cls MODEL.WEIGHTS output/toy/4/model_final.pth
    python tools/export_model.py --config-file configs/Toy/det_subnet.yaml --backbone-only --format onnx \
        --output out/backbone MODEL.DETNAS.ARCH output/toy/3/best_arch.yaml

Writes <output>/model.ts or <output>/model.onnx and <output>/export_info.json (inputs, outputs, arch,
BatchNorms folded, parity per sample). Models run on CPU. Inputs and outputs: see detnas_d2/export.py.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import detnas_d2  # noqa: E402,F401  (compat shims, registrations)
from detnas_d2.export import (  # noqa: E402
    DEFAULT_OPSET,
    DEFAULT_RTOL,
    ExportError,
    build_export_model,
    model_kind,
    run_export,
    sample_images,
)


def get_parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config-file", required=True, metavar="FILE", help="a subnet config (detector or classifier)")
    p.add_argument("--format", choices=("torchscript", "onnx"), default="torchscript")
    p.add_argument("--export-method", choices=("tracing", "scripting"), default="tracing",
                   help="scripting: TorchScript of --backbone-only or a classifier, when the model scripts")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--backbone-only", action="store_true", help="export the ShuffleNetV2 subnet backbone alone")
    p.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorms (default: fold them into the convs)")
    p.add_argument("--num-samples", type=int, default=4, help="sample images of DATASETS.TEST[0] (default 4)")
    p.add_argument("--sample-image", action="append", default=[], metavar="FILE",
                   help="sample image file(s) instead of DATASETS.TEST[0] (repeatable)")
    p.add_argument("--random-input", default="", metavar="HxW",
                   help="random images of this size instead of a dataset (e.g. when COCO is not installed)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= 16; default {DEFAULT_OPSET})")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                   help=f"parity tolerance: max|exported - pytorch| <= rtol * max|pytorch| (default {DEFAULT_RTOL:g})")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config options KEY VALUE ...")
    return p


def _error(message: str) -> int:
    print(f"export_model.py: error: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    from detnas_d2.config import get_detnas_cfg

    if not os.path.isfile(args.config_file):
        return _error(f"--config-file {args.config_file}: no such file")
    if args.format == "onnx" and args.opset < 16:
        return _error(f"--opset {args.opset}: ROIAlign(aligned=True) and this exporter need opset 16 or higher")
    if args.num_samples < 1:
        return _error("--num-samples must be at least 1")
    try:
        cfg = get_detnas_cfg(args.config_file, args.opts)
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        return _error(f"bad config {args.config_file} / options {args.opts}: {type(e).__name__}: {e}")
    try:
        model = build_export_model(cfg)
    except ExportError as e:
        return _error(str(e))
    except (ValueError, KeyError, FileNotFoundError) as e:  # arch files, MODEL.DETNAS.*, checkpoint fit
        return _error(f"cannot build the model of {args.config_file}: {e}")
    try:
        images = sample_images(cfg, model_kind(model), args.num_samples, args.sample_image, args.random_input)
        info = run_export(
            model, args.format, args.output, images, backbone_only=args.backbone_only,
            method=args.export_method, fold_bn=not args.no_fold_bn, opset=args.opset, rtol=args.rtol,
        )
    except ExportError as e:
        return _error(str(e))
    except ValueError as e:
        return _error(str(e))
    if not info["ok"]:
        print(f"export_model.py: the exported model differs from PyTorch beyond the tolerance (details in "
              f"{os.path.join(args.output, 'export_info.json')})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
