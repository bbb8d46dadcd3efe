"""Tracing adapters: a DetNAS subnet model flattened to tensors in and tensors out (module doc of
detnas_d2/export/__init__.py for each form's inputs and outputs)."""

from typing import List, Sequence

import torch
from detectron2.modeling import GeneralizedRCNN, RetinaNet
from torch import nn

from ..modeling.backbone import ShuffleNetV2Subnet, ShuffleNetV2Supernet
from ..modeling.classifier import DetNASClassifier

__all__ = [
    "ExportError",
    "model_kind",
    "find_subnet",
    "DetectorAdapter",
    "ClassifierAdapter",
    "BackboneAdapter",
    "make_adapter",
    "adapter_inputs",
]


class ExportError(RuntimeError):
    """An export that cannot be done or whose exported model disagrees with PyTorch."""


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
        raise ExportError(
            f"expected one ShuffleNetV2Subnet in {type(model).__name__}, found {len(found)}"
        )
    return found[0]


class DetectorAdapter(nn.Module):
    """image (3, H, W) float32 -> (boxes (N, 4), scores (N,), classes (N,)) of a Detectron2 detector."""

    input_names = ("image",)
    input_doc = (
        "float32 (3, H, W), INPUT.FORMAT channel order, 0-255, resized by the test transform"
    )
    output_names = ("boxes", "scores", "classes")
    dynamic_axes = {
        "image": {1: "height", 2: "width"},
        "boxes": {0: "detections"},
        "scores": {0: "detections"},
        "classes": {0: "detections"},
    }

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.kind = model_kind(model)
        if self.kind == "classifier":
            raise ExportError(
                "DetectorAdapter takes a detector; use ClassifierAdapter for a DetNASClassifier"
            )

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
    input_doc = "float32 (B, 3, H, W), INPUT.FORMAT channel order, 0-255"
    output_names = ("logits",)
    dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}}

    def __init__(self, model: nn.Module):
        super().__init__()
        if model_kind(model) != "classifier":
            raise ExportError(
                f"ClassifierAdapter takes a DetNASClassifier, got {type(model).__name__}"
            )
        self.model = model

    def forward(self, images: torch.Tensor):
        m = self.model
        x = (images - m.pixel_mean) / m.pixel_std
        return m.head(m.backbone(x)[m.in_feature])


class BackboneAdapter(nn.Module):
    """images (B, 3, H, W) normalised -> the subnet's output features, in network order."""

    input_names = ("images",)
    input_doc = "float32 (B, 3, H, W), normalised: (pixels - MODEL.PIXEL_MEAN) / MODEL.PIXEL_STD"

    def __init__(self, backbone: ShuffleNetV2Subnet):
        super().__init__()
        self.backbone = backbone
        self.output_names = tuple(backbone._out_features)
        self.dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}}
        self.dynamic_axes.update(
            {name: {0: "batch", 2: f"{name}_h", 3: f"{name}_w"} for name in self.output_names}
        )

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


def adapter_inputs(
    model: nn.Module, adapter: nn.Module, images: Sequence[torch.Tensor]
) -> List[torch.Tensor]:
    """The adapter's input tensor for each test-time image (3, H, W) in INPUT.FORMAT order."""
    if isinstance(adapter, DetectorAdapter):
        return [im.float() for im in images]
    if isinstance(adapter, ClassifierAdapter):
        return [im.float()[None] for im in images]
    with torch.no_grad():  # backbone: the model's own normalisation (and padding, for detectors)
        if model_kind(model) == "classifier":
            return [model.preprocess_image([{"image": im}]) for im in images]
        return [model.preprocess_image([{"image": im}]).tensor for im in images]
