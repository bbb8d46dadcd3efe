"""Supernet and subnet detection training on the toy data: path sampling, no update of unsampled blocks,
resume, supernet evaluation with the reference arch, and a subnet detector that learns."""

import collections
import dataclasses
import io
import json
import logging
import os
import random
import shutil

import detnas_d2  # noqa: F401  (first: compat shims, registrations)
from detnas_d2 import add_detnas_config

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import HookBase
from detectron2.evaluation import DatasetEvaluator
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng

from detnas_d2.engine import (
    DetNASTrainer,
    FlopsBinSampler,
    RandomPathHook,
    build_path_sampler,
    path_rng,
)
from detnas_d2.engine.sampling import num_random_layers, progressive_path
from detnas_d2.modeling import find_supernet
from detnas_d2.output_files import EVAL_RESULTS_FILE
from detnas_d2.search_space import get_space

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_cfg(config, output_dir, *opts):
    cfg = get_cfg()
    add_detnas_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "Toy", config))
    cfg.merge_from_list(["OUTPUT_DIR", str(output_dir), "DATASETS.TEST", "()", *opts])
    return cfg


class RecordPaths(HookBase):
    """Registered after RandomPathHook: records the arch the supernet runs in every iteration."""

    def __init__(self):
        self.paths = {}

    def before_step(self):
        self.paths[self.trainer.iter] = find_supernet(self.trainer.model).arch


# ---- samplers -------------------------------------------------------------------------------------


class AdditiveTable:
    """A FLOPs table with the interface of detnas_d2.flops.FlopsTable (additive per-layer FLOPs)."""

    def __init__(self, space, seed):
        rng = random.Random(seed)
        self.fixed = 1000
        self.layer_flops = [
            [rng.randrange(10, 200) for _ in range(4)] for _ in range(space.num_layers)
        ]

    def flops(self, arch):
        return self.fixed + sum(row[c] for row, c in zip(self.layer_flops, arch))


def test_flops_uniform_sampler_matches_exhaustive_distribution():
    small = get_space("small", 0.125)
    stages = tuple(dataclasses.replace(s, units=u) for s, u in zip(small.stages, (2, 1, 1, 1)))
    space = dataclasses.replace(small, stages=stages)  # 5 layers: 1024 paths, enumerable
    table = AdditiveTable(space, seed=3)
    sampler = FlopsBinSampler(space, table, 0, 0, num_bins=4)
    all_paths = [tuple((n >> (2 * i)) & 3 for i in range(5)) for n in range(4**5)]
    flops = {p: table.flops(p) for p in all_paths}
    assert sampler.flops_min == min(flops.values()) and sampler.flops_max == max(flops.values())

    def bin_of(f):
        return min(3, int((f - sampler.flops_min) / (sampler.flops_max - sampler.flops_min) * 4))

    members = collections.defaultdict(set)
    for p, f in flops.items():
        members[bin_of(f)].add(p)
    n = 8000
    draws = [sampler(path_rng(7, i)) for i in range(n)]
    per_bin = collections.Counter(bin_of(flops[p]) for p in draws)
    assert set(per_bin) == {0, 1, 2, 3}
    assert all(abs(c - n / 4) < 0.1 * n / 4 for c in per_bin.values()), per_bin  # bins uniform
    # Within the bin of the cheapest paths (rare under uniform paths), every path is equally likely.
    cheapest = members[0]
    counts = collections.Counter(p for p in draws if bin_of(flops[p]) == 0)
    expected = per_bin[0] / len(cheapest)
    assert 10 < expected and set(counts) == cheapest
    assert all(abs(c - expected) < 5 * expected**0.5 for c in counts.values()), (expected, counts)
    # The same (seed, iteration) gives the same path; another seed another sequence.
    assert [sampler(path_rng(7, i)) for i in range(50)] == draws[:50]
    assert [sampler(path_rng(8, i)) for i in range(50)] != draws[:50]


