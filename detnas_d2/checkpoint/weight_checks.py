"""Checks of the weights a model is about to load, each a one-line error naming the file and the fix:

- `require_finite`: no NaN or Inf anywhere (a diverged training's weights give NaN outputs, which an
  evaluation reports as "AP": NaN and a search as a score of 0 for every candidate);
- `require_whole_model`: every tensor of the model is in the file with its shape. Evaluations and
  searches ask for it (MODEL.DETNAS.ALLOW_RANDOM_HEADS False): a detector whose FPN, RPN and ROI heads
  come from nowhere (e.g. a detection search given the step-1 classifier supernet) measures nothing.
  Training does not: steps 2 and 5 start detectors from a classifier's backbone.
"""

from typing import Dict, List, Tuple

import torch

from .safe_read import CheckpointError

__all__ = [
    "IncompleteWeightsError",
    "NonFiniteWeightsError",
    "require_finite",
    "require_whole_model",
]

# Detectron2's names of a detector's parts, for messages; other keys are named by their first module.
_PART_NAMES = (
    ("backbone.fpn_", "FPN"),
    ("backbone.top_block.", "FPN"),
    ("proposal_generator.", "RPN"),
    ("roi_heads.", "ROI heads"),
    ("backbone.bottom_up.", "backbone"),
)


class NonFiniteWeightsError(CheckpointError):
    """A checkpoint holding NaN or Inf values."""


class IncompleteWeightsError(CheckpointError):
    """A checkpoint that leaves parts of the model at their random initialisation, where that is refused."""


def _float_tensors(state: Dict) -> List[Tuple[str, torch.Tensor]]:
    return [
        (k, v) for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
    ]


def require_finite(state: Dict, filename: str, fix: str = "") -> None:
    """NonFiniteWeightsError naming the first tensors of `state` holding NaN or Inf; `fix`: a sentence
    added to the default advice (e.g. the checkpoint to resume from instead)."""
    tensors = _float_tensors(state)
    bad = []
    for key, value in tensors:
        count = value.numel() - int(torch.isfinite(value).sum())
        if count:
            bad.append(f"'{key}' ({count} of {value.numel()})")
    if not bad:
        return
    raise NonFiniteWeightsError(
        f"{filename}: {len(bad)} of its {len(tensors)} tensors hold NaN or Inf values (first "
        f"{', '.join(bad[:3])}): weights of a training that diverged, which give NaN outputs. Use a "
        "checkpoint from before the divergence, or train again (a lower SOLVER.BASE_LR, a longer "
        f"SOLVER.WARMUP_ITERS).{fix}"
    )


def _part(key: str) -> str:
    for prefix, name in _PART_NAMES:
        if key.startswith(prefix):
            return name
    return key.split(".", 1)[0] + ".*"


def require_whole_model(model_state: Dict, state: Dict, filename: str) -> None:
    """IncompleteWeightsError when tensors of `model_state` are missing from `state` or have another shape
    there (BN step counters aside: they carry no weights)."""
    missing, reshaped = [], []
    for key, value in model_state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key not in state:
            missing.append(key)
        elif tuple(state[key].shape) != tuple(value.shape):
            reshaped.append((key, tuple(state[key].shape), tuple(value.shape)))
    if not (missing or reshaped):
        return
    keys = missing + [k for k, _, _ in reshaped]
    parts = list(dict.fromkeys(_part(k) for k in keys))
    counts = []
    if missing:
        counts.append(f"{len(missing)} tensors missing, first '{missing[0]}'")
    if reshaped:
        key, theirs, ours = reshaped[0]
        counts.append(
            f"{len(reshaped)} of another shape, first '{key}': file {theirs}, model {ours}"
        )
    raise IncompleteWeightsError(
        f"{filename} holds no weights for the model's {', '.join(parts)} ({'; '.join(counts)}): they would "
        "stay randomly initialised, and what random heads give means nothing. Give a checkpoint of this "
        "model (for a detection search, the step-2 detection supernet, not the step-1 ImageNet classifier "
        "supernet), or set MODEL.DETNAS.ALLOW_RANDOM_HEADS True to run with them random"
    )
