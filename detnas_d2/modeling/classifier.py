"""`DetNASClassifier`: the classification form of a DetNAS backbone (ImageNet steps 1 and 4)."""

from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.utils.events import get_event_storage
from torch import nn

from ..search_space import space_from_cfg
from .heads import ClassifierHead

__all__ = ["DetNASClassifier"]


@META_ARCH_REGISTRY.register()
class DetNASClassifier(nn.Module):
    """Backbone (supernet or subnet), then `ClassifierHead` on its deepest feature.

    Input: a list of dicts, one per image, each with
      "image": uint8 tensor (C, H, W) in INPUT.FORMAT channel order; all images of a batch the same size,
      "label": int class index in [0, MODEL.CLASSIFIER.NUM_CLASSES) (training only).
    Training returns {"loss_cls": cross-entropy with MODEL.CLASSIFIER.LABEL_SMOOTHING} and puts the
    batch's top-1 accuracy in the EventStorage as "cls_accuracy".
    Inference returns a list with one dict per image: {"pred_logits": float tensor (num_classes,)},
    the unnormalised class scores (softmax them for probabilities), on the model's device.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        in_feature: str,
        num_classes: int,
        pixel_mean: List[float],
        pixel_std: List[float],
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.in_feature = in_feature
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(f"PIXEL_MEAN {pixel_mean} and PIXEL_STD {pixel_std} differ in length")
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        in_feature = max(shapes, key=lambda name: shapes[name].stride)
        head = ClassifierHead(
            shapes[in_feature].channels,
            cfg.MODEL.CLASSIFIER.NUM_CLASSES,
            head_channels=cfg.MODEL.CLASSIFIER.HEAD_CHANNELS,
            dropout=cfg.MODEL.CLASSIFIER.DROPOUT,
            norm=cfg.MODEL.DETNAS.NORM,
            conv_bias=space_from_cfg(cfg).official,
        )
        return {
            "backbone": backbone,
            "head": head,
            "in_feature": in_feature,
            "num_classes": cfg.MODEL.CLASSIFIER.NUM_CLASSES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "label_smoothing": cfg.MODEL.CLASSIFIER.LABEL_SMOOTHING,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> torch.Tensor:
        """Stack the images (moved to the device as uint8, then converted) and normalise them."""
        sizes = {tuple(x["image"].shape) for x in batched_inputs}
        if len(sizes) != 1:
            raise ValueError(
                f"DetNASClassifier needs images of one size per batch, got sizes {sorted(sizes)}; "
                "use the classification mapper (detnas_d2.data.classification), which crops to a fixed size"
            )
        images = torch.stack([x["image"] for x in batched_inputs]).to(
            self.device, non_blocking=True
        )
        return (images.float() - self.pixel_mean) / self.pixel_std

    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            labels = torch.as_tensor([x["label"] for x in batched_inputs], dtype=torch.long)
            if labels.min() < 0 or labels.max() >= self.num_classes:
                raise ValueError(
                    f"labels must be in [0, {self.num_classes}) (MODEL.CLASSIFIER.NUM_CLASSES), "
                    f"got {labels.tolist()}"
                )
        images = self.preprocess_image(batched_inputs)
        logits = self.head(self.backbone(images)[self.in_feature])
        if not self.training:
            return [{"pred_logits": scores} for scores in logits]

        labels = labels.to(self.device, non_blocking=True)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        get_event_storage().put_scalar(
            "cls_accuracy", (logits.detach().argmax(dim=1) == labels).float().mean()
        )
        return {"loss_cls": loss}
