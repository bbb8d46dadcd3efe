"""Zero-shot scoring of archs: the settings (DETNAS.SEARCH.SCORER and DETNAS.SEARCH.ZERO_SHOT, read once)
and the scorer, with the interface of the search's supernet scorer (`score(arch)` -> {"score", ...})."""

import time
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from ..search_space import space_from_cfg
from ..user_errors import UserError
from .entropy import DEFAULT_STAGE_WEIGHTS, multi_scale_entropy
from .network import build_scoring_backbone, gaussian_init, random_images
from .zen import zen_score

__all__ = ["METHODS", "SCORER_PREFIX", "ZeroShotScorer", "ZeroShotSettings"]

METHODS = ("entropy", "zen")  # MAE-DET's multi-scale entropy, Zen-NAS's Zen-score
SCORER_PREFIX = "zero_shot_"  # DETNAS.SEARCH.SCORER names them zero_shot_entropy, zero_shot_zen
MIN_INPUT_SIZE = 32  # the deepest stage's stride: a smaller input has no deepest feature map


@dataclass(frozen=True)
class ZeroShotSettings:
    """How a zero-shot score is computed: `method` (METHODS), `repeats` Gaussian initialisations, each
    with its own `batch_size` random images of `input_size` pixels square, the scores' mean; `seed`;
    `stage_weights` (entropy: one per feature level). `dist_mode` only says how a search with several
    processes shares its candidates (DETNAS.SEARCH.DIST_MODE)."""

    method: str
    repeats: int = 4
    batch_size: int = 32
    input_size: int = 224
    stage_weights: Tuple[float, ...] = DEFAULT_STAGE_WEIGHTS
    seed: int = 0
    dist_mode: str = "split_images"

    @property
    def fitness(self) -> str:
        """The name of the score (the search's fitness, the audit's metric)."""
        return SCORER_PREFIX + self.method

    @property
    def supernets(self) -> Tuple[str, ...]:
        """No supernet is read."""
        return ()

    @property
    def images_per_arch(self) -> int:
        """The random images forwarded for one arch (Zen forwards every batch twice)."""
        return self.repeats * self.batch_size * (2 if self.method == "zen" else 1)

    @classmethod
    def from_cfg(cls, cfg, method: Optional[str] = None) -> "ZeroShotSettings":
        """The settings of `cfg`; `method`: one of METHODS, else the one DETNAS.SEARCH.SCORER names."""
        s = cfg.DETNAS.SEARCH
        if method is None:
            method = (
                s.SCORER[len(SCORER_PREFIX) :] if s.SCORER.startswith(SCORER_PREFIX) else s.SCORER
            )
        z = s.ZERO_SHOT
        settings = cls(
            method,
            int(z.REPEATS),
            int(z.BATCH_SIZE),
            int(z.INPUT_SIZE or s.INPUT_SIZE),
            tuple(float(w) for w in z.STAGE_WEIGHTS),
            int(s.SEED),
            s.DIST_MODE,
        )
        settings.validate()
        return settings

    def validate(self):
        if self.method not in METHODS:
            raise UserError(
                f"unknown zero-shot scorer '{self.method}'; choose one of {list(METHODS)}"
            )
        for key, value, least in (
            ("REPEATS", self.repeats, 1),
            ("BATCH_SIZE", self.batch_size, 2),
            ("INPUT_SIZE", self.input_size, MIN_INPUT_SIZE),
        ):
            if value < least:
                raise UserError(f"DETNAS.SEARCH.ZERO_SHOT.{key} must be >= {least}, got {value}")
        weights = self.stage_weights
        if self.method == "entropy" and (min(weights, default=0) < 0 or not any(weights)):
            raise UserError(
                "DETNAS.SEARCH.ZERO_SHOT.STAGE_WEIGHTS must be >= 0 and not all 0 (one per feature "
                f"level, the stem first), got {weights}"
            )

    def fingerprint(self) -> Dict:
        """What fixes the scores besides the arch and the seed (a search's resume fingerprint, a score
        file's settings)."""
        settings = {
            "repeats": self.repeats,
            "batch_size": self.batch_size,
            "input_size": self.input_size,
        }
        if self.method == "entropy":
            settings["stage_weights"] = list(self.stage_weights)
        return {"scorer": self.fitness, "zero_shot": settings}


class ZeroShotScorer:
    """Scores archs of the space of `cfg` without a supernet or data: each arch's subnet backbone is built
    (network.py), initialised and fed random images once per repeat, and its score is the mean. Scores
    are the same on every process and deterministic for a seed (on the CPU; GPU convolutions may differ
    in the last bits). Runs on MODEL.DEVICE."""

    def __init__(self, cfg, settings: ZeroShotSettings):
        self.cfg = cfg
        self.settings = settings
        self.space = space_from_cfg(cfg)
        self.device = torch.device(cfg.MODEL.DEVICE)
        self.channels = len(cfg.MODEL.PIXEL_MEAN)

    def score(
        self,
        arch: Sequence[int],
        fraction: float = 1.0,
        supernet: Optional[int] = None,
        bootstrap: Optional[Tuple[int, int]] = None,
    ) -> Dict:
        """{"score", "seed_scores" (one per repeat), "images_recalib" (0), "images_eval" (the random
        images forwarded), "seconds_build", "seconds_score"}. `fraction`, `supernet` and `bootstrap` are
        the supernet scorer's (racing, ensembles, finalists): a zero-shot score has none."""
        if fraction != 1.0 or supernet is not None or bootstrap is not None:
            raise ValueError(
                "a zero-shot score has no evaluation slices, supernets or bootstrap resamples"
            )
        s = self.settings
        arch = self.space.validate(arch)
        start = time.perf_counter()
        backbone = build_scoring_backbone(self.cfg, arch).to(self.device)
        built = time.perf_counter()
        scores = []
        for repeat in range(s.repeats):
            seed = (s.seed, repeat)
            gaussian_init(backbone, arch, seed)
            batches = random_images(
                seed,
                2 if s.method == "zen" else 1,
                s.batch_size,
                self.channels,
                s.input_size,
                self.device,
            )
            if s.method == "entropy":
                scores.append(
                    multi_scale_entropy(backbone, self.space, batches[0], s.stage_weights)
                )
            else:
                scores.append(zen_score(backbone, *batches))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        done = time.perf_counter()
        return {
            "score": float(np.mean(scores)),
            "seed_scores": scores,
            "images_recalib": 0,
            "images_eval": s.images_per_arch,
            "seconds_build": built - start,
            "seconds_score": done - built,
        }
