"""DetNAS training and evaluation: pipeline steps 1, 2, 4, 5 and 6 (see README).

    # step 2: fine-tune the supernet in Faster R-CNN FPN from the step-1 ImageNet supernet
    python -m detnas_d2.train_net --num-gpus 8 --config-file configs/COCO-Detection/supernet_small_FPN_1x.yaml \
        MODEL.WEIGHTS output/imagenet/supernet_small/model_final.pth
    # step 5: the searched subnet detector from its step-4 ImageNet checkpoint
    python -m detnas_d2.train_net --num-gpus 8 --config-file configs/COCO-Detection/subnet_small_FPN_1x.yaml \
        MODEL.DETNAS.ARCH output/search/best_arch.yaml MODEL.WEIGHTS output/imagenet/subnet_small/model_final.pth
    # step 6: evaluate it
    python -m detnas_d2.train_net --eval-only --config-file configs/COCO-Detection/subnet_small_FPN_1x.yaml \
        MODEL.DETNAS.ARCH output/search/best_arch.yaml MODEL.WEIGHTS output/coco/subnet_small_FPN_1x/model_final.pth

train_net.py of a checkout runs the same. --config-file: a path, or one of the package's configs
(configs/..., found from any folder). Without CUDA, `--num-gpus N` starts N CPU processes (gloo) and
MODEL.DEVICE becomes cpu. Under SLURM's `srun` (tools/slurm_train.sbatch), --num-machines, --machine-rank
and --dist-url default to the job's nodes; values given on the command line win.
"""

import logging

from detectron2.evaluation import verify_results
from detectron2.utils import comm

from .checkpoint import DetNASCheckpointer, arch_opts_from_weights
from .config import frozen_cfg, setup_run
from .engine import DetNASTrainer, parse_args, run_command
from .engine.checks import changed_settings, check_training
from .evaluation import require_finite_results
from .run_lock import locked_output_dir
from .user_errors import UserError, debugging

__all__ = ["main", "parse_args", "run"]  # parse_args: the command line main takes

Trainer = DetNASTrainer
logger = logging.getLogger(__name__)


def main(args):
    """One process's training (or evaluation with --eval-only). The main process holds OUTPUT_DIR's
    lock for the run's life and checks the run (`check_training`) before anything is written."""
    # A subnet config with MODEL.DETNAS.ARCH empty takes the arch of the subnet in MODEL.WEIGHTS.
    args.opts = arch_opts_from_weights(args.config_file, args.opts)
    cfg = frozen_cfg(args)
    check = lambda: check_training(cfg, args.resume, args.eval_only)  # noqa: E731
    with locked_output_dir(cfg.OUTPUT_DIR, check=check):
        changed = changed_settings(cfg) if args.resume and comm.is_main_process() else []
        setup_run(cfg, args)
        if changed:
            logger.warning(
                f"--resume with settings other than the run's in {cfg.OUTPUT_DIR}: {'; '.join(changed)}"
            )
        return _train_or_evaluate(cfg, args)


def _train_or_evaluate(cfg, args):
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetNASCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR, allow_random_heads=cfg.MODEL.DETNAS.ALLOW_RANDOM_HEADS
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            require_finite_results(res, cfg.MODEL.WEIGHTS)
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    train_loop = logging.getLogger("detectron2.engine.train_loop")  # logs the exception it raises
    quiet = _DivergenceWithoutTraceback()
    train_loop.addFilter(quiet)
    try:
        return trainer.train()
    except FloatingPointError as e:  # Detectron2: the loss or the predicted boxes became NaN or Inf
        raise UserError(
            f"the training diverged ({str(e).splitlines()[0]}): lower SOLVER.BASE_LR or raise "
            "SOLVER.WARMUP_ITERS, and check MODEL.WEIGHTS (the checkpoints saved before are kept)"
        ) from None
    finally:
        train_loop.removeFilter(quiet)


class _DivergenceWithoutTraceback(logging.Filter):
    """Drops the traceback of a diverged training from Detectron2's log of it: the divergence is
    reported as one line (a UserError); with DETNAS_DEBUG=1 the traceback stays."""

    def filter(self, record):
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, FloatingPointError) and not debugging():
            record.msg = f"{record.msg} {error}"
            record.exc_info, record.exc_text = None, None
        return True


def run(argv=None):
    """The command line: parse it, then `main` in --num-gpus processes (detnas_d2.engine.run_command)."""
    run_command(main, argv, "train_net.py")


if __name__ == "__main__":
    run()
