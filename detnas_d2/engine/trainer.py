"""`DetNASTrainer`: Detectron2's DefaultTrainer for every training step of the pipeline.

- detection (COCOEvaluator) and classification (META_ARCHITECTURE "DetNASClassifier": classification
  loaders and ClassificationEvaluator);
- detnas_d2.solver's optimizer and LR schedules;
- supernets: a RandomPathHook runs first in every iteration, DDP finds the parameters the path leaves
  unused, precise BN is off, and evaluation (periodic or --eval-only) runs MODEL.DETNAS.REFERENCE_ARCH
  (empty: the space's default arch) with BN statistics recalibrated for it on TEST.BN_RECALIB_IMAGES
  training images, then restores the training path and the trained statistics;
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

import torch
from detectron2.data import DatasetMapper
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from .. import solver
from ..arch_io import load_arch
from ..compat import has_compiled_ops
from ..data.classification import (
    ClassificationDatasetMapper,
    build_classification_test_loader,
    build_classification_train_loader,
)
from ..evaluation import ClassificationEvaluator
from ..modeling.backbone import find_supernet
from ..search_space import arch_to_str, space_from_cfg
from .checkpoint import DetNASCheckpointer
from .hooks import RandomPathHook
from .launch import create_ddp_model

__all__ = [
    "DetNASTrainer",
    "EVAL_RESULTS_FILE",
    "is_classification",
    "reference_arch",
    "evaluation_arch",
    "recalibrated_bn",
]

CLASSIFIER_META_ARCH = "DetNASClassifier"
EVAL_RESULTS_FILE = "eval_results.json"
logger = logging.getLogger(__name__)


def is_classification(cfg) -> bool:
    return cfg.MODEL.META_ARCHITECTURE == CLASSIFIER_META_ARCH


def reference_arch(cfg):
    """MODEL.DETNAS.REFERENCE_ARCH (file or ids) or, when empty, the space's default arch."""
    space = space_from_cfg(cfg)
    spec = cfg.MODEL.DETNAS.REFERENCE_ARCH.strip()
    return load_arch(spec, space) if spec else space.default_arch()


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


@contextmanager
def recalibrated_bn(cfg, model):
    """Inside: the BN layers of `model` (its supernet on the path it runs now) hold the exact statistics
    of that path on TEST.BN_RECALIB_IMAGES images of DATASETS.TRAIN[0], computed by all processes
    together; the previous statistics are restored on exit. Does nothing for models without a supernet
    or with TEST.BN_RECALIB_IMAGES = 0."""
    # Imported here: detnas_d2.search imports the engine.
    from ..search.scoring import bn_layers, recalibrate_bn, recalibration_batches, recalibration_forward

    model = getattr(model, "module", model)  # DDP
    if find_supernet(model) is None or cfg.TEST.BN_RECALIB_IMAGES <= 0:
        yield
        return
    if not cfg.DATASETS.TRAIN:
        raise ValueError("TEST.BN_RECALIB_IMAGES > 0 needs DATASETS.TRAIN (or set it to 0)")
    mapper = ClassificationDatasetMapper(cfg, False) if is_classification(cfg) else DatasetMapper(cfg, False)
    batches = recalibration_batches(
        cfg.DATASETS.TRAIN[0], cfg.TEST.BN_RECALIB_IMAGES, cfg.TEST.BN_RECALIB_BATCH_SIZE, 0,
        mapper, shard=True, num_workers=cfg.DATALOADER.NUM_WORKERS, key="TEST.BN_RECALIB_IMAGES",
    )
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in bn_layers(model)]
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            n = recalibrate_bn(model, batches, recalibration_forward(model), all_reduce=True)
        logger.info(f"BN statistics of {n} layers recalibrated on {batches.total_images} training images")
        yield
    finally:
        for m, state in zip(bn_layers(model), saved):
            m.load_state_dict(state)
        model.train(training)


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
            logger.warning("TEST.PRECISE_BN is off for supernets: BN statistics differ from path to path")
            cfg = cfg.clone()
            cfg.defrost()
            cfg.TEST.PRECISE_BN.ENABLED = False
            cfg.freeze()
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)

        model = create_ddp_model(model, broadcast_buffers=False, find_unused_parameters=self.is_supernet)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
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
            logger.warning("The checkpoint holds no optimizer state (written by plain Detectron2 v0.6?): "
                           "the optimizer starts afresh")

    def build_hooks(self):
        hooks = super().build_hooks()
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
        if is_classification(cfg):
            return build_classification_train_loader(cfg)
        return super().build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        if is_classification(cfg):
            return build_classification_test_loader(cfg, dataset_name)
        return super().build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if is_classification(cfg):
            return ClassificationEvaluator(dataset_name)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=has_compiled_ops())

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
