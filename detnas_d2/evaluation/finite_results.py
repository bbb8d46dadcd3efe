"""An evaluation's headline metrics must be numbers: Detectron2's COCOEvaluator reports "AP": NaN when the
model made no detection on any image (weights that give NaN outputs do that), and writing that as a
result would pass for one."""

import math
from typing import Dict, List

from ..user_errors import UserError

__all__ = ["HEADLINE_METRICS", "NonFiniteResultsError", "require_finite_results"]

# AP by object size or category is NaN where the split has no such object: not checked.
HEADLINE_METRICS = ("AP", "AP50", "AP75", "top1", "top5")


class NonFiniteResultsError(UserError):
    """An evaluation whose headline metrics are NaN or Inf."""


def _non_finite(results: Dict, prefix: str = "") -> List[str]:
    found = []
    for key, value in results.items():
        if isinstance(value, dict):
            found += _non_finite(value, f"{prefix}{key}/")
        elif (
            key in HEADLINE_METRICS and isinstance(value, (int, float)) and not math.isfinite(value)
        ):
            found.append(f"{prefix}{key} {value}")
    return found


def require_finite_results(results: Dict, weights: str) -> None:
    """NonFiniteResultsError naming the headline metrics of `results` (nested as Detectron2 returns them:
    {dataset: {task: {metric: value}}} or {task: {...}}) that are NaN or Inf; `weights`: the checkpoint
    evaluated, for the message."""
    bad = _non_finite(results)
    if bad:
        raise NonFiniteResultsError(
            f"the evaluation gave {', '.join(bad)}: the model made no prediction that could be scored (no "
            f"detection on any image: its outputs are NaN, or every score is below the test threshold). "
            f"Check MODEL.WEIGHTS ({weights or 'empty: random weights'}) and the evaluated DATASETS.TEST"
        )