def test_flops_limits_and_unreachable_bins():
    space = get_space("small", 0.25)
    table = AdditiveTable(space, seed=1)
    limit = table.flops(space.default_arch()) + 300
    sampler = FlopsBinSampler(space, table, 0, limit, num_bins=1)  # "uniform" under a FLOPs limit
    assert all(table.flops(sampler(path_rng(0, i))) <= limit for i in range(300))
    low = min(table.flops(sampler(path_rng(0, i))) for i in range(300))
    with pytest.raises(ValueError, match=r"FLOPs bin 0 .* holds no path of space 'small'"):
        FlopsBinSampler(space, table, 1.0, low / 10, num_bins=2)  # below every path
    with pytest.raises(ValueError, match="FLOPS_MIN .* >= FLOPS_MAX"):
        FlopsBinSampler(space, table, limit, limit - 1)


def test_build_path_sampler_from_config(tmp_path):
    cfg = toy_cfg("det_supernet.yaml", tmp_path)
    assert isinstance(build_path_sampler(cfg), FlopsBinSampler)
    cfg.DETNAS.SAMPLER.NAME = "uniform"
    arch = build_path_sampler(cfg)(path_rng(0, 0))
    assert arch == get_space("small", 0.25).random_arch(path_rng(0, 0))
    cfg.DETNAS.SAMPLER.NAME = "fair"
    with pytest.raises(ValueError, match="DETNAS.SAMPLER.NAME 'fair' is unknown"):
        build_path_sampler(cfg)


def test_progressive_warmup_randomises_layers_from_the_last(tmp_path):
    """During DETNAS.SAMPLER.PROGRESSIVE_ITERS the first layers keep the reference arch and the random
    part grows from the last layer to all of them; afterwards the sampler's paths pass unchanged."""
    reference = ",".join(["shuffle_xception"] * 20)  # names: yacs reads a list of ids as a tuple
    cfg = toy_cfg(
        "det_supernet.yaml",
        tmp_path,
        "DETNAS.SAMPLER.PROGRESSIVE_ITERS",
        "40",
        "MODEL.DETNAS.REFERENCE_ARCH",
        reference,
    )
    hook, plain = RandomPathHook(cfg), RandomPathHook(toy_cfg("det_supernet.yaml", tmp_path))
    assert [num_random_layers(it, 40, 20) for it in (0, 1, 2, 20, 39, 40, 100)] == [
        1,
        1,
        2,
        11,
        20,
        20,
        20,
    ]
    assert progressive_path((0, 1, 2, 0), (3, 3, 3, 3), 0, 4) == (3, 3, 3, 0)
    assert progressive_path((0, 1, 2, 0), (3, 3, 3, 3), 2, 4) == (3, 1, 2, 0)
    assert progressive_path((0, 1, 2, 0), (3, 3, 3, 3), 4, 4) == (0, 1, 2, 0)
    paths, sampled = [hook.sample(it) for it in range(60)], [plain.sample(it) for it in range(60)]
    assert paths == [progressive_path(a, (3,) * 20, it, 40) for it, a in enumerate(sampled)]
    assert paths[0][:19] == (3,) * 19 and paths[40:] == sampled[40:]
    assert sum(a != b for a, b in zip(paths[:40], sampled)) > 30

    cfg.DETNAS.SAMPLER.PROGRESSIVE_ITERS = -1
    with pytest.raises(ValueError, match="DETNAS.SAMPLER.PROGRESSIVE_ITERS must be >= 0"):
        RandomPathHook(cfg)


