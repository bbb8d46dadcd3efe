"""All detnas-d2 options. Call `add_detnas_config(cfg)` on a Detectron2 config before merging files."""

import ast
import difflib
import io
import logging
import os
import re

import torch
import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .user_errors import UserError

# String options that hold an arch: on the command line "0,1,2,..." must stay a string (yacs would
# otherwise read it as a tuple and reject it).
_ARCH_KEYS = ("MODEL.DETNAS.ARCH", "MODEL.DETNAS.REFERENCE_ARCH")


def add_detnas_config(cfg):
    _C = cfg

    # ---- the backbone: search space, chosen arch, norm -------------------------------------------
    _C.MODEL.DETNAS = CN()
    # A shipped space (small | large | large-wide | mobilenetv2: configs/spaces/) or the path of a space
    # file (docs/spaces.md).
    _C.MODEL.DETNAS.SPACE = "small"
    _C.MODEL.DETNAS.WIDTH_MULT = (
        1.0  # scales stem and stage channels (narrow nets for tests/toy data)
    )
    # Which ShuffleNetV2 code the backbone computes (the paper spaces): mmrazor (this project's and
    # MMRazor's) | official (Megvii's searched DetNAS models) | official-shuffle1 (Megvii's supernet
    # code); search_space.py. Empty: the space's default (mmrazor; none for spaces without styles).
    _C.MODEL.DETNAS.BLOCK_STYLE = ""
    # Subnet arch: an arch file (any supported format) or comma-separated block ids. Unused by supernets.
    _C.MODEL.DETNAS.ARCH = ""
    _C.MODEL.DETNAS.NORM = "BN"  # BN | SyncBN | naiveSyncBN | GN | FrozenBN
    _C.MODEL.DETNAS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # strides 4, 8, 16, 32
    # Supernet only: the arch the supernet is set to for evaluation during training (periodic eval,
    # --eval-only). Empty: all `shuffle_3x3`.
    _C.MODEL.DETNAS.REFERENCE_ARCH = ""
    # Paired initialisation: every backbone block's initial weights are drawn from its own generator, keyed
    # by (SEED, layer, block id), and building the backbone leaves the global RNG as it was: runs of two
    # archs with the same SEED start from the same weights for the blocks they share, the same heads and
    # the same data order (common random numbers when archs are compared: tools/rank_audit.py standalone).
    _C.MODEL.DETNAS.PAIRED_INIT = False
    # Evaluations and searches refuse MODEL.WEIGHTS that leave tensors of the model at their random
    # initialisation (e.g. a detector's FPN, RPN and ROI heads with a classifier's checkpoint); True
    # allows it. Training always does: steps 2 and 5 start detectors from a classifier's backbone.
    _C.MODEL.DETNAS.ALLOW_RANDOM_HEADS = False

    # ---- classification form (ImageNet steps) -----------------------------------------------------
    _C.MODEL.CLASSIFIER = CN()
    _C.MODEL.CLASSIFIER.NUM_CLASSES = 1000
    _C.MODEL.CLASSIFIER.HEAD_CHANNELS = 1024  # 1x1 conv after the last stage
    # 0 for supernets; the subnet configs take 0.1, as Megvii's SPOS network (official DetNAS's: 0.2)
    _C.MODEL.CLASSIFIER.DROPOUT = 0.0
    _C.MODEL.CLASSIFIER.LABEL_SMOOTHING = 0.1

    _C.INPUT.CLS = CN()
    _C.INPUT.CLS.TRAIN_CROP = 224  # random-resized crop size
    _C.INPUT.CLS.TRAIN_SCALE = (0.08, 1.0)
    _C.INPUT.CLS.COLOR_JITTER = 0.4  # brightness/contrast/saturation strength; 0 disables
    _C.INPUT.CLS.TEST_RESIZE = 256  # shorter side before the centre crop
    _C.INPUT.CLS.TEST_CROP = 224
    _C.TEST.CLS_IMS_PER_BATCH = 64  # images per process per batch in classification evaluation

    # ---- solver additions -------------------------------------------------------------------------
    # LR_SCHEDULER_NAME also accepts "WarmupLinearDecay" (linear to 0 at MAX_ITER, after warm-up).
    # None: same as SOLVER.WEIGHT_DECAY; MMRazor's ImageNet recipe has 0.0 (`dwconv_decay_mult`)
    _C.SOLVER.WEIGHT_DECAY_DEPTHWISE = None

    # ---- the method's options: path sampler, BN recalibration, search ----------------------------
    _C.DETNAS = CN()
    # Random path per iteration (supernet training, engine/hooks.py).
    _C.DETNAS.SAMPLER = CN()
    _C.DETNAS.SAMPLER.NAME = "uniform"  # uniform | flops_uniform | latency_uniform
    _C.DETNAS.SAMPLER.SEED = (
        0  # with the iteration, fixes the path: the same on every rank and on resume
    )
    _C.DETNAS.SAMPLER.FLOPS_MIN = (
        0.0  # MACs of the backbone at SAMPLER.INPUT_SIZE; 0: the space's min
    )
    _C.DETNAS.SAMPLER.FLOPS_MAX = 0.0  # 0: the space's max (also acts as a FLOPs limit)
    _C.DETNAS.SAMPLER.NUM_BINS = 10  # flops_uniform / latency_uniform: bins between min and max
    _C.DETNAS.SAMPLER.LATENCY_TABLE = (
        ""  # latency_uniform: bins over this table's predicted latency range
    )
    _C.DETNAS.SAMPLER.INPUT_SIZE = 224
    # Progressive path warm-up (engine/sampling.py): for this many iterations only the last layers are
    # random, from 1 to all of them; the others keep MODEL.DETNAS.REFERENCE_ARCH. 0: off (SPOS, DetNAS).
    _C.DETNAS.SAMPLER.PROGRESSIVE_ITERS = 0
    # The warm-up's fixed layers: "fixed" (MODEL.DETNAS.REFERENCE_ARCH throughout) or "rotating" (a new
    # sampled arch each time one more layer turns random: the warm-up favours no arch).
    _C.DETNAS.SAMPLER.PROGRESSIVE_REFERENCE = "fixed"

    # BN recalibration (recalibration.py): before a supernet path is evaluated (training's periodic and
    # --eval-only evaluation of the reference arch) or scored (search), its BN layers get the exact
    # statistics of that path on IMAGES images of DATASET (test-time preprocessing). Training restores
    # the trained statistics afterwards. 0 images: off in training (the search needs it).
    _C.DETNAS.BN_RECALIB = CN()
    _C.DETNAS.BN_RECALIB.DATASET = ""  # empty: DATASETS.TRAIN[0]
    _C.DETNAS.BN_RECALIB.IMAGES = 4000  # the official DetNAS search's count
    _C.DETNAS.BN_RECALIB.BATCH_SIZE = (
        16  # global batches: scores do not depend on the number of processes
    )

    # Evolutionary search (search_net.py); the fitness is the task's headline metric (tasks.py).
    _C.DETNAS.SEARCH = CN()
    _C.DETNAS.SEARCH.MODE = "evolution"  # evolution | random
    _C.DETNAS.SEARCH.POPULATION = 50
    _C.DETNAS.SEARCH.GENERATIONS = 20
    _C.DETNAS.SEARCH.TOPK = 10
    _C.DETNAS.SEARCH.NUM_MUTATION = 25
    _C.DETNAS.SEARCH.MUTATION_PROB = 0.1
    _C.DETNAS.SEARCH.NUM_CROSSOVER = 25
    _C.DETNAS.SEARCH.MAX_CANDIDATES = 1000
    _C.DETNAS.SEARCH.SEED = 0
    # Constraints, checked from the FLOPs table before any evaluation (0: no bound).
    _C.DETNAS.SEARCH.FLOPS_MIN = 0.0
    _C.DETNAS.SEARCH.FLOPS_MAX = 330e6
    _C.DETNAS.SEARCH.PARAMS_MAX = 0.0
    _C.DETNAS.SEARCH.INPUT_SIZE = 224  # input size at which the FLOPs constraints are measured
    # Latency limit (ms, 0: none), predicted by a latency table built on the target device with
    # `python -m detnas_d2.latency` (its input size and batch are the deployment's).
    _C.DETNAS.SEARCH.LATENCY_TABLE = ""
    _C.DETNAS.SEARCH.LATENCY_MAX_MS = 0.0
    _C.DETNAS.SEARCH.LATENCY_DEVICE = (
        ""  # cpu | cuda: refuse a table measured on another device; "": any
    )
    # The input (HxW) the table must have been measured at; "": the model's test input (detectors
    # INPUT.MIN_SIZE_TEST x INPUT.MAX_SIZE_TEST, classifiers INPUT.CLS.TEST_CROP square).
    _C.DETNAS.SEARCH.LATENCY_INPUT_SIZE = ""
    # Cheaper search: from the second generation on, a ridge predictor fitted on the scores so far ranks
    # the generated candidates and only the best PREDICTOR_KEEP of them are scored (search/predictor.py).
    _C.DETNAS.SEARCH.PREDICTOR = ""  # "" | ridge
    _C.DETNAS.SEARCH.PREDICTOR_KEEP = 0.5
    _C.DETNAS.SEARCH.PREDICTOR_MIN_SCORED = 20  # candidates scored before the predictor screens
    # Racing (search/racing.py): candidates are scored on the first SLICES (fractions) of the evaluation
    # images, rung by rung, and only those that can still enter the top-k go on to the next slice and the
    # whole set; the others are recorded with their slice score, "full": false. () : off.
    _C.DETNAS.SEARCH.RACING = CN()
    _C.DETNAS.SEARCH.RACING.SLICES = ()  # e.g. (0.1, 0.3); rounded up to whole EVAL_BATCH_SIZE batches
    # The least safety margin (score units: AP points, top-1 %): a candidate goes on unless TOPK others beat
    # its slice score by more; it grows to twice the largest slice error measured on fully scored candidates.
    _C.DETNAS.SEARCH.RACING.MARGIN = 1.0
    # offset: the slice error is measured from the candidates' common offset (a slice easier or harder than
    # the whole set for all, which moves no ranking); absolute: from 0, a larger margin (search/racing.py).
    _C.DETNAS.SEARCH.RACING.MARGIN_MODE = "offset"
    # Scoring
    _C.DETNAS.SEARCH.EVAL_DATASET = ""  # held-out split; empty: DATASETS.TEST[0]
    _C.DETNAS.SEARCH.EVAL_IMAGES = 0  # score on the first N images; 0: all
    _C.DETNAS.SEARCH.EVAL_BATCH_SIZE = (
        4  # images per inference forward while scoring (global batches)
    )
    # Test-time shorter side while scoring (BN recalibration and evaluation images; INPUT.MAX_SIZE_TEST
    # scaled alike): a cheaper protocol at a lower resolution. 0: the detector's own INPUT.MIN_SIZE_TEST.
    _C.DETNAS.SEARCH.EVAL_MIN_SIZE = 0
    _C.DETNAS.SEARCH.DIST_MODE = "split_images"  # split_images | split_candidates
    _C.DETNAS.SEARCH.CACHE_MB = (
        4096  # per process: keep the mapped recalibration/eval inputs in memory up to this
    )
    # Several supernets (e.g. seeds, or the last snapshots of one run): each candidate's score is the mean of
    # its scores on every one, each with its own BN recalibration. Empty: MODEL.WEIGHTS alone.
    _C.DETNAS.SEARCH.ENSEMBLE_WEIGHTS = []
    # Finalists (search/finalists.py): after the evolution the TOPK best candidates are scored again on the
    # first EVAL_IMAGES images of the evaluation split (0: all) and on every supernet of WEIGHTS (empty: the
    # search's), with a bootstrap interval over images and supernets; best_arch.yaml names the finalist of
    # the best mean and those that cannot be told apart from it, or with TIE_BREAK ("flops", "params" or
    # "latency_ms") the cheapest of that group. TOPK 0: off.
    _C.DETNAS.SEARCH.FINALISTS = CN()
    _C.DETNAS.SEARCH.FINALISTS.TOPK = 0
    _C.DETNAS.SEARCH.FINALISTS.EVAL_IMAGES = 0
    _C.DETNAS.SEARCH.FINALISTS.WEIGHTS = []
    _C.DETNAS.SEARCH.FINALISTS.BOOTSTRAP = 1000  # resamples
    _C.DETNAS.SEARCH.FINALISTS.CONFIDENCE = 0.95
    _C.DETNAS.SEARCH.FINALISTS.TIE_BREAK = ""
    # What scores a candidate: "supernet" (BN recalibration and evaluation on the supernet of
    # MODEL.WEIGHTS) or a zero-shot score of its subnet at random initialisation, with no supernet and no
    # data (detnas_d2/zero_shot/): "zero_shot_entropy" (MAE-DET's multi-scale entropy) or
    # "zero_shot_zen" (Zen-NAS's Zen-score). Zero-shot: MODEL.WEIGHTS, BN_RECALIB and the evaluation
    # keys are not read.
    _C.DETNAS.SEARCH.SCORER = "supernet"
    _C.DETNAS.SEARCH.ZERO_SHOT = CN()
    _C.DETNAS.SEARCH.ZERO_SHOT.REPEATS = 4  # Gaussian initialisations, each with its random images
    _C.DETNAS.SEARCH.ZERO_SHOT.BATCH_SIZE = 32  # random images per initialisation
    _C.DETNAS.SEARCH.ZERO_SHOT.INPUT_SIZE = 0  # their side (square); 0: DETNAS.SEARCH.INPUT_SIZE
    # entropy: the weight of each feature level's entropy, the stem (stride 2) first, then the stages
    _C.DETNAS.SEARCH.ZERO_SHOT.STAGE_WEIGHTS = (0.0, 0.0, 1.0, 1.0, 6.0)


