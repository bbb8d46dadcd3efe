"""Training hooks for supernets."""

import logging

from detectron2.engine import HookBase
from detectron2.utils import comm

from ..data.stream import ResumableBatchSampler, derived_seed, seed_all
from ..flops import get_flops_table
from ..modeling import find_supernet
from ..search_space import arch_to_str, space_from_cfg
from .sampling import (
    WARMUP_REFERENCES,
    build_path_sampler,
    num_random_layers,
    path_rng,
    progressive_path,
    reference_arch,
    warmup_reference,
)

__all__ = ["DataStreamHook", "RandomPathHook"]

logger = logging.getLogger(__name__)


class RandomPathHook(HookBase):
    """Set a new random path on the supernet of the trainer's model before every iteration.

    The path of iteration `it` is `sampler(path_rng(DETNAS.SAMPLER.SEED, it))`: the same on every rank
    without communication, and the same after a resume as in an uninterrupted run. During a progressive
    warm-up (DETNAS.SAMPLER.PROGRESSIVE_ITERS), its first layers are then replaced by the reference arch's
    (`progressive_path`), or with DETNAS.SAMPLER.PROGRESSIVE_REFERENCE ``rotating`` by those of a new
    sampled arch each time the random part grows (`warmup_reference`). Register it before hooks that run
    the model in `before_step`. Writes the path's FLOPs (MACs at DETNAS.SAMPLER.INPUT_SIZE) to the
    EventStorage as "detnas/path_flops", and during a warm-up the number of random layers as
    "detnas/random_layers".

    Blocks outside the path do not run, so they get no gradient (`grad` stays None after the trainer's
    `zero_grad()`) and the optimizer skips them: no momentum, no weight decay.
    """

    def __init__(self, cfg, sampler=None, flops_table=None):
        self.space = space_from_cfg(cfg)
        self.seed = int(cfg.DETNAS.SAMPLER.SEED)
        self.progressive_iters = int(cfg.DETNAS.SAMPLER.PROGRESSIVE_ITERS)
        if self.progressive_iters < 0:
            raise ValueError(
                f"DETNAS.SAMPLER.PROGRESSIVE_ITERS must be >= 0, got {self.progressive_iters}"
            )
        self.rotating = cfg.DETNAS.SAMPLER.PROGRESSIVE_REFERENCE == "rotating"
        if cfg.DETNAS.SAMPLER.PROGRESSIVE_REFERENCE not in WARMUP_REFERENCES:
            raise ValueError(
                f"DETNAS.SAMPLER.PROGRESSIVE_REFERENCE '{cfg.DETNAS.SAMPLER.PROGRESSIVE_REFERENCE}' is "
                f"unknown; choose one of {list(WARMUP_REFERENCES)}"
            )
        self.reference = (
            reference_arch(cfg) if self.progressive_iters and not self.rotating else None
        )
        self._flops_table = flops_table or get_flops_table(
            self.space, cfg.DETNAS.SAMPLER.INPUT_SIZE
        )
        self._sampler = sampler or build_path_sampler(cfg, self.space, self._flops_table)
        self.num_sampled = 0  # paths drawn so far (over resumes)
        self._phase_references = {}  # rotating warm-up: phase -> its fixed layers' arch
        self.arch = None  # the path of the current iteration
        self._supernet = None

    def before_train(self):
        self._supernet = find_supernet(self.trainer.model)
        if self._supernet is None:
            raise ValueError(
                f"RandomPathHook: the model ({type(self.trainer.model).__name__}) holds no "
                "ShuffleNetV2Supernet; use it only with supernet backbones"
            )
        if self._supernet.space != self.space:
            raise ValueError(
                f"RandomPathHook samples space {self.space} (from the config), the model's supernet "
                f"has space {self._supernet.space}"
            )
        if self.progressive_iters > self.trainer.start_iter:
            fixed = (
                "a new sampled arch's in each phase"
                if self.rotating
                else (f"the reference arch's {arch_to_str(self.reference)}")
            )
            logger.info(
                f"Progressive path warm-up until iteration {self.progressive_iters}: the last 1 to "
                f"{self.space.num_layers} layers are random, the others take {fixed}"
            )

    def sample(self, iteration: int):
        """The path of `iteration` (without setting it)."""
        arch = self._sampler(path_rng(self.seed, iteration))
        if iteration < self.progressive_iters:
            reference = self.reference
            if self.rotating:
                phase = num_random_layers(iteration, self.progressive_iters, self.space.num_layers)
                if (
                    phase not in self._phase_references
                ):  # a pure function of (seed, phase): drawn once
                    self._phase_references[phase] = warmup_reference(
                        self._sampler, self.seed, phase
                    )
                reference = self._phase_references[phase]
            arch = progressive_path(arch, reference, iteration, self.progressive_iters)
        return arch

    def before_step(self):
        self.arch = self._supernet.set_arch(self.sample(self.trainer.iter))
        self.num_sampled += 1
        self.trainer.storage.put_scalar(
            "detnas/path_flops", float(self._flops_table.flops(self.arch)), smoothing_hint=False
        )
        if self.trainer.iter < self.progressive_iters:
            self.trainer.storage.put_scalar(
                "detnas/random_layers",
                num_random_layers(self.trainer.iter, self.progressive_iters, self.space.num_layers),
                smoothing_hint=False,
            )
        if self.trainer.iter == self.trainer.start_iter:
            logger.info(f"First path (iteration {self.trainer.iter}): {arch_to_str(self.arch)}")

    def state_dict(self):
        # Ints only: Detectron2 loads checkpoints with torch.load(weights_only=True).
        return {"seed": self.seed, "num_sampled": self.num_sampled}

    def load_state_dict(self, state_dict):
        seed = int(state_dict["seed"])
        if seed != self.seed:
            logger.warning(
                f"RandomPathHook: the checkpoint was trained with DETNAS.SAMPLER.SEED={seed}, the config "
                f"says {self.seed}: from here on paths follow seed {self.seed}, so this run will not "
                "reproduce an uninterrupted one. Set DETNAS.SAMPLER.SEED to the checkpoint's to do so."
            )
        self.num_sampled = int(state_dict["num_sampled"])


