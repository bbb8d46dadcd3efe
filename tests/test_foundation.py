"""The Detectron2 0.6 install with detnas_d2's shims: imports, env report, missing compiled ops, and a
standard Faster R-CNN that trains one step and runs inference on CPU on the toy detection images."""

import detnas_d2
from detnas_d2 import compat

import detectron2
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import build_detection_train_loader
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from detnas_d2.compat import MissingCompiledOpError, has_compiled_ops
from detnas_d2.data import toy

without_compiled_ops = pytest.mark.skipif(
    has_compiled_ops(), reason="Detectron2 has its compiled ops here"
)


def test_imports_and_pil_alias():
    from PIL import Image

    assert detnas_d2.__version__ and detectron2.__version__.startswith("0.6")  # main still says 0.6
    if compat.uses_image_linear():  # v0.6 sources as released: compat aliased it
        assert Image.LINEAR == Image.BILINEAR
    from detectron2.data.transforms import (
        ExtentTransform,
        ResizeTransform,
    )  # v0.6: Image.LINEAR default

    image = torch.zeros(4, 4, 3, dtype=torch.uint8).numpy()
    assert ResizeTransform(4, 4, 8, 8).apply_image(image).shape == (8, 8, 3)
    assert ExtentTransform((0, 0, 4, 4), (8, 8)).apply_image(image).shape == (8, 8, 3)


def test_collect_env_info():
    from detectron2.utils.collect_env import collect_env_info

    info = collect_env_info()
    assert "detectron2" in info and "PyTorch" in info and torch.__version__ in info


def test_compat_stub_names_the_op():
    stub = compat._MissingCompiledOps("detectron2._C")
    with pytest.raises(MissingCompiledOpError, match=r"detectron2\._C\.deform_conv_forward"):
        stub.deform_conv_forward
    assert not hasattr(stub, "__file__")  # dunder look-ups stay plain AttributeErrors


@without_compiled_ops
def test_missing_compiled_ops_raise_named_error():
    """Without compiled ops, the layers import and using one raises an error naming it. Judged by what the
    installed Detectron2 does, for v0.6 with compat's stub, v0.6 with install.sh's fixes, and main."""
    from detectron2.layers import DeformConv, ROIAlignRotated
    from detectron2.structures import RotatedBoxes, pairwise_iou_rotated

    x = torch.randn(1, 2, 5, 5)
    try:
        conv = DeformConv(2, 2, kernel_size=3, padding=1)
    except ImportError as e:  # Detectron2 main: a placeholder class without `_C`
        assert "detectron2._C" in str(e)
    else:  # v0.6 runs DeformConv on CPU with torchvision's deform_conv2d, without `_C`
        assert conv(x, torch.zeros(1, 18, 5, 5)).shape == (1, 2, 5, 5)
    # v0.6: `_C.<op>` (compat's stub or install.sh's guard); main: `torch.ops.detectron2.<op>`
    missing = (RuntimeError, AttributeError, NotImplementedError)
    pooler = ROIAlignRotated(output_size=2, spatial_scale=1.0, sampling_ratio=0)
    with pytest.raises(missing, match="roi_align_rotated_forward"):
        pooler(x, torch.tensor([[0.0, 2.0, 2.0, 2.0, 2.0, 30.0]]))
    boxes = RotatedBoxes(torch.tensor([[5.0, 5.0, 4.0, 4.0, 30.0]]))
    with pytest.raises(missing, match="box_iou_rotated"):
        pairwise_iou_rotated(boxes, boxes)


def _tiny_faster_rcnn_cfg():
    """Faster R-CNN with a ResNet-18 FPN backbone, narrow heads and 128-pixel inputs."""
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.NORM = "BN"  # from scratch: FrozenBN would leave the activations unnormalised
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 32
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(toy.CATEGORIES)
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.INPUT.MIN_SIZE_TRAIN = (128,)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    cfg.INPUT.MIN_SIZE_TEST = 128
    cfg.INPUT.MAX_SIZE_TEST = 128
    cfg.DATASETS.TRAIN = ("toy_det_train",)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SEED = 0
    return cfg


def test_faster_rcnn_trains_and_infers_on_toy_images():
    torch.manual_seed(0)
    cfg = _tiny_faster_rcnn_cfg()
    model = build_model(cfg)
    batch = next(iter(build_detection_train_loader(cfg)))
    assert len(batch) == 2 and all(len(d["instances"]) > 0 for d in batch)
    assert all(d["image"].shape[0] == 3 and max(d["image"].shape[1:]) <= 128 for d in batch)

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    with EventStorage(0):
        losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    parts = (
        "backbone.bottom_up.stem",
        "backbone.fpn_output2",
        "proposal_generator",
        "roi_heads.box_head",
    )
    for part in parts + ("roi_heads.box_predictor",):
        assert any(name.startswith(part) for name in changed), part

    model.eval()
    with torch.no_grad():
        (output,) = model([{"image": batch[0]["image"], "height": 256, "width": 256}])
    instances = output["instances"]
    assert instances.image_size == (256, 256)  # rescaled to the requested output size
    assert len(instances) > 0
    boxes = instances.pred_boxes.tensor
    assert torch.isfinite(boxes).all() and boxes.min() >= 0 and boxes.max() <= 256
    assert ((instances.scores >= 0) & (instances.scores <= 1)).all()
    assert ((instances.pred_classes >= 0) & (instances.pred_classes < len(toy.CATEGORIES))).all()
