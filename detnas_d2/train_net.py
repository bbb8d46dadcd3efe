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
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from .checkpoint import DetNASCheckpointer, arch_opts_from_weights
from .config import setup_cfg
from .config_files import config_file
from .engine import DetNASTrainer, launch, parse_args
from .evaluation import require_finite_results

__all__ = ["main", "run"]

Trainer = DetNASTrainer


def main(args):
    """One process's training (or evaluation with --eval-only)."""
    # A subnet config with MODEL.DETNAS.ARCH empty takes the arch of the subnet in MODEL.WEIGHTS.
    args.opts = arch_opts_from_weights(args.config_file, args.opts)
    cfg = setup_cfg(args)
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
    return trainer.train()


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
