"""All detnas-d2 options. Call `add_detnas_config(cfg)` on a Detectron2 config before merging files."""
import logging

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

# String options that hold an arch: on the command line "0,1,2,..." must stay a string (yacs would
# otherwise read it as a tuple and reject it).
_ARCH_KEYS = ("MODEL.DETNAS.ARCH", "MODEL.DETNAS.REFERENCE_ARCH")


def add_detnas_config(cfg):
    _C = cfg

    # ---- the backbone: search space, chosen arch, norm -------------------------------------------
    _C.MODEL.DETNAS = CN()
    _C.MODEL.DETNAS.SPACE = "small"  # small | large | large-wide (see detnas_d2/search_space.py)
    _C.MODEL.DETNAS.WIDTH_MULT = 1.0  # scales stem and stage channels (narrow nets for tests/toy data)
    # Subnet arch: an arch file (any supported format) or comma-separated block ids. Unused by supernets.
    _C.MODEL.DETNAS.ARCH = ""
    _C.MODEL.DETNAS.NORM = "BN"  # BN | SyncBN | naiveSyncBN | GN | FrozenBN
    _C.MODEL.DETNAS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # strides 4, 8, 16, 32
    # Supernet only: the arch the supernet is set to for evaluation during training (periodic eval,
    # --eval-only). Empty: all `shuffle_3x3`.
    _C.MODEL.DETNAS.REFERENCE_ARCH = ""

    # ---- classification form (ImageNet steps) -----------------------------------------------------
    _C.MODEL.CLASSIFIER = CN()
    _C.MODEL.CLASSIFIER.NUM_CLASSES = 1000
    _C.MODEL.CLASSIFIER.HEAD_CHANNELS = 1024  # 1x1 conv after the last stage
    _C.MODEL.CLASSIFIER.DROPOUT = 0.0  # the anchors use 0.1 for subnets, 0 for supernets
    _C.MODEL.CLASSIFIER.LABEL_SMOOTHING = 0.1

    _C.INPUT.CLS = CN()
    _C.INPUT.CLS.TRAIN_CROP = 224  # random-resized crop size
    _C.INPUT.CLS.TRAIN_SCALE = (0.08, 1.0)
    _C.INPUT.CLS.COLOR_JITTER = 0.4  # brightness/contrast/saturation strength; 0 disables
    _C.INPUT.CLS.TEST_RESIZE = 256  # shorter side before the centre crop
    _C.INPUT.CLS.TEST_CROP = 224
    _C.TEST.CLS_IMS_PER_BATCH = 64  # images per process per batch in classification evaluation
    # Supernet evaluation (periodic or --eval-only): first give the reference arch BN statistics of its
    # own, computed on this many images of DATASETS.TRAIN[0] (test-time preprocessing), as the search
    # does; the trained statistics, averaged over all paths, are restored afterwards. 0: off.
    _C.TEST.BN_RECALIB_IMAGES = 512
    _C.TEST.BN_RECALIB_BATCH_SIZE = 16

    # ---- solver additions -------------------------------------------------------------------------
    # LR_SCHEDULER_NAME also accepts "WarmupLinearDecay" (linear to 0 at MAX_ITER, after warm-up).
    _C.SOLVER.WEIGHT_DECAY_DEPTHWISE = None  # None: same as SOLVER.WEIGHT_DECAY; the anchors use 0.0

    # ---- random path per iteration (supernet training) --------------------------------------------
    _C.DETNAS = CN()
    _C.DETNAS.SAMPLER = CN()
    _C.DETNAS.SAMPLER.NAME = "uniform"  # uniform | flops_uniform
    _C.DETNAS.SAMPLER.SEED = 0  # with the iteration, fixes the path: the same on every rank and on resume
    _C.DETNAS.SAMPLER.FLOPS_MIN = 0.0  # MACs of the backbone at SAMPLER.INPUT_SIZE; 0: the space's min
    _C.DETNAS.SAMPLER.FLOPS_MAX = 0.0  # 0: the space's max (also acts as a FLOPs limit)
    _C.DETNAS.SAMPLER.NUM_BINS = 10  # flops_uniform: FLOPs bins between min and max
    _C.DETNAS.SAMPLER.INPUT_SIZE = 224
    # Progressive path warm-up (engine/sampling.py): for this many iterations only the last layers are
    # random, from 1 to all of them; the others keep MODEL.DETNAS.REFERENCE_ARCH. 0: off (SPOS, DetNAS).
    _C.DETNAS.SAMPLER.PROGRESSIVE_ITERS = 0

    # ---- evolutionary search (search_net.py) ------------------------------------------------------
    _C.SEARCH = CN()
    _C.SEARCH.MODE = "evolution"  # evolution | random
    _C.SEARCH.POPULATION = 50
    _C.SEARCH.GENERATIONS = 20
    _C.SEARCH.TOPK = 10
    _C.SEARCH.NUM_MUTATION = 25
    _C.SEARCH.MUTATION_PROB = 0.1
    _C.SEARCH.NUM_CROSSOVER = 25
    _C.SEARCH.MAX_CANDIDATES = 1000
    _C.SEARCH.SEED = 0
    # Constraints, checked from the FLOPs table before any evaluation (0: no bound).
    _C.SEARCH.FLOPS_MIN = 0.0
    _C.SEARCH.FLOPS_MAX = 330e6
    _C.SEARCH.PARAMS_MAX = 0.0
    _C.SEARCH.INPUT_SIZE = 224  # input size at which the FLOPs constraints are measured
    # Scoring
    _C.SEARCH.FITNESS = "bbox_AP"  # bbox_AP (COCOEvaluator) | top1 (classification)
    _C.SEARCH.BN_RECALIB_DATASET = ""  # empty: DATASETS.TRAIN[0]
    _C.SEARCH.BN_RECALIB_IMAGES = 4000
    _C.SEARCH.EVAL_DATASET = ""  # held-out split; empty: DATASETS.TEST[0]
    _C.SEARCH.EVAL_IMAGES = 0  # score on the first N images; 0: all
    _C.SEARCH.DIST_MODE = "split_images"  # split_images | split_candidates
    # Added by search: fixed global batches (scores do not depend on the number of processes).
    _C.SEARCH.BN_RECALIB_BATCH_SIZE = 16  # images per recalibration forward
    _C.SEARCH.EVAL_BATCH_SIZE = 4  # images per inference forward while scoring
    _C.SEARCH.CACHE_MB = 4096  # per process: keep the mapped recalibration/eval inputs in memory up to this


def get_detnas_cfg(config_file: str = "", opts=()):
    """A Detectron2 config with the DetNAS options, merged from `config_file` and command-line `opts`.

    Arch options take comma-separated ids on the command line. Without CUDA, MODEL.DEVICE becomes cpu.
    """
    cfg = get_cfg()
    add_detnas_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    opts = list(opts)
    for i in range(0, len(opts) - 1, 2):
        if opts[i] in _ARCH_KEYS:
            opts[i + 1] = repr(str(opts[i + 1]))
    cfg.merge_from_list(opts)
    if cfg.MODEL.DEVICE != "cpu" and not torch.cuda.is_available():
        logging.getLogger(__name__).warning(f"No CUDA: MODEL.DEVICE {cfg.MODEL.DEVICE} -> cpu")
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def setup_cfg(args):
    """The frozen config of train_net.py / search_net.py: `get_detnas_cfg` from the command line, then
    Detectron2's default_setup (output folder, logging, seeds) and the detnas_d2 logger."""
    from detectron2.engine import default_setup
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    cfg = get_detnas_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="detnas_d2")
    return cfg
