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

The command of detnas_d2.train_net (`python -m detnas_d2.train_net ...` runs the same from any folder).
Without CUDA, `--num-gpus N` starts N CPU processes (gloo) and MODEL.DEVICE becomes cpu. Under SLURM's
`srun` (tools/slurm_train.sbatch), --num-machines, --machine-rank and --dist-url default to the job's
nodes; values given on the command line win.
"""

from detnas_d2.train_net import run

if __name__ == "__main__":
    run()
