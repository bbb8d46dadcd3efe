"""detnas_d2.solver: weight-decay groups, untouched unsampled blocks, WarmupLinearDecay and its resume."""

import os

import detnas_d2  # noqa: F401  (compat shims before detectron2 imports)
from detnas_d2 import add_detnas_config

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import SimpleTrainer, hooks
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from fvcore.common.checkpoint import Checkpointer
from torch import nn

from detnas_d2.modeling import find_supernet, set_model_arch
from detnas_d2.solver import build_lr_scheduler, build_optimizer


def _cfg(**solver):
    cfg = get_cfg()
    add_detnas_config(cfg)
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.MOMENTUM = 0.9
    cfg.SOLVER.WEIGHT_DECAY = 0.01
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.WEIGHT_DECAY_BIAS = 0.002
    cfg.SOLVER.WEIGHT_DECAY_DEPTHWISE = 0.003
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


class _AllLayerKinds(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, bias=False)
        self.depthwise = nn.Conv2d(8, 8, 3, groups=8, bias=True)
        self.grouped = nn.Conv2d(8, 8, 1, groups=2, bias=False)  # grouped, not depthwise
        self.bn = nn.BatchNorm2d(8)
        self.sync_bn = NaiveSyncBatchNorm(8)
        self.gn = nn.GroupNorm(2, 8)
        self.frozen_bn = FrozenBatchNorm2d(8)
        self.linear = nn.Linear(8, 4)

    def forward(self, x):
        x = self.frozen_bn(
            self.gn(self.sync_bn(self.bn(self.grouped(self.depthwise(self.conv(x))))))
        )
        return self.linear(x.mean(dim=(2, 3)))


def _decay_of(optimizer):
    return {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}


def test_weight_decay_groups():
    model = _AllLayerKinds()
    decay = _decay_of(build_optimizer(_cfg(), model))
    expected = {
        model.conv.weight: 0.01,
        model.depthwise.weight: 0.003,
        model.depthwise.bias: 0.002,
        model.grouped.weight: 0.01,
        model.linear.weight: 0.01,
        model.linear.bias: 0.002,
    }
    # As in Detectron2, WEIGHT_DECAY_BIAS (when set) also applies to the biases of norm layers.
    for norm in (model.bn, model.sync_bn, model.gn):
        expected.update({norm.weight: 0.0, norm.bias: 0.002})
    assert decay == {id(p): wd for p, wd in expected.items()}

    # WEIGHT_DECAY_DEPTHWISE None: depthwise weights decay like any weight.
    decay = _decay_of(build_optimizer(_cfg(WEIGHT_DECAY_DEPTHWISE=None), model))
    assert decay[id(model.depthwise.weight)] == 0.01


def test_zero_grad_step_decays_only_decayed_groups():
    model = _AllLayerKinds()
    optimizer = build_optimizer(_cfg(WEIGHT_DECAY_BIAS=0.0, WEIGHT_DECAY_DEPTHWISE=0.0), model)
    nn.init.normal_(model.bn.weight)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    after = dict(model.named_parameters())
    for name in (
        "bn.weight",
        "bn.bias",
        "gn.weight",
        "depthwise.weight",
        "depthwise.bias",
        "linear.bias",
    ):
        assert torch.equal(after[name], before[name]), name
    for name in ("conv.weight", "grouped.weight", "linear.weight"):
        torch.testing.assert_close(after[name], before[name] * (1 - 0.1 * 0.01))