def test_rotating_warmup_fixes_a_new_sampled_arch_per_phase(tmp_path):
    """DETNAS.SAMPLER.PROGRESSIVE_REFERENCE rotating: within a phase of the warm-up the fixed layers keep
    one arch, each phase draws another one (a pure function of the seed and the phase, so resumes and
    ranks agree), the reference arch plays no part, and after the warm-up paths are the sampler's."""
    opts = (
        "DETNAS.SAMPLER.PROGRESSIVE_ITERS",
        "40",
        "DETNAS.SAMPLER.PROGRESSIVE_REFERENCE",
        "rotating",
    )
    hook = RandomPathHook(toy_cfg("det_supernet.yaml", tmp_path, *opts))
    plain = RandomPathHook(toy_cfg("det_supernet.yaml", tmp_path))
    paths, sampled = [hook.sample(it) for it in range(60)], [plain.sample(it) for it in range(60)]
    assert paths[40:] == sampled[40:]
    fixed_per_phase = {}
    for it, (path, free) in enumerate(zip(paths[:40], sampled)):
        phase = num_random_layers(it, 40, 20)
        assert path[20 - phase :] == free[20 - phase :]
        fixed_per_phase.setdefault(phase, set()).add(path[: 20 - phase])
    assert all(len(prefixes) == 1 for prefixes in fixed_per_phase.values())
    firsts = [next(iter(fixed_per_phase[p])) for p in (1, 2, 3)]
    assert (
        firsts[0][:18] != firsts[1][:18] and firsts[1][:17] != firsts[2][:17]
    )  # redrawn per phase
    assert set(firsts[0]) != {0}  # not the reference arch (all shuffle_3x3)
    again = RandomPathHook(toy_cfg("det_supernet.yaml", tmp_path, *opts))
    assert [again.sample(it) for it in range(39, -1, -1)] == paths[
        39::-1
    ]  # any order: resume-exact

    with pytest.raises(ValueError, match="PROGRESSIVE_REFERENCE 'random' is unknown"):
        RandomPathHook(
            toy_cfg("det_supernet.yaml", tmp_path, "DETNAS.SAMPLER.PROGRESSIVE_REFERENCE", "random")
        )


# ---- configs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "supernet_small_FPN_1x",
        "supernet_large_FPN_1x",
        "subnet_small_FPN_1x",
        "subnet_large_FPN_1x",
        "subnet_small_RetinaNet_1x",
    ],
)
def test_coco_configs_build_the_recipe(name):
    cfg = get_cfg()
    add_detnas_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "COCO-Detection", name + ".yaml"))
    supernet = name.startswith("supernet")
    cfg.merge_from_list(
        ["MODEL.DEVICE", "cpu"] + ([] if supernet else ["MODEL.DETNAS.ARCH", "random:0"])
    )
    model = build_model(cfg)
    assert (find_supernet(model) is not None) == supernet
    assert (
        cfg.MODEL.DETNAS.SPACE == name.split("_")[1]
        and cfg.MODEL.DETNAS.NORM == cfg.MODEL.FPN.NORM == "SyncBN"
    )
    s = cfg.SOLVER
    assert (s.MAX_ITER, s.IMS_PER_BATCH, s.STEPS, s.WARMUP_ITERS) == (
        90000,
        16,
        (60000, 80000),
        500,
    )
    if "FPN" in name:
        assert s.BASE_LR == 0.02
        head = cfg.MODEL.ROI_BOX_HEAD
        assert (head.NUM_CONV, head.NUM_FC, head.NORM) == (4, 1, "SyncBN")  # 4conv1fc with SyncBN
    if supernet:
        assert cfg.DETNAS.SAMPLER.NAME == "flops_uniform" and not cfg.TEST.PRECISE_BN.ENABLED


# ---- training -------------------------------------------------------------------------------------