# Keys of earlier releases, read for one release with a warning naming the new key (None: dropped).
RENAMED_KEYS = {
    "TEST.BN_RECALIB_IMAGES": "DETNAS.BN_RECALIB.IMAGES",
    "TEST.BN_RECALIB_BATCH_SIZE": "DETNAS.BN_RECALIB.BATCH_SIZE",
    "SEARCH.BN_RECALIB_DATASET": "DETNAS.BN_RECALIB.DATASET",
    "SEARCH.BN_RECALIB_IMAGES": "DETNAS.BN_RECALIB.IMAGES",
    "SEARCH.BN_RECALIB_BATCH_SIZE": "DETNAS.BN_RECALIB.BATCH_SIZE",
    "SEARCH.FITNESS": None,  # the task's headline metric: bbox_AP for detectors, top1 for classifiers
}
for _key in (
    "MODE",
    "POPULATION",
    "GENERATIONS",
    "TOPK",
    "NUM_MUTATION",
    "MUTATION_PROB",
    "NUM_CROSSOVER",
    "MAX_CANDIDATES",
    "SEED",
    "FLOPS_MIN",
    "FLOPS_MAX",
    "PARAMS_MAX",
    "INPUT_SIZE",
    "EVAL_DATASET",
    "EVAL_IMAGES",
    "EVAL_BATCH_SIZE",
    "DIST_MODE",
    "CACHE_MB",
):
    RENAMED_KEYS[f"SEARCH.{_key}"] = f"DETNAS.SEARCH.{_key}"