class DataStreamHook(HookBase):
    """Makes a resumed run the uninterrupted one (data/stream.py).

    - The stream's seed goes into checkpoints; on resume the stream restarts at the batch of the first
      iteration to run, so the model sees the images (and augmentations) an uninterrupted run sees.
    - Before every iteration the global RNGs (Python, NumPy, torch: dropout, proposal sampling) are
      seeded from (seed, iteration, rank): what an iteration draws does not depend on earlier ones.
    """

    def __init__(self, sampler: ResumableBatchSampler):
        self.sampler = sampler
        self._accelerator = True

    def before_train(self):
        # On CPU only torch's CPU generator draws; seeding every device costs 1.4 ms an iteration.
        self._accelerator = next(self.trainer.model.parameters()).device.type != "cpu"
        if not self.trainer.start_iter:
            return  # the stream opened by the trainer starts at batch 0 with this seed
        self.sampler.start_batch = self.trainer.start_iter
        inner = self.trainer._trainer
        # Detectron2 v0.6 opens the loader's iterator in SimpleTrainer.__init__; later versions open it
        # lazily (a property over `_data_loader_iter_obj`). Either way: a new one from start_batch.
        if isinstance(getattr(type(inner), "_data_loader_iter", None), property):
            inner._data_loader_iter_obj = None
        else:
            inner._data_loader_iter = iter(inner.data_loader)
        logger.info(
            f"Data stream (seed {self.sampler.seed}) resumes at batch {self.trainer.start_iter}"
        )

    def before_step(self):
        seed_all(
            derived_seed(self.sampler.seed, self.trainer.iter, comm.get_rank()),
            devices=self._accelerator,
        )

    def state_dict(self):
        return {"seed": self.sampler.seed}  # an int: checkpoints load with weights_only=True

    def load_state_dict(self, state_dict):
        self.sampler.seed = int(state_dict["seed"])
