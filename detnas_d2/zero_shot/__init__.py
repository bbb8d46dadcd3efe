"""Zero-shot scores of an arch: training-free proxies of its accuracy, computed on its subnet at random
initialisation with random images, with no supernet and no data (a search without pipeline steps 1-2).

network.py (the subnet built with the project's builder, paired Gaussian initialisation, random images)
< entropy.py (MAE-DET's multi-scale entropy), zen.py (Zen-NAS's Zen-score) < scorer.py (settings read
once, and the scorer with the search's interface).
"""

from .entropy import DEFAULT_STAGE_WEIGHTS, multi_scale_entropy
from .network import build_scoring_backbone, gaussian_init, random_images
from .scorer import METHODS, SCORER_PREFIX, ZeroShotScorer, ZeroShotSettings
from .zen import MIXUP_GAMMA, zen_score

__all__ = [
    "DEFAULT_STAGE_WEIGHTS",
    "METHODS",
    "MIXUP_GAMMA",
    "SCORER_PREFIX",
    "ZeroShotScorer",
    "ZeroShotSettings",
    "build_scoring_backbone",
    "gaussian_init",
    "multi_scale_entropy",
    "random_images",
    "zen_score",
]