class CheckNoUpdateOffPath(HookBase):
    """After iteration 0: snapshot parameters and momentum buffers. After iteration 1: compare."""

    def __init__(self):
        self.checked = False

    def _state(self):
        optimizer = self.trainer.optimizer
        params = {n: p.detach().clone() for n, p in self.trainer.model.named_parameters()}
        momentum = {
            n: optimizer.state[p]["momentum_buffer"].clone()
            for n, p in self.trainer.model.named_parameters()
            if "momentum_buffer" in optimizer.state.get(p, {})
        }
        return params, momentum

    def before_train(self):
        self.initial = self._state()[0]

    def after_step(self):
        supernet = find_supernet(self.trainer.model)
        if self.trainer.iter == 0:
            self.arch0 = supernet.arch
            self.after0 = self._state()
            return
        arch1 = supernet.arch
        (params0, momentum0), (params1, momentum1) = self.after0, self._state()
        prefix = "backbone.bottom_up.layers"
        for layer, (c0, c1) in enumerate(zip(self.arch0, arch1)):
            for choice in range(4):
                names = [n for n in params1 if n.startswith(f"{prefix}.{layer}.choices.{choice}.")]
                assert names
                if choice == c1:  # trained in iteration 1
                    assert any(not torch.equal(params0[n], params1[n]) for n in names), (
                        layer,
                        choice,
                    )
                    assert all(n in momentum1 for n in names)
                    continue
                for n in names:  # off the path in iteration 1: no gradient, no decay, no momentum
                    assert self.trainer.model.get_parameter(n).grad is None, n
                    assert torch.equal(params0[n], params1[n]), n
                    if choice == c0:
                        assert torch.equal(momentum0[n], momentum1[n]), n
                    else:  # never sampled: untouched, and the optimizer holds no state for it
                        assert torch.equal(self.initial[n], params1[n]) and n not in momentum1, n
        self.checked = True


def test_unsampled_blocks_get_no_update(tmp_path):
    cfg = toy_cfg(
        "det_supernet.yaml",
        tmp_path,
        "SOLVER.MAX_ITER",
        "2",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.WARMUP_ITERS",
        "0",
        "SOLVER.WEIGHT_DECAY",
        "0.01",
    )
    trainer = DetNASTrainer(cfg)
    check = CheckNoUpdateOffPath()
    trainer.register_hooks([check])
    assert isinstance(trainer._hooks[0], RandomPathHook)
    trainer.train()
    assert check.checked and check.arch0 != find_supernet(trainer.model).arch


def _paths_of_run(cfg, resume, fail_at=None):
    trainer = DetNASTrainer(cfg)
    record = RecordPaths()

    class Interrupt(HookBase):
        def after_step(self):
            if self.trainer.iter == fail_at:
                raise KeyboardInterrupt  # a preemption, after the checkpoint of iteration 2

    trainer.register_hooks([record, Interrupt()])
    trainer.resume_or_load(resume=resume)
    start = trainer.start_iter
    # A resumed optimizer has its momentum buffers back (those of the blocks trained so far).
    assert bool(trainer.optimizer.state) == (start > 0)
    if fail_at is None:
        trainer.train()
    else:
        with pytest.raises(KeyboardInterrupt):
            trainer.train()
    return start, record.paths, trainer._hooks[0]


@pytest.mark.slow
def test_resume_samples_the_paths_of_an_uninterrupted_run(tmp_path):
    opts = ["SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3", "SOLVER.IMS_PER_BATCH", "2"]
    _, uninterrupted, _ = _paths_of_run(
        toy_cfg("det_supernet.yaml", tmp_path / "a", *opts), resume=False
    )
    assert len(uninterrupted) == 6 and len(set(uninterrupted.values())) == 6

    cfg = toy_cfg("det_supernet.yaml", tmp_path / "b", *opts)
    _, before, _ = _paths_of_run(cfg, resume=False, fail_at=4)
    start, after, hook = _paths_of_run(cfg, resume=True)
    assert start == 3 and sorted(after) == [3, 4, 5]
    assert {**before, **after} == uninterrupted
    assert hook.num_sampled == 3 + 3  # restored from the checkpoint, then counted on

    # Resuming the checkpoint of iteration 2 with another seed: warned, and other paths.
    cfg = toy_cfg("det_supernet.yaml", tmp_path / "c", *opts, "DETNAS.SAMPLER.SEED", "5")
    os.makedirs(cfg.OUTPUT_DIR)
    shutil.copy(tmp_path / "b" / "model_0000002.pth", cfg.OUTPUT_DIR)
    (tmp_path / "c" / "last_checkpoint").write_text("model_0000002.pth")
    stream = io.StringIO()
    handler = logging.StreamHandler(
        stream
    )  # caplog misses it once setup_logger stopped propagation
    logging.getLogger("detnas_d2").addHandler(handler)
    try:
        start, other_seed, _ = _paths_of_run(cfg, resume=True)
    finally:
        logging.getLogger("detnas_d2").removeHandler(handler)
    assert "trained with DETNAS.SAMPLER.SEED=0, the config says 5" in stream.getvalue()
    assert start == 3 and other_seed != after


