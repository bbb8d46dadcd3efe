"""The toy subnet detector (configs/Toy/det_subnet.yaml: the same model, checkpoints and recipe) as a
LazyConfig: subnet_small_FPN_1x.py narrowed to the toy shapes (width 0.25, plain BN, FPN of 32
channels, a 2fc box head, 128-px images), trained on toy_det_train and tested on toy_det_val on a CPU.

    python tools/lazyconfig_train_net.py --config-file configs/LazyConfigs/Toy/subnet_FPN.py \
        train.init_checkpoint=output/toy/cls_subnet/model_final.pth
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import FastRCNNConvFCHead

from ..subnet_small_FPN_1x import model, optimizer
from .common import TOY_ARCH, dataloader, lr_multiplier, train  # noqa: F401  (entries of this config)

backbone = model.backbone
backbone.bottom_up.update(arch=TOY_ARCH, width_mult=0.25, norm="BN")
backbone.update(out_channels=32, norm="")
rpn = model.proposal_generator
rpn.head.in_channels = 32
rpn.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
rpn.update(
    batch_size_per_image=64, positive_fraction=0.5, pre_nms_topk=(200, 200), post_nms_topk=(100, 50)
)
roi_heads = model.roi_heads
roi_heads.update(num_classes=5, batch_size_per_image=32, positive_fraction=0.5)
roi_heads.box_pooler.sampling_ratio = 2  # bounded ROIAlign cost
roi_heads.box_head = L(FastRCNNConvFCHead)(
    input_shape=ShapeSpec(channels=32, height=7, width=7), conv_dims=[], fc_dims=[128, 128]
)
roi_heads.box_predictor.input_shape = ShapeSpec(channels=128)

optimizer.lr = 0.04
train.output_dir = "output/lazy/toy_subnet_FPN"
