"""What the toy LazyConfigs share (configs/Toy/det_subnet*.yaml's recipe): the toy arch, and the 1x
configs' data loaders, schedule and training loop narrowed to the toy data (toy_det_train and
toy_det_val at 128 px, batch 8), 1,500 iterations on a CPU. Each toy config sets its output folder."""

from ..subnet_small_FPN_1x import dataloader, lr_multiplier, train

# The arch of configs/Toy/det_subnet.yaml and det_subnet_retinanet.yaml.
TOY_ARCH = ",".join(["shuffle_3x3", "shuffle_5x5", "shuffle_7x7", "shuffle_xception"] * 5)

dataloader.train.dataset.names = "toy_det_train"
dataloader.train.mapper.augmentations[0].update(short_edge_length=(128,), max_size=128)
dataloader.train.update(total_batch_size=8, num_workers=0)
dataloader.test.dataset.names = "toy_det_val"
dataloader.test.mapper.augmentations[0].update(short_edge_length=128, max_size=128)
dataloader.test.num_workers = 0

lr_multiplier.scheduler.update(values=[1.0, 0.1], milestones=[1300], num_updates=1500)
lr_multiplier.warmup_length = 100 / 1500

train.update(max_iter=1500, checkpointer=dict(period=500, max_to_keep=100), device="cpu", seed=0)
