"""DetNAS step 3: evolutionary search on a fine-tuned supernet (fitness: bbox AP on a held-out split).

    python -m detnas_d2.search_net --num-gpus 8 --config-file configs/COCO-Detection/search_small.yaml \
        MODEL.WEIGHTS output/coco/supernet_small_FPN_1x/model_final.pth
    # continue a search that stopped (same OUTPUT_DIR; any number of processes or DETNAS.SEARCH.DIST_MODE)
    python -m detnas_d2.search_net --num-gpus 8 --config-file configs/COCO-Detection/search_small.yaml \
        --resume MODEL.WEIGHTS output/coco/supernet_small_FPN_1x/model_final.pth
    # baseline: random search with the same budget
    python -m detnas_d2.search_net ... DETNAS.SEARCH.MODE random OUTPUT_DIR output/search/random_small

search_net.py of a checkout runs the same. Writes to OUTPUT_DIR: best_arch.yaml (for MODEL.DETNAS.ARCH of
the retraining steps), candidates.jsonl, search_state.json (+ .bak), search_scores.png, TensorBoard events,
log.txt. --config-file: a path, or one of the package's configs (configs/..., found from any folder).
Without CUDA, --num-gpus N starts N CPU processes (gloo).
"""

from .config import frozen_cfg, setup_run
from .engine import run_command
from .run_lock import locked_output_dir
from .search import check_search, run_search

__all__ = ["main", "run"]


def main(args):
    """One process's share of the search. The main process holds OUTPUT_DIR's lock for the search's
    life and checks the settings and the folder's search state before anything is written."""
    cfg = frozen_cfg(args)
    with locked_output_dir(cfg.OUTPUT_DIR, check=lambda: check_search(cfg, resume=args.resume)):
        setup_run(cfg, args)
        return run_search(cfg, resume=args.resume)


def run(argv=None):
    """The command line: parse it, then `main` in --num-gpus processes (detnas_d2.engine.run_command)."""
    run_command(main, argv, "search_net.py")


if __name__ == "__main__":
    run()
