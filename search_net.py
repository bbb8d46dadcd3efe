#!/usr/bin/env python
"""DetNAS step 3: evolutionary search on a fine-tuned supernet (fitness: bbox AP on a held-out split).

    python search_net.py --num-gpus 8 --config-file configs/COCO-Detection/search_small.yaml \
        MODEL.WEIGHTS output/coco/supernet_small_FPN_1x/model_final.pth
    # continue a search that stopped (same OUTPUT_DIR; any number of processes or DETNAS.SEARCH.DIST_MODE)
    python search_net.py --num-gpus 8 --config-file configs/COCO-Detection/search_small.yaml --resume \
        MODEL.WEIGHTS output/coco/supernet_small_FPN_1x/model_final.pth
    # baseline: random search with the same budget
    python search_net.py ... DETNAS.SEARCH.MODE random OUTPUT_DIR output/search/random_small

Writes to OUTPUT_DIR: best_arch.yaml (for MODEL.DETNAS.ARCH of the retraining steps), candidates.jsonl,
search_state.json (+ .bak), search_scores.png, TensorBoard events, log.txt. Without CUDA, --num-gpus N
starts N CPU processes (gloo).
"""
import detnas_d2  # noqa: F401,I001  (first: applies the compat shims, registers backbones and datasets)

from detnas_d2.config import setup_cfg
from detnas_d2.engine import launch, parse_args
from detnas_d2.search import run_search


def main(args):
    return run_search(setup_cfg(args), resume=args.resume)


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
