"""The toy RetinaNet subnet detector (configs/Toy/det_subnet_retinanet.yaml: the same model, checkpoints
and recipe) as a LazyConfig: subnet_small_RetinaNet_1x.py narrowed to the toy shapes (width 0.25, plain
BN, FPN P3-P7 of 32 channels, a 2-conv head, anchors 8-128 px), on toy_det_train / toy_det_val.

    python tools/lazyconfig_train_net.py --config-file configs/LazyConfigs/Toy/subnet_RetinaNet.py \
        train.init_checkpoint=output/toy/cls_subnet/model_final.pth
"""

from detectron2.layers import ShapeSpec

from ..subnet_small_RetinaNet_1x import model, optimizer
from .common import TOY_ARCH, dataloader, lr_multiplier, train  # noqa: F401  (entries of this config)

backbone = model.backbone
backbone.bottom_up.update(arch=TOY_ARCH, width_mult=0.25, norm="BN")
backbone.update(out_channels=32, norm="")
model.head.update(input_shape=[ShapeSpec(channels=32)] * 5, conv_dims=[32, 32])
model.anchor_generator.sizes = [
    [8, 10.08, 12.70],
    [16, 20.16, 25.40],
    [32, 40.32, 50.80],
    [64, 80.63, 101.59],
    [128, 161.27, 203.19],
]
model.update(num_classes=5, test_topk_candidates=200)

optimizer.lr = 0.02
train.output_dir = "output/lazy/toy_subnet_RetinaNet"