def _renamed(key: str, source: str):
    """The current name of `key` (itself unless it is an old one; None: dropped), with a warning."""
    if key not in RENAMED_KEYS:
        return key
    new = RENAMED_KEYS[key]
    hint = (
        f"use {new}" if new else "it is no longer used (the fitness is the task's headline metric)"
    )
    logging.getLogger(__name__).warning(f"{source}: config key {key} is deprecated; {hint}")
    return new


def _leaves(tree: dict, prefix: str = ""):
    for name, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{name}.")
        else:
            yield prefix + name, value


def _rename_tree(tree: dict, source: str) -> dict:
    """A copy of a loaded YAML mapping with old keys moved to their current place."""
    nested = {}
    for key, value in _leaves(tree):
        key = _renamed(key, source)
        if key is None:
            continue
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _arch_value(value) -> str:
    """An arch option as yacs must receive it to keep it a string: a YAML list of ids or names, or a
    comma-separated text, would otherwise be read as a tuple and rejected."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return repr(str(value))


def _option(cfg, key: str):
    """The value of option `key` (dotted) in `cfg`, or None if there is no such option."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _plain_value(default, value):
    """`value` in the type of its option's `default` where yacs would refuse it but the meaning is
    plain: an int for a float option (`LATENCY_MAX_MS 100`), a number for a string option
    (`LATENCY_INPUT_SIZE 224`). Any other value unchanged."""
    if type(value) is int and isinstance(default, float):
        return float(value)
    if type(value) in (int, float) and isinstance(default, str):
        return str(value)
    return value


