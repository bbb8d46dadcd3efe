"""A search's settings, read once from the config, and the fingerprint that guards its resume."""
import json
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

from detnas_d2.recalibration import RecalibrationSettings
from detnas_d2.search_space import SearchSpace
from detnas_d2.tasks import get_task

from .predictor import PREDICTORS
from .racing import MARGIN_MODES

__all__ = ["DIST_MODES", "FinalistSettings", "ScoringSettings", "SearchSettings", "search_fingerprint"]

DIST_MODES = ("split_images", "split_candidates")


@dataclass(frozen=True)
class SearchSettings:
    mode: str = "evolution"
    population: int = 50
    generations: int = 20
    topk: int = 10
    num_mutation: int = 25
    mutation_prob: float = 0.1
    num_crossover: int = 25
    max_candidates: int = 1000
    seed: int = 0
    predictor: str = ""  # "ridge": score only the children a predictor fitted on the history ranks best
    predictor_keep: float = 0.5  # the fraction of each generation (after the first) that is scored
    predictor_min_scored: int = 20  # candidates scored before the predictor screens
    racing_slices: Tuple[float, ...] = ()  # fractions of the evaluation images of the first rungs (racing.py)
    racing_margin: float = 1.0  # the least safety margin, in score units
    racing_margin_mode: str = "offset"  # slice errors measured from the candidates' common offset, or from 0

    @classmethod
    def from_cfg(cls, cfg) -> "SearchSettings":
        s = cfg.DETNAS.SEARCH
        settings = cls(
            s.MODE, s.POPULATION, s.GENERATIONS, s.TOPK, s.NUM_MUTATION, s.MUTATION_PROB,
            s.NUM_CROSSOVER, s.MAX_CANDIDATES, s.SEED, s.PREDICTOR, s.PREDICTOR_KEEP, s.PREDICTOR_MIN_SCORED,
            tuple(float(f) for f in s.RACING.SLICES), float(s.RACING.MARGIN), s.RACING.MARGIN_MODE,
        )
        settings.validate()
        return settings

    def validate(self):
        if self.mode not in ("evolution", "random"):
            raise ValueError(f"DETNAS.SEARCH.MODE must be 'evolution' or 'random', got '{self.mode}'")
        for key in ("population", "generations", "topk", "max_candidates"):
            if getattr(self, key) < 1:
                raise ValueError(f"DETNAS.SEARCH.{key.upper()} must be >= 1, got {getattr(self, key)}")
        for key in ("num_mutation", "num_crossover"):
            if getattr(self, key) < 0:
                raise ValueError(f"DETNAS.SEARCH.{key.upper()} must be >= 0, got {getattr(self, key)}")
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise ValueError(f"DETNAS.SEARCH.MUTATION_PROB must be in [0, 1], got {self.mutation_prob}")
        if self.predictor not in PREDICTORS:
            raise ValueError(f"DETNAS.SEARCH.PREDICTOR must be one of {PREDICTORS}, got '{self.predictor}'")
        if not 0.0 < self.predictor_keep <= 1.0:
            raise ValueError(f"DETNAS.SEARCH.PREDICTOR_KEEP must be in (0, 1], got {self.predictor_keep}")
        slices = list(self.racing_slices)
        if any(not 0.0 < f < 1.0 for f in slices) or slices != sorted(set(slices)):
            raise ValueError(
                f"DETNAS.SEARCH.RACING.SLICES must be increasing fractions in (0, 1) (the whole set is the last "
                f"rung), e.g. (0.1, 0.3); got {self.racing_slices}"
            )
        if self.racing_margin < 0:
            raise ValueError(f"DETNAS.SEARCH.RACING.MARGIN must be >= 0, got {self.racing_margin}")
        if self.racing_margin_mode not in MARGIN_MODES:
            raise ValueError(
                f"DETNAS.SEARCH.RACING.MARGIN_MODE must be one of {MARGIN_MODES}, got '{self.racing_margin_mode}'"
            )

    @property
    def budget(self) -> int:
        return min(self.max_candidates, self.population * self.generations)