class RecordArchEvaluator(DatasetEvaluator):
    def __init__(self, model):
        self.model, self.archs = model, set()

    def reset(self):
        self.archs = set()

    def process(self, inputs, outputs):
        self.archs.add(find_supernet(self.model).arch)

    def evaluate(self):
        return {"archs": sorted(self.archs)}


@pytest.mark.slow
def test_supernet_evaluates_reference_arch_and_restores_training_path(tmp_path):
    reference = "shuffle_7x7," * 19 + "shuffle_5x5"
    cfg = toy_cfg(
        "det_supernet.yaml",
        tmp_path,
        "DATASETS.TEST",
        "('toy_det_val',)",
        "MODEL.DETNAS.REFERENCE_ARCH",
        reference,
        "INPUT.MIN_SIZE_TEST",
        "64",
        "INPUT.MAX_SIZE_TEST",
        "64",
    )
    model = DetNASTrainer.build_model(cfg)
    supernet = find_supernet(model)
    training_path = supernet.set_arch([3] * 20)
    model.train()
    results = DetNASTrainer.test(cfg, model, [RecordArchEvaluator(model)])
    assert results["archs"] == [(2,) * 19 + (1,)]
    assert supernet.arch == training_path and model.training
    assert os.path.isfile(tmp_path / EVAL_RESULTS_FILE)

    cfg.MODEL.DETNAS.REFERENCE_ARCH = ""  # the space's default arch
    assert DetNASTrainer.test(cfg, model, [RecordArchEvaluator(model)])["archs"] == [(0,) * 20]


@pytest.mark.slow
def test_toy_subnet_detector_learns(tmp_path):
    """A short schedule takes the subnet detector clearly above its untrained AP on toy_det_val."""
    # From scratch the toy detector learns slowly (for ~100 iterations its box classifier calls every
    # proposal background): 250 iterations of det_subnet.yaml's recipe (batch 8, ~40 s on one core) gave
    # AP 0.62, AP50 2.35 (percent), where the untrained detector has AP50 < 0.01. (From a trained step-4
    # classifier, 1,500 iterations reach 16-32 AP: the demo and the study.)
    cfg = toy_cfg(
        "det_subnet.yaml",
        tmp_path,
        "DATASETS.TEST",
        "('toy_det_val',)",
        "SOLVER.MAX_ITER",
        "250",
        "SOLVER.STEPS",
        "(200,)",
        "SOLVER.CHECKPOINT_PERIOD",
        "1000",
    )
    seed_all_rng(cfg.SEED)  # initialisation and data order, as train_net.py's default_setup does
    trainer = DetNASTrainer(cfg)
    untrained = DetNASTrainer.test(cfg, trainer.model)["bbox"]
    trainer.train()  # ends with an evaluation, written to eval_results.json
    trained = json.loads((tmp_path / EVAL_RESULTS_FILE).read_text())["bbox"]
    assert untrained["AP50"] < 0.05
    assert trained["AP50"] > 1.0 and trained["AP"] > untrained["AP"] + 0.2, (untrained, trained)