def _plain_values(tree: dict, defaults) -> None:
    """`_plain_value` on every value of a loaded config file, in place (strings quoted: yacs decodes
    a file's strings as Python literals when it merges them)."""
    for name, value in tree.items():
        default = defaults.get(name) if isinstance(defaults, dict) else None
        if isinstance(value, dict):
            _plain_values(value, default)
            continue
        plain = _plain_value(default, value)
        if plain is not value:
            tree[name] = repr(plain) if isinstance(plain, str) else plain


def _plain_text(cfg, key: str, text):
    """A command-line value (a Python literal, else the text, as yacs reads it) through
    `_plain_value`, as text that yacs reads back as that."""
    if not isinstance(text, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    plain = _plain_value(_option(cfg, key), value)
    return text if plain is value else repr(plain)


class _UpgradingCfgNode(CN):
    """Reads every file of a `_BASE_` chain with its old keys renamed and its arch options as strings,
    before the files are merged (so a child's old key still overrides its base's new one)."""

    @classmethod
    def _open_cfg(cls, filename):
        with super()._open_cfg(filename) as f:
            text = f.read()
        try:
            tree = yaml.safe_load(text) or {}
        except yaml.YAMLError:
            return io.StringIO(text)  # Detectron2's loader reports it (or loads it unsafely)
        base = tree.pop("_BASE_", None)
        tree = _rename_tree(tree, filename)
        model = tree.get("MODEL", {}).get("DETNAS", {})
        for key in ("ARCH", "REFERENCE_ARCH"):
            if key in model:
                model[key] = _arch_value(model[key])
        if base is not None:
            tree["_BASE_"] = base
        return io.StringIO(yaml.safe_dump(tree))


class ConfigError(UserError):
    """A config file or command-line option that cannot be read: no such file or key, a file that is
    not YAML, a value of another type than the option's."""


_TYPE_MISMATCH = re.compile(
    r"Type mismatch \(<class '(\w+)'> vs\. <class '(\w+)'>\) with values \((.*) vs\. (.*)\) "
    r"for config key: (\S+)",
    re.S,
)
_NO_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")


def _config_problem(error: Exception, source: str, cfg) -> str:
    """One line saying what in `source` (a file or the command line) yacs or YAML refused."""
    text = str(error.args[0]) if error.args else str(error)
    match = _NO_KEY.search(text)
    if match:
        key = match.group(1)
        close = difflib.get_close_matches(key, [k for k, _ in _leaves(cfg)], n=1, cutoff=0.8)
        hint = (
            f"did you mean {close[0]}?"
            if close
            else "check its spelling (options: detnas_d2/config.py and Detectron2's config/defaults.py)"
        )
        return f"{source}: no config key {key}; {hint}"
    match = _TYPE_MISMATCH.search(text)
    if match:
        expected, given, default, value, key = match.groups()
        article = "an" if expected[0] in "aeiou" else "a"
        return f"{source}: {key} takes {article} {expected} (default {default}), got {value!r} ({given})"
    if isinstance(error, yaml.YAMLError):
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        return f"{source}: not valid YAML ({getattr(error, 'problem', None) or error}{where})"
    if isinstance(error, OSError):
        return f"{source}: cannot read {error.filename or 'a file'} ({error.strerror or error})"
    return f"{source}: {text}"


def get_detnas_cfg(config_file: str = "", opts=()):
    """A Detectron2 config with the DetNAS options, merged from `config_file` and command-line `opts`.

    Arch options take comma-separated ids on the command line (and YAML lists of ids in files). Keys of
    earlier releases (RENAMED_KEYS) are read with a warning naming the new key. Without CUDA,
    MODEL.DEVICE becomes cpu. A file or option that cannot be read is a ConfigError naming it.
    """
    cfg = get_cfg()
    add_detnas_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise ConfigError(f"config file {config_file}: no such file")
        try:
            loaded = _UpgradingCfgNode.load_yaml_with_base(config_file, allow_unsafe=True)
            _plain_values(loaded, cfg)
            cfg.merge_from_other_cfg(type(cfg)(loaded))
        except (KeyError, ValueError, AssertionError, TypeError, yaml.YAMLError, OSError) as e:
            raise ConfigError(_config_problem(e, f"config file {config_file}", cfg)) from e
    opts = list(opts)
    keys = {key for key, _ in _leaves(cfg)}
    for key, value in zip(opts[0::2], opts[1::2]):
        if value in keys and key in keys:  # a key without its value shifts every pair after it
            raise ConfigError(
                f"command line: {key} has no value (the next item is the key {value})"
            )
    if len(opts) % 2:
        raise ConfigError(
            f"command-line options come in KEY VALUE pairs; '{opts[-1]}' has no value"
        )
    renamed = []
    for key, value in zip(opts[0::2], opts[1::2]):
        key = _renamed(key, "command line")
        if key is not None:
            value = _arch_value(value) if key in _ARCH_KEYS else _plain_text(cfg, key, value)
            renamed += [key, value]
    try:
        cfg.merge_from_list(renamed)
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        raise ConfigError(_config_problem(e, "command line", cfg)) from e
    if cfg.MODEL.DEVICE != "cpu" and not torch.cuda.is_available():
        logging.getLogger(__name__).warning(f"No CUDA: MODEL.DEVICE {cfg.MODEL.DEVICE} -> cpu")
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def frozen_cfg(args):
    """The frozen config of train_net.py / search_net.py's command line (`get_detnas_cfg`); nothing
    written yet."""
    cfg = get_detnas_cfg(args.config_file, args.opts)
    cfg.freeze()
    return cfg


def setup_run(cfg, args):
    """Detectron2's default_setup (output folder, config.yaml, logging, seeds) and the detnas_d2 logger:
    the first writes of a run, after its checks."""
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="detnas_d2")


def setup_cfg(args):
    """`frozen_cfg`, then `setup_run`."""
    cfg = frozen_cfg(args)
    setup_run(cfg, args)
    return cfg