@dataclass(frozen=True)
class ScoringSettings:
    """How candidates are scored (DETNAS.SEARCH, DETNAS.BN_RECALIB, the task), read once."""

    weights: str
    meta_architecture: str
    fitness: str  # the task's headline metric
    recalib: RecalibrationSettings
    eval_dataset: str
    eval_images: int
    eval_batch_size: int
    eval_min_size: int  # test-time shorter side while scoring; 0: INPUT.MIN_SIZE_TEST
    cache_mb: float
    dist_mode: str
    seed: int
    ensemble_weights: Tuple[str, ...] = ()  # several supernets: a candidate's score is the mean of theirs

    @property
    def supernets(self) -> Tuple[str, ...]:
        """The checkpoints every candidate is scored on: ENSEMBLE_WEIGHTS, else MODEL.WEIGHTS."""
        return self.ensemble_weights or (self.weights,)

    @classmethod
    def from_cfg(cls, cfg) -> "ScoringSettings":
        s = cfg.DETNAS.SEARCH
        if s.DIST_MODE not in DIST_MODES:
            raise ValueError(f"DETNAS.SEARCH.DIST_MODE must be one of {DIST_MODES}, got '{s.DIST_MODE}'")
        recalib = RecalibrationSettings.from_cfg(cfg)
        recalib.require_dataset()
        eval_dataset = s.EVAL_DATASET or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
        if not eval_dataset:
            raise ValueError(
                "Set DETNAS.SEARCH.EVAL_DATASET (a held-out split) or DATASETS.TEST: candidates are scored on it"
            )
        task = get_task(cfg)
        if s.EVAL_MIN_SIZE < 0 or (s.EVAL_MIN_SIZE and task.name != "detection"):
            raise ValueError(
                f"DETNAS.SEARCH.EVAL_MIN_SIZE={s.EVAL_MIN_SIZE}: a detector's test-time shorter side (> 0) or 0 "
                "(the model's own); a classifier's test size is INPUT.CLS.TEST_RESIZE / TEST_CROP"
            )
        return cls(
            cfg.MODEL.WEIGHTS, cfg.MODEL.META_ARCHITECTURE, task.fitness, recalib, eval_dataset,
            int(s.EVAL_IMAGES), int(s.EVAL_BATCH_SIZE), int(s.EVAL_MIN_SIZE), float(s.CACHE_MB), s.DIST_MODE,
            int(s.SEED), tuple(s.ENSEMBLE_WEIGHTS),
        )


@dataclass(frozen=True)
class FinalistSettings:
    """DETNAS.SEARCH.FINALISTS, read once (finalists.py)."""

    topk: int = 0  # the best candidates scored again; 0: no finalists
    eval_images: int = 0  # on the first N images of the evaluation split; 0: all
    weights: Tuple[str, ...] = ()  # on each of these supernets (the search's own when empty)
    bootstrap: int = 1000  # resamples of the images (and of the supernets) for the intervals
    confidence: float = 0.95  # of the intervals
    seed: int = 0

    @classmethod
    def from_cfg(cls, cfg, scoring: ScoringSettings) -> "FinalistSettings":
        f = cfg.DETNAS.SEARCH.FINALISTS
        settings = cls(int(f.TOPK), int(f.EVAL_IMAGES), tuple(f.WEIGHTS) or scoring.supernets, int(f.BOOTSTRAP),
                       float(f.CONFIDENCE), int(cfg.DETNAS.SEARCH.SEED))
        settings.validate()
        return settings

    def validate(self):
        for key in ("topk", "eval_images"):
            if getattr(self, key) < 0:
                raise ValueError(f"DETNAS.SEARCH.FINALISTS.{key.upper()} must be >= 0, got {getattr(self, key)}")
        if self.bootstrap < 1:
            raise ValueError(f"DETNAS.SEARCH.FINALISTS.BOOTSTRAP must be >= 1, got {self.bootstrap}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"DETNAS.SEARCH.FINALISTS.CONFIDENCE must be in (0, 1), got {self.confidence}")


def search_fingerprint(settings: SearchSettings, space: SearchSpace, constraints,
                       scoring: Optional[ScoringSettings] = None, finalists: Optional[FinalistSettings] = None
                       ) -> Dict:
    """What fixes a search's candidate sequence and scores (and its finalists' records): a state file
    resumes only with the same. MAX_CANDIDATES and GENERATIONS only say when to stop, so a resumed search
    may extend them; FINALISTS.CONFIDENCE only how the records are summed up."""
    fingerprint = {k: v for k, v in asdict(settings).items() if k not in ("max_candidates", "generations")}
    if not settings.predictor:  # searches without a predictor keep the fingerprint they always had
        fingerprint = {k: v for k, v in fingerprint.items() if not k.startswith("predictor")}
    if not settings.racing_slices:  # the same for searches without racing
        fingerprint = {k: v for k, v in fingerprint.items() if not k.startswith("racing")}
    if settings.racing_margin_mode == "absolute":  # the margin racing searches had before the modes
        fingerprint.pop("racing_margin_mode", None)
    if finalists is not None and finalists.topk:
        fingerprint["finalists"] = {k: v for k, v in asdict(finalists).items() if k != "confidence"}
    fingerprint["space"] = [space.name, space.width_mult]
    fingerprint["constraints"] = [constraints.flops_min, constraints.flops_max, constraints.params_max]
    if constraints.latency is not None:
        fingerprint["latency"] = [constraints.latency_max_ms, constraints.latency.to_dict()]
    if scoring is not None:
        supernets = scoring.supernets
        fingerprint.update({
            "weights": supernets[0] if len(supernets) == 1 else list(supernets),
            "meta_architecture": scoring.meta_architecture,
            "fitness": scoring.fitness,
            "input_size": constraints.input_size,
            "recalib_dataset": scoring.recalib.dataset,
            "recalib_images": scoring.recalib.images,
            "recalib_batch_size": scoring.recalib.batch_size,
            "eval_dataset": scoring.eval_dataset,
            "eval_images": scoring.eval_images,
            "eval_batch_size": scoring.eval_batch_size,
        })
        if scoring.eval_min_size:  # searches at the model's own size keep their fingerprint
            fingerprint["eval_min_size"] = scoring.eval_min_size
    return json.loads(json.dumps(fingerprint))  # as it reads back from the file
