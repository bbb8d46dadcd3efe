"""A score predictor fitted on the candidates scored so far, so that a generation scores only the
children it ranks best (as Once-for-All's and NSGANetV2's surrogates do).

Features: one-hot block choice per layer (the supernet's own parameterisation; a layer has as many
features as candidates); model: ridge regression in closed form (float64, deterministic: a resumed
search refits exactly the same predictor).
"""

import math
from typing import List, Sequence, Tuple

import numpy as np

from detnas_d2.search_space import SearchSpace

__all__ = ["PREDICTORS", "RidgePredictor", "screen_candidates"]

PREDICTORS = ("", "ridge")


class RidgePredictor:
    def __init__(self, space: SearchSpace, alpha: float = 1.0):
        self.alpha = float(alpha)
        self._weights = None
        self._mean = 0.0
        # the first feature of every layer: its blocks' one-hot features follow
        self._offsets = np.concatenate(([0], np.cumsum(space.num_choices)[:-1])).astype(np.int64)
        self._num_features = int(sum(space.num_choices))

    def features(self, archs: Sequence[Sequence[int]]) -> np.ndarray:
        archs = np.asarray(archs, dtype=np.int64)
        x = np.zeros((len(archs), self._num_features))
        rows = np.repeat(np.arange(len(archs)), archs.shape[1])
        x[rows, (self._offsets + archs).ravel()] = 1.0
        return x

    def fit(self, archs: Sequence[Sequence[int]], scores: Sequence[float]) -> "RidgePredictor":
        x, y = self.features(archs), np.asarray(scores, dtype=np.float64)
        self._mean = float(y.mean())
        self._weights = np.linalg.solve(
            x.T @ x + self.alpha * np.eye(x.shape[1]), x.T @ (y - self._mean)
        )
        return self

    def predict(self, archs: Sequence[Sequence[int]]) -> np.ndarray:
        return self.features(archs) @ self._weights + self._mean


def screen_candidates(
    population: List[Tuple[Tuple[int, ...], str]], history, keep: float, space: SearchSpace
) -> Tuple[List[Tuple[Tuple[int, ...], str]], List[float]]:
    """The ceil(keep * n) candidates a predictor fitted on `history` ranks best (in their generated
    order), and their predicted scores."""
    predictor = RidgePredictor(space).fit(
        [r["arch"] for r in history], [r["score"] for r in history]
    )
    predicted = predictor.predict([arch for arch, _ in population]).tolist()
    n = max(1, math.ceil(keep * len(population)))
    chosen = sorted(sorted(range(len(population)), key=lambda i: (-predicted[i], i))[:n])
    return [population[i] for i in chosen], [predicted[i] for i in chosen]
