"""What a training (train_net.py) checks before it writes anything in OUTPUT_DIR, and what a --resume may
change in the run it continues."""

import os
from typing import Any, Dict, List, Tuple

import yaml
from detectron2.utils import comm

from ..arch_io import load_arch
from ..data.datasets import require_registered
from ..search_space import space_from_cfg
from ..user_errors import UserError

__all__ = ["check_training", "changed_settings"]

CONFIG_FILE = "config.yaml"  # Detectron2's default_setup writes the run's config there
# What a --resume may change in a run that has checkpoints: its length and learning-rate steps (to extend a
# schedule), how often it saves and evaluates, how it loads data, and where it runs. MODEL.WEIGHTS is not
# read when a checkpoint is resumed. Any other change would continue one run with another's settings.
RESUMABLE_CHANGES = (
    "SOLVER.MAX_ITER",
    "SOLVER.STEPS",
    "SOLVER.CHECKPOINT_PERIOD",
    "TEST.EVAL_PERIOD",
    "VIS_PERIOD",
    "DATALOADER.NUM_WORKERS",
    "MODEL.DEVICE",
    "MODEL.WEIGHTS",
    "OUTPUT_DIR",
)


def check_training(cfg, resume: bool, eval_only: bool):
    """Raise a UserError for what the run cannot do: an arch option that cannot be read, a dataset that
    is not registered, solver counts that train nothing, and without --resume a folder that holds
    another training's checkpoints (it would replace model_final.pth and leave the old periodic
    checkpoints beside the new)."""
    try:
        space = space_from_cfg(cfg)
    except ValueError as e:  # MODEL.DETNAS.SPACE, WIDTH_MULT, BLOCK_STYLE
        raise UserError(str(e)) from None
    for key in ("ARCH", "REFERENCE_ARCH"):
        if cfg.MODEL.DETNAS[key]:
            load_arch(cfg.MODEL.DETNAS[key], space)
    require_registered(cfg.DATASETS.TEST, "DATASETS.TEST")
    if eval_only:
        return
    require_registered(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
    _check_solver(cfg.SOLVER, comm.get_world_size())
    if not resume:
        _check_no_checkpoints(cfg.OUTPUT_DIR)
    elif os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        _check_same_run(cfg)


def _check_same_run(cfg):
    """A --resume continues the run of OUTPUT_DIR only with its settings, but for RESUMABLE_CHANGES."""
    refused = [_describe(change) for change in _changes(cfg) if change[0] not in RESUMABLE_CHANGES]
    if refused:
        raise UserError(
            f"--resume would continue the training in {cfg.OUTPUT_DIR} with other settings than it was "
            f"started with ({CONFIG_FILE}): {'; '.join(refused)}. Resume with its settings, or train anew in "
            "another OUTPUT_DIR (a resume may change only " + ", ".join(RESUMABLE_CHANGES) + ")"
        )


def _check_solver(solver, world_size: int):
    batch = solver.IMS_PER_BATCH
    if batch < 1 or batch % world_size:
        raise UserError(
            f"SOLVER.IMS_PER_BATCH {batch}: the images per iteration of all processes together, at "
            f"least 1 and a multiple of the {world_size} process(es)"
        )
    for key in ("MAX_ITER", "CHECKPOINT_PERIOD"):
        if solver[key] < 1:
            raise UserError(f"SOLVER.{key} must be >= 1, got {solver[key]}")
    if solver.BASE_LR < 0:
        raise UserError(f"SOLVER.BASE_LR must be >= 0, got {solver.BASE_LR}")


def _check_no_checkpoints(folder: str):
    if not os.path.isdir(folder):
        return
    found = sorted(
        name
        for name in os.listdir(folder)
        if name == "last_checkpoint" or (name.startswith("model_") and name.endswith(".pth"))
    )
    if found:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise UserError(
            f"OUTPUT_DIR {folder} holds a training's checkpoints ({shown}): pass --resume to continue "
            "that training, or give another OUTPUT_DIR (or empty this one) to train anew"
        )


def _flat(tree, prefix: str = "") -> Dict:
    flat = {}
    for key, value in (tree or {}).items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def changed_settings(cfg) -> List[str]:
    """The options of `cfg` whose values differ from OUTPUT_DIR/config.yaml (the config of the run a
    --resume continues, before this run rewrites it), as "KEY: old -> new"; [] without that file or
    when it holds no config."""
    return [_describe(change) for change in _changes(cfg)]


def _describe(change: Tuple[str, Any, Any]) -> str:
    key, old, new = change
    return f"{key}: {old!r} -> {new!r}"


def _changes(cfg) -> List[Tuple[str, Any, Any]]:
    """(KEY, old, new) for `changed_settings`."""
    path = os.path.join(cfg.OUTPUT_DIR, CONFIG_FILE)
    if not os.path.isfile(path):
        return []
    try:
        with open(path) as f:
            old = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return []
    if not isinstance(old, dict):
        return []
    old = _flat(old)
    new = _flat(yaml.safe_load(cfg.dump()))
    return [(k, old.get(k), new.get(k)) for k in sorted(new) if old.get(k) != new.get(k)]
