"""Deployment export of DetNAS subnet models: tracing adapters, TorchScript/ONNX files, parity.

Detectron2 v0.6's `detectron2.export` imports caffe2 and fails on torch 2, so this package does what its
`TracingAdapter` and `tools/deploy/export_model.py` do, with torch's own tools, for the three model forms
of this project (`adapters`):

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

`torchscript_onnx` writes and runs the files, `parity` compares them with PyTorch (and finds NaN or Inf
outputs, which PyTorch's own must not hold); BatchNorms are folded
before export by `detnas_d2.modeling.bn_fold`; detnas_d2.export.cli (tools/export_model.py) does the whole export.
"""

from .adapters import (
    BackboneAdapter,
    ClassifierAdapter,
    DetectorAdapter,
    ExportError,
    adapter_inputs,
    find_subnet,
    make_adapter,
    model_kind,
)
from .parity import DEFAULT_RTOL, compare_outputs, non_finite_output
from .torchscript_onnx import (
    DEFAULT_OPSET,
    FORMATS,
    as_tuple,
    export_onnx,
    export_torchscript,
    exported_file,
    load_exported,
)

__all__ = [
    "BackboneAdapter",
    "ClassifierAdapter",
    "DEFAULT_OPSET",
    "DEFAULT_RTOL",
    "DetectorAdapter",
    "ExportError",
    "FORMATS",
    "adapter_inputs",
    "as_tuple",
    "compare_outputs",
    "export_onnx",
    "export_torchscript",
    "exported_file",
    "find_subnet",
    "load_exported",
    "make_adapter",
    "model_kind",
    "non_finite_output",
]
