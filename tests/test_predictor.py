"""Predictor-screened search (DETNAS.SEARCH.PREDICTOR): the ridge predictor recovers an additive fitness's ranking, a
screened search scores only the kept fraction, logs predictions, never scores an arch twice and resumes
exactly after a crash."""

import json
import random

import detnas_d2  # noqa: F401  (compat shims before detectron2 imports)

import numpy as np
import pytest

from detnas_d2.flops import get_flops_table
from detnas_d2.rank_stats import kendall_tau_b
from detnas_d2.search import ArchConstraints, EvolutionSearch, SearchSettings
from detnas_d2.search.predictor import RidgePredictor
from detnas_d2.search_space import get_space

SPACE = get_space("small", 0.25)
WEIGHTS = np.random.default_rng(0).normal(size=(SPACE.num_layers, SPACE.max_choices))


def additive(arch):
    return float(sum(WEIGHTS[i][a] for i, a in enumerate(arch)))


def score(archs):
    return [{"score": additive(a)} for a in archs]


def test_ridge_recovers_an_additive_ranking():
    rng = random.Random(0)
    train = [SPACE.random_arch(rng) for _ in range(120)]
    test = [SPACE.random_arch(rng) for _ in range(100)]
    predicted = RidgePredictor(SPACE).fit(train, [additive(a) for a in train]).predict(test)
    assert kendall_tau_b(predicted, [additive(a) for a in test]) > 0.9


def _settings(**kw):
    base = dict(
        population=10,
        generations=4,
        topk=3,
        num_mutation=4,
        num_crossover=4,
        seed=1,
        predictor="ridge",
        predictor_keep=0.4,
        predictor_min_scored=10,
    )
    base.update(kw)
    return SearchSettings(**base)


class Crash(Exception):
    pass


def test_screened_search_scores_the_kept_fraction_and_resumes_exactly(tmp_path):
    constraints = ArchConstraints(get_flops_table(SPACE, 64), SPACE, 64)
    full = EvolutionSearch(_settings(), SPACE, constraints, str(tmp_path / "full.json")).run(score)
    per_generation = [sum(r["generation"] == g for r in full.history) for g in range(4)]
    assert per_generation == [10, 4, 4, 4]  # the first generation in full, then 40% of 10
    assert all(("predicted" in r) == (r["generation"] > 0) for r in full.history)
    assert len({tuple(r["arch"]) for r in full.history}) == len(full.history)
    unscreened = EvolutionSearch(_settings(predictor=""), SPACE, constraints, None).run(score)
    assert len(unscreened.history) == 40 and "predicted" not in unscreened.history[-1]

    path = str(tmp_path / "crashed.json")
    calls = []

    def crash(archs):
        calls.append(archs)
        if len(calls) == 16:  # inside generation 2
            raise Crash()
        return score(archs)

    with pytest.raises(Crash):
        EvolutionSearch(_settings(), SPACE, constraints, path).run(crash)
    assert json.load(open(path))["generation"] == 2
    resumed = EvolutionSearch(_settings(), SPACE, constraints, path, resume=True).run(score)
    untimed = lambda history: [{k: v for k, v in r.items() if k != "seconds_wall"} for r in history]  # noqa: E731
    assert untimed(resumed.history) == untimed(full.history)


def test_bad_predictor_settings_fail_clearly():
    with pytest.raises(ValueError, match="DETNAS.SEARCH.PREDICTOR must be one of"):
        _settings(predictor="gp").validate()
    with pytest.raises(ValueError, match=r"PREDICTOR_KEEP must be in \(0, 1\]"):
        _settings(predictor_keep=0.0).validate()
