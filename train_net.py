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
import detnas_d2  # noqa: F401,I001  (first: applies the compat shims, registers backbones and datasets)
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from detnas_d2.config import setup_cfg
from detnas_d2.checkpoint import DetNASCheckpointer, arch_opts_from_weights
from detnas_d2.engine import DetNASTrainer, launch, parse_args

Trainer = DetNASTrainer


def main(args):
    # A subnet config with MODEL.DETNAS.ARCH empty takes the arch of the subnet in MODEL.WEIGHTS.
    args.opts = arch_opts_from_weights(args.config_file, args.opts)
    cfg = setup_cfg(args)
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
