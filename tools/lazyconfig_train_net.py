#!/usr/bin/env python
"""Train or evaluate a detector defined in a Detectron2 LazyConfig Python file (configs/LazyConfigs/) with
Detectron2's LazyConfig loop and DetNAS's checkpointer (detnas_d2.lazy_train_net):

    python tools/lazyconfig_train_net.py --num-gpus 8 --config-file configs/LazyConfigs/subnet_small_FPN_1x.py \
        model.backbone.bottom_up.arch=output/search/best_arch.yaml \
        train.init_checkpoint=output/imagenet/subnet_small/model_final.pth
    python tools/lazyconfig_train_net.py --eval-only --config-file configs/LazyConfigs/subnet_small_FPN_1x.py \
        model.backbone.bottom_up.arch=output/search/best_arch.yaml \
        train.init_checkpoint=output/coco/subnet_small_FPN_1x/model_final.pth

train.init_checkpoint takes the checkpoints the yacs configs take (MODEL.WEIGHTS), and the checkpoints
written here load into the yacs configs' model of the same detector (docs/paper_settings.md).
"""

from detnas_d2.lazy_train_net import run

if __name__ == "__main__":
    run()
