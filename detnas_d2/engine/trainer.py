"""`DetNASTrainer`: Detectron2's DefaultTrainer for every training step of the pipeline.

- loaders and evaluator of the config's task (tasks.py: detection, or classification for the
  META_ARCHITECTURE "DetNASClassifier");
- detnas_d2.solver's optimizer and LR schedules;
- supernets: a RandomPathHook runs first in every iteration, DDP finds the parameters the path leaves
  unused, precise BN is off, and evaluation (periodic or --eval-only) runs MODEL.DETNAS.REFERENCE_ARCH
  (empty: the space's default arch) with BN statistics recalibrated for it on DETNAS.BN_RECALIB
  images (recalibration.py), then restores the training path and the trained statistics;
- training resumes exactly: the data stream continues where the checkpoint left it (DataStreamHook);
- DetNASCheckpointer, so MODEL.WEIGHTS may be the checkpoint of an earlier step (classifier, supernet);
- checkpoints include the optimizer (and AMP grad scaler) state, which v0.6's DefaultTrainer drops;
- DDP without CUDA (gloo, no device_ids);
- every evaluation's results also go to OUTPUT_DIR/eval_results.json.
"""

import json
import logging
import os
import weakref
from contextlib import contextmanager

from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from .. import solver
from ..checkpoint import DetNASCheckpointer
from ..data.stream import ResumableBatchSampler
from ..modeling import find_supernet
from ..output_files import EVAL_RESULTS_FILE
from ..recalibration import recalibrated_bn
from ..search_space import arch_to_str
from ..tasks import get_task
from .hooks import DataStreamHook, RandomPathHook
from .launch import create_ddp_model
from .sampling import reference_arch

__all__ = ["DetNASTrainer", "evaluation_arch"]

logger = logging.getLogger(__name__)


@contextmanager
def evaluation_arch(cfg, model):
    """Inside: the supernet of `model` (if any) runs the reference arch; the previous path is restored
    on exit. Does nothing for models without a supernet."""
    supernet = find_supernet(model)
    if supernet is None:
        yield
        return
    previous = supernet.arch
    arch = supernet.set_arch(reference_arch(cfg))
    logger.info(f"Evaluating the supernet with the reference arch {arch_to_str(arch)}")
    try:
        yield
    finally:
        if previous is not None:
            supernet.set_arch(previous)


class DetNASTrainer(DefaultTrainer):
    def __init__(self, cfg):
        # DefaultTrainer.__init__ with two changes: the DDP wrapping (find_unused_parameters for
        # supernets, no device_ids on CPU) and the checkpointer (DetNASCheckpointer).
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        self.is_supernet = find_supernet(model) is not None
        if self.is_supernet and cfg.TEST.PRECISE_BN.ENABLED:
            logger.warning(
                "TEST.PRECISE_BN is off for supernets: BN statistics differ from path to path"
            )
            cfg = cfg.clone()
            cfg.defrost()
            cfg.TEST.PRECISE_BN.ENABLED = False
            cfg.freeze()
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)

        model = create_ddp_model(
            model, broadcast_buffers=False, find_unused_parameters=self.is_supernet
        )
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetNASCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    # Detectron2 v0.6's DefaultTrainer leaves the inner trainer's state (optimizer momentum, AMP grad
    # scaler) out of checkpoints, so a resume restarted momentum from zero. Later versions save it so:
    def state_dict(self):
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning(
                "The checkpoint holds no optimizer state (written by plain Detectron2 v0.6?): "
                "the optimizer starts afresh"
            )

    def build_hooks(self):
        hooks = super().build_hooks()
        sampler = getattr(self._trainer.data_loader, "batch_sampler", None)
        if isinstance(sampler, ResumableBatchSampler):
            hooks.insert(0, DataStreamHook(sampler))
        if self.is_supernet:
            # First: the path must be set before anything runs the model in this iteration.
            hooks.insert(0, RandomPathHook(self.cfg))
        return hooks

    @classmethod
    def build_optimizer(cls, cfg, model):
        return solver.build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return solver.build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        return get_task(cfg).build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return get_task(cfg).build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return get_task(cfg).build_evaluator(cfg, dataset_name, output_dir=output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """DefaultTrainer.test (supernets: with the reference arch and its own BN statistics); the main
        process also writes the results to OUTPUT_DIR/eval_results.json (the latest evaluation)."""
        with evaluation_arch(cfg, model), recalibrated_bn(cfg, model):
            results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and cfg.OUTPUT_DIR:
            PathManager.mkdirs(cfg.OUTPUT_DIR)
            with PathManager.open(os.path.join(cfg.OUTPUT_DIR, EVAL_RESULTS_FILE), "w") as f:
                json.dump(results, f, indent=2)
        return results
