"""Training and evaluation of a model defined in a Detectron2 LazyConfig Python file (configs/LazyConfigs/,
docs/paper_settings.md): Detectron2's LazyConfig loop (its tools/lazyconfig_train_net.py: `instantiate`,
SimpleTrainer or AMPTrainer, its hooks) with DetNASCheckpointer, so `train.init_checkpoint` takes every
file MODEL.WEIGHTS of the yacs configs takes (a step-4 ImageNet classifier, a detector trained with a
yacs config or a LazyConfig, MMRazor's and the official DetNAS files), and the checkpoints it writes load
into the yacs model of the same detector.

    python tools/lazyconfig_train_net.py --num-gpus 8 --config-file configs/LazyConfigs/subnet_small_FPN_1x.py \
        model.backbone.bottom_up.arch=output/search/best_arch.yaml \
        train.init_checkpoint=output/imagenet/subnet_small/model_final.pth
    python tools/lazyconfig_train_net.py --eval-only --config-file configs/LazyConfigs/subnet_small_FPN_1x.py \
        model.backbone.bottom_up.arch=output/search/best_arch.yaml train.init_checkpoint=<detector checkpoint>

Overrides are Detectron2's `key=value`. Every evaluation's results also go to
<train.output_dir>/eval_results.json, as train_net.py writes them; with --eval-only, weights that leave
parts of the model random, or an AP of NaN (no detection at all), are errors. Without CUDA,
train.device becomes cpu. --resume continues from the last checkpoint in train.output_dir.
"""

import json
import logging
import os

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from .checkpoint import DetNASCheckpointer
from .config_files import config_file
from .engine import create_ddp_model, launch, parse_args
from .evaluation import require_finite_results
from .output_files import EVAL_RESULTS_FILE

__all__ = ["do_test", "do_train", "load_lazy_config", "main", "run"]

logger = logging.getLogger(__name__)


def load_lazy_config(path: str, overrides=()):
    """The LazyConfig of `path` (or one of the package's configs) with `key=value` overrides; train.device
    cpu where CUDA is missing."""
    cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file(path)), list(overrides))
    if cfg.train.device != "cpu" and not torch.cuda.is_available():
        logger.warning(f"No CUDA: train.device {cfg.train.device} -> cpu")
        cfg.train.device = "cpu"
    return cfg


def do_test(cfg, model):
    """Evaluate `model` on dataloader.test with dataloader.evaluator; the main process writes the results
    to <train.output_dir>/eval_results.json. Returns them (None without an evaluator)."""
    if "evaluator" not in cfg.dataloader:
        return None
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process():
        print_csv_format(results)
        PathManager.mkdirs(cfg.train.output_dir)
        with PathManager.open(os.path.join(cfg.train.output_dir, EVAL_RESULTS_FILE), "w") as f:
            json.dump(results, f, indent=2)
    return results


def do_train(cfg, resume: bool = False):
    """Train cfg.model with cfg.optimizer, cfg.lr_multiplier and cfg.dataloader.train for
    train.max_iter iterations, from train.init_checkpoint (or, with `resume`, the last checkpoint in
    train.output_dir), evaluating every train.eval_period iterations and at the end."""
    model = instantiate(cfg.model)
    logger.info(f"Model:\n{model}")
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(
        model, train_loader, optimizer
    )
    checkpointer = DetNASCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if comm.is_main_process()
            else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    # a checkpoint holds the iteration that had finished
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return trainer


def main(args):
    """One process's training (or evaluation with --eval-only)."""
    cfg = load_lazy_config(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="detnas_d2")
    if not args.eval_only:
        return do_train(cfg, resume=args.resume)
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    model = create_ddp_model(model)
    DetNASCheckpointer(model, allow_random_heads=False).load(cfg.train.init_checkpoint)
    results = do_test(cfg, model)
    if comm.is_main_process() and results is not None:
        require_finite_results(results, cfg.train.init_checkpoint)
    return results


def run(argv=None):
    """The command line: parse it, then `main` in --num-gpus processes (detnas_d2.engine.launch)."""
    args = parse_args(argv)
    args.config_file = config_file(args.config_file)
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    run()
