"""The searched subnet in RetinaNet on COCO (pipeline steps 5 and 6) as a Detectron2 LazyConfig: the model
of configs/COCO-Detection/subnet_small_RetinaNet_1x.yaml (same modules, same checkpoints; C3-C5 -> FPN
P3-P7, P6 from res5) with its 1x recipe: that of subnet_small_FPN_1x.py with lr 0.01.

    python tools/lazyconfig_train_net.py --num-gpus 8 --config-file configs/LazyConfigs/subnet_small_RetinaNet_1x.py \
        model.backbone.bottom_up.arch=output/search/best_arch.yaml \
        train.init_checkpoint=output/imagenet/subnet_small/model_final.pth

The arch defaults to the official DetNAS-300M searched for COCO RetinaNet.
"""

import os

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch import RetinaNet
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead

from detnas_d2.modeling.lazy_backbones import detnas_subnet_backbone, stage_channels

from .subnet_small_FPN_1x import dataloader, lr_multiplier, optimizer, train  # noqa: F401  (entries of this config)

OFFICIAL_ARCH = os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "archs", "official", "COCO_RetinaNet_300M.yaml")
)

model = L(RetinaNet)(
    backbone=L(FPN)(
        bottom_up=L(detnas_subnet_backbone)(
            arch=OFFICIAL_ARCH,  # an arch file (search_net.py's best_arch.yaml) or block ids
            space="small",
            width_mult=1.0,
            norm="SyncBN",
            out_features=["res3", "res4", "res5"],
            freeze_at=0,
        ),
        in_features="${.bottom_up.out_features}",
        out_channels=256,
        norm="SyncBN",
        top_block=L(LastLevelP6P7)(
            in_channels=L(stage_channels)(  # res5's channels in the backbone's space
                space="${...bottom_up.space}", width_mult="${...bottom_up.width_mult}", stage="res5"
            ),
            out_channels="${..out_channels}",
        ),
    ),
    head=L(RetinaNetHead)(
        input_shape=[ShapeSpec(channels=256)] * 5,
        num_classes="${..num_classes}",
        conv_dims=[256, 256, 256, 256],
        prior_prob=0.01,
        num_anchors=9,
    ),
    anchor_generator=L(DefaultAnchorGenerator)(
        # three sizes per octave: x, x * 2^(1/3), x * 2^(2/3) for x in 32..512
        sizes=[
            [32, 40.32, 50.80],
            [64, 80.63, 101.59],
            [128, 161.27, 203.19],
            [256, 322.54, 406.37],
            [512, 645.08, 812.75],
        ],
        aspect_ratios=[0.5, 1.0, 2.0],
        strides=[8, 16, 32, 64, 128],
        offset=0.0,
    ),
    box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
    anchor_matcher=L(Matcher)(
        thresholds=[0.4, 0.5], labels=[0, -1, 1], allow_low_quality_matches=True
    ),
    num_classes=80,
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    focal_loss_alpha=0.25,
    focal_loss_gamma=2.0,
    smooth_l1_beta=0.0,
    test_score_thresh=0.05,
    test_topk_candidates=1000,
    test_nms_thresh=0.5,
    max_detections_per_image=100,
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[57.375, 57.120, 58.395],
    input_format="BGR",
)

optimizer.lr = 0.01
train.output_dir = "output/lazy/subnet_small_RetinaNet_1x"
