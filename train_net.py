#!/usr/bin/env python
"""DetNAS training and evaluation: pipeline steps 1, 2, 4, 5 and 6 (see README).

    # step 2: fine-tune the supernet in Faster R-CNN FPN from the step-1 ImageNet supernet
    python train_net.py --num-gpus 8 --config-file configs/COCO-Detection/supernet_small_FPN_1x.yaml \
        MODEL.WEIGHTS output/imagenet/supernet_small/model_final.pth
    # step 5: the searched subnet detector from its step-4 ImageNet checkpoint
    python train_net.py --num-gpus 8 --config-file configs/COCO-Detection/subnet_small_FPN_1x.yaml \
        MODEL.DETNAS.ARCH output/search/best_arch.yaml MODEL.WEIGHTS output/imagenet/subnet_small/model_final.pth
    # step 6: evaluate it
    python train_net.py --eval-only --config-file configs/COCO-Detection/subnet_small_FPN_1x.yaml \
        MODEL.DETNAS.ARCH output/search/best_arch.yaml MODEL.WEIGHTS output/coco/subnet_small_FPN_1x/model_final.pth

Without CUDA, `--num-gpus N` starts N CPU processes (gloo) and MODEL.DEVICE becomes cpu. Under SLURM's
`srun` (tools/slurm_train.sbatch), --num-machines, --machine-rank and --dist-url default to the job's
nodes; values given on the command line win.
"""
import logging
import os

import torch

import detnas_d2  # noqa: I001  (first: applies the compat shims, registers backbones and datasets)
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from detnas_d2 import add_detnas_config
from detnas_d2.engine import DetNASCheckpointer, DetNASTrainer, apply_slurm_env, launch

Trainer = DetNASTrainer


def setup(args):
    cfg = get_cfg()
    add_detnas_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE != "cpu":
        logging.getLogger(__name__).warning(f"No CUDA: MODEL.DEVICE {cfg.MODEL.DEVICE} -> cpu")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="detnas_d2")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetNASCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser():
    parser = default_argument_parser()
    # None: filled from SLURM under srun, else Detectron2's defaults (see apply_slurm_env).
    parser.set_defaults(num_machines=None, machine_rank=None, dist_url=None)
    return parser


def parse_args(argv=None, env=None):
    parser = argument_parser()
    args = parser.parse_args(argv)
    d2_defaults = default_argument_parser()
    defaults = {k: d2_defaults.get_default(k) for k in ("num_machines", "machine_rank", "dist_url")}
    return apply_slurm_env(args, os.environ if env is None else env, defaults)


if __name__ == "__main__":
    args = parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
