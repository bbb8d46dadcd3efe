"""The searched subnet in Faster R-CNN FPN on COCO (pipeline steps 5 and 6) as a Detectron2 LazyConfig:
the model of configs/COCO-Detection/subnet_small_FPN_1x.yaml (same modules, same checkpoints) with its
1x recipe: 90k iterations at batch 16, SGD lr 0.02 (momentum 0.9, weight decay 1e-4, none on norm
layers), steps 60k/80k, 500 linear warm-up iterations from 0.001 x lr, single-scale 800 training.

    python tools/lazyconfig_train_net.py --num-gpus 8 --config-file configs/LazyConfigs/subnet_small_FPN_1x.py \
        model.backbone.bottom_up.arch=output/search/best_arch.yaml \
        train.init_checkpoint=output/imagenet/subnet_small/model_final.pth
    python tools/lazyconfig_train_net.py --eval-only --config-file configs/LazyConfigs/subnet_small_FPN_1x.py \
        model.backbone.bottom_up.arch=output/search/best_arch.yaml \
        train.init_checkpoint=output/coco/subnet_small_FPN_1x/model_final.pth

train.init_checkpoint takes what MODEL.WEIGHTS of the yacs config takes (the step-4 ImageNet classifier,
a detector trained with the yacs config or with this file, MMRazor's or the official DetNAS files).
The arch defaults to the official DetNAS-300M searched for COCO FPN.
"""

import os

import detectron2.data.transforms as T
import torch
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch import GeneralizedRCNN
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, FastRCNNOutputLayers, StandardROIHeads
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf

from detnas_d2.evaluation import build_detection_evaluator
from detnas_d2.modeling.lazy_backbones import detnas_subnet_backbone
from detnas_d2.solver import get_optimizer_params

OFFICIAL_ARCH = os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "archs", "official", "COCO_FPN_300M.yaml")
)

model = L(GeneralizedRCNN)(
    backbone=L(FPN)(
        bottom_up=L(detnas_subnet_backbone)(
            arch=OFFICIAL_ARCH,  # an arch file (search_net.py's best_arch.yaml) or block ids
            space="small",
            width_mult=1.0,
            norm="SyncBN",
            out_features=["res2", "res3", "res4", "res5"],
            freeze_at=0,  # SyncBN trains every layer, stem included
        ),
        in_features="${.bottom_up.out_features}",
        out_channels=256,
        norm="SyncBN",
        top_block=L(LastLevelMaxPool)(),
    ),
    proposal_generator=L(RPN)(
        in_features=["p2", "p3", "p4", "p5", "p6"],
        head=L(StandardRPNHead)(in_channels=256, num_anchors=3),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[32], [64], [128], [256], [512]],
            aspect_ratios=[0.5, 1.0, 2.0],
            strides=[4, 8, 16, 32, 64],
            offset=0.0,
        ),
        anchor_matcher=L(Matcher)(
            thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True
        ),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(2000, 1000),  # per level, training / test
        post_nms_topk=(1000, 1000),
        nms_thresh=0.7,
    ),
    roi_heads=L(StandardROIHeads)(
        num_classes=80,
        batch_size_per_image=512,
        positive_fraction=0.25,
        proposal_matcher=L(Matcher)(
            thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False
        ),
        box_in_features=["p2", "p3", "p4", "p5"],
        box_pooler=L(ROIPooler)(
            output_size=7,
            scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32),
            sampling_ratio=0,
            pooler_type="ROIAlignV2",
        ),
        box_head=L(FastRCNNConvFCHead)(  # 4conv1fc with SyncBN
            input_shape=ShapeSpec(channels=256, height=7, width=7),
            conv_dims=[256, 256, 256, 256],
            fc_dims=[1024],
            conv_norm="SyncBN",
        ),
        box_predictor=L(FastRCNNOutputLayers)(
            input_shape=ShapeSpec(channels=1024),
            test_score_thresh=0.05,
            box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
            num_classes="${..num_classes}",
        ),
    ),
    # BGR, ImageNet mean and std in 0-255 units: as the ImageNet steps (configs/ImageNet)
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[57.375, 57.120, 58.395],
    input_format="BGR",
)

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=(800,), max_size=1333, sample_style="choice"),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
    ),
    total_batch_size=16,  # over all GPUs
    num_workers=4,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)
# COCOEvaluator, or for a Pascal VOC dataset detnas_d2's PascalVOCEvaluator
dataloader.evaluator = L(build_detection_evaluator)(
    dataset_name="${..test.dataset.names}", output_dir="${...train.output_dir}/inference"
)

optimizer = L(torch.optim.SGD)(
    params=L(get_optimizer_params)(  # the model is set by the training tool
        base_lr="${..lr}",
        weight_decay="${..weight_decay}",
        weight_decay_norm=0.0,
        weight_decay_bias=None,  # the weight decay
        weight_decay_depthwise="${..weight_decay}",
    ),
    lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
)

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[60000, 80000], num_updates=90000
    ),
    warmup_length=500 / 90000,
    warmup_factor=0.001,
)

train = dict(
    output_dir="output/lazy/subnet_small_FPN_1x",
    init_checkpoint="",  # step 4's ImageNet checkpoint, or a detector's
    max_iter=90000,
    amp=dict(enabled=False),  # True: mixed precision (AMPTrainer, CUDA only)
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=5000, max_to_keep=100),
    eval_period=0,  # evaluate at the end only
    log_period=20,
    device="cuda",  # cpu where CUDA is missing
)