def _toy_supernet_classifier():
    cfg = get_cfg()
    add_detnas_config(cfg)
    cfg.merge_from_file("configs/ImageNet/supernet_small.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.DETNAS.WIDTH_MULT = 0.25
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = 3
    cfg.MODEL.CLASSIFIER.HEAD_CHANNELS = 32
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True  # Detectron2's clipper must skip grad-less params too
    return cfg, build_model(cfg)


def test_unsampled_blocks_get_no_update():
    torch.manual_seed(0)
    cfg, model = _toy_supernet_classifier()
    optimizer = build_optimizer(cfg, model)
    supernet = find_supernet(model)
    layers = supernet.space.num_layers
    batch = [
        {"image": torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8), "label": i % 3}
        for i in range(4)
    ]

    def train_step(arch):
        set_model_arch(model, arch)
        optimizer.zero_grad()
        with EventStorage():
            model(batch)["loss_cls"].backward()
        optimizer.step()

    train_step((0,) * layers)  # block 0 everywhere gets momentum
    train_step((1,) * layers)
    # Block 1 sampled in the middle layers only: block 0 has momentum, yet must not move.
    snapshot = {name: p.detach().clone() for name, p in model.named_parameters()}
    arch = (1,) * 4 + (2,) * (layers - 8) + (1,) * 4
    train_step(arch)
    for layer in range(layers):
        for choice, block in enumerate(supernet.choice_blocks(layer)):
            params = list(block.parameters())
            changed = [
                not torch.equal(p, snapshot[n])
                for n, p in model.named_parameters()
                if any(p is q for q in params)
            ]
            if choice == arch[layer]:
                assert any(changed), f"layer {layer} sampled block {choice} was not updated"
            else:
                assert not any(changed), f"layer {layer} unsampled block {choice} changed"


def _sched_cfg(name="WarmupLinearDecay"):
    return _cfg(
        LR_SCHEDULER_NAME=name,
        BASE_LR=1.0,
        MAX_ITER=100,
        WARMUP_ITERS=10,
        WARMUP_FACTOR=0.1,
        WARMUP_METHOD="linear",
        STEPS=(50,),
        GAMMA=0.1,
    )


def _lrs(cfg, iters):
    optimizer = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(iters):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_warmup_linear_decay_values():
    lrs = _lrs(_sched_cfg(), 100)
    # warm-up 0.1 -> 0.9 over 10 iterations (0.9 = the linear decay's value at iteration 10), then to 0.
    for it, lr in {0: 0.1, 5: 0.5, 10: 0.9, 55: 0.45, 90: 0.1, 99: 0.01, 100: 0.0}.items():
        assert lrs[it] == pytest.approx(lr, abs=1e-9), it
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))
    assert all(a > b for a, b in zip(lrs[10:100], lrs[11:101]))


def test_detectron2_schedulers_delegated():
    lrs = _lrs(_sched_cfg("WarmupMultiStepLR"), 100)
    assert lrs[20] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.1)
    lrs = _lrs(_sched_cfg("WarmupCosineLR"), 100)
    assert lrs[100] == pytest.approx(0.0, abs=1e-9) and lrs[50] < lrs[20]
    with pytest.raises(ValueError, match="Unknown LR scheduler"):
        _lrs(_sched_cfg("NoSuchLR"), 1)


class _LinearModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, batch):
        return {"loss": self.linear(batch).pow(2).mean()}


def _trainer(cfg, save_dir, checkpoint_period=1000):
    """A Detectron2 trainer with the hooks in DefaultTrainer's order: LR scheduler, then checkpointer."""
    torch.manual_seed(0)
    os.makedirs(save_dir, exist_ok=True)
    model = _LinearModel()
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    trainer = SimpleTrainer(model, iter(lambda: torch.ones(4, 2), None), optimizer)
    checkpointer = Checkpointer(model, save_dir, trainer=trainer)
    trainer.register_hooks(
        [
            hooks.LRScheduler(optimizer, scheduler),
            hooks.PeriodicCheckpointer(checkpointer, checkpoint_period),
        ]
    )
    return trainer, checkpointer


def test_warmup_linear_decay_resumes_through_checkpointer(tmp_path):
    cfg = _sched_cfg()
    straight, _ = _trainer(cfg, str(tmp_path / "straight"))
    straight.train(0, 60)

    interrupted, _ = _trainer(cfg, str(tmp_path), checkpoint_period=30)
    interrupted.train(0, 45)  # saves model_0000029, then runs on past it

    resumed, checkpointer = _trainer(cfg, str(tmp_path))
    checkpointer.load(str(tmp_path / "model_0000029.pth"))
    assert resumed.iter == 29
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1.0 * (1 - 30 / 100))
    resumed.train(resumed.iter + 1, 60)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1.0 * (1 - 60 / 100))
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]
    torch.testing.assert_close(resumed.model.linear.weight, straight.model.linear.weight)
