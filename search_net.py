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
starts N CPU processes (gloo). The command of detnas_d2.search_net (`python -m detnas_d2.search_net ...`
runs the same from any folder).
"""

from detnas_d2.search_net import run

if __name__ == "__main__":
    run()
