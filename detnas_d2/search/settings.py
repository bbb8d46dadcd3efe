"""A search's settings, read once from the config, and the fingerprint that guards its resume."""

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple, Union

from detectron2.utils.file_io import PathManager

from detnas_d2.data.datasets import require_registered
from detnas_d2.recalibration import RecalibrationSettings
from detnas_d2.search_space import SearchSpace
from detnas_d2.tasks import get_task
from detnas_d2.user_errors import UserError
from detnas_d2.zero_shot import METHODS, SCORER_PREFIX, ZeroShotSettings

from .predictor import PREDICTORS
from .racing import MARGIN_MODES

__all__ = [
    "DIST_MODES",
    "SCORERS",
    "FinalistSettings",
    "ScoringSettings",
    "SearchSettings",
    "adopt_supernet_hashes",
    "changed_supernets",
    "file_sha256",
    "scoring_from_cfg",
    "search_fingerprint",
]

DIST_MODES = ("split_images", "split_candidates")
TIE_BREAKS = ("", "flops", "params", "latency_ms")  # FINALISTS.TIE_BREAK: "" or a candidate's cost
# DETNAS.SEARCH.SCORER: the supernet, or a zero-shot score (detnas_d2/zero_shot)
SCORERS = ("supernet",) + tuple(SCORER_PREFIX + method for method in METHODS)


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
    predictor: str = (
        ""  # "ridge": score only the children a predictor fitted on the history ranks best
    )
    predictor_keep: float = 0.5  # the fraction of each generation (after the first) that is scored
    predictor_min_scored: int = 20  # candidates scored before the predictor screens
    racing_slices: Tuple[
        float, ...
    ] = ()  # fractions of the evaluation images of the first rungs (racing.py)
    racing_margin: float = 1.0  # the least safety margin, in score units
    racing_margin_mode: str = (
        "offset"  # slice errors measured from the candidates' common offset, or from 0
    )

    @classmethod
    def from_cfg(cls, cfg) -> "SearchSettings":
        s = cfg.DETNAS.SEARCH
        settings = cls(
            s.MODE,
            s.POPULATION,
            s.GENERATIONS,
            s.TOPK,
            s.NUM_MUTATION,
            s.MUTATION_PROB,
            s.NUM_CROSSOVER,
            s.MAX_CANDIDATES,
            s.SEED,
            s.PREDICTOR,
            s.PREDICTOR_KEEP,
            s.PREDICTOR_MIN_SCORED,
            tuple(float(f) for f in s.RACING.SLICES),
            float(s.RACING.MARGIN),
            s.RACING.MARGIN_MODE,
        )
        settings.validate()
        return settings

    def validate(self):
        if self.mode not in ("evolution", "random"):
            raise UserError(
                f"DETNAS.SEARCH.MODE must be 'evolution' or 'random', got '{self.mode}'"
            )
        for key in ("population", "generations", "topk", "max_candidates"):
            if getattr(self, key) < 1:
                raise UserError(
                    f"DETNAS.SEARCH.{key.upper()} must be >= 1, got {getattr(self, key)}"
                )
        for key in ("num_mutation", "num_crossover", "predictor_min_scored"):
            if getattr(self, key) < 0:
                raise UserError(
                    f"DETNAS.SEARCH.{key.upper()} must be >= 0, got {getattr(self, key)}"
                )
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise UserError(
                f"DETNAS.SEARCH.MUTATION_PROB must be in [0, 1], got {self.mutation_prob}"
            )
        if self.predictor not in PREDICTORS:
            raise UserError(
                f"DETNAS.SEARCH.PREDICTOR must be one of {PREDICTORS}, got '{self.predictor}'"
            )
        if not 0.0 < self.predictor_keep <= 1.0:
            raise UserError(
                f"DETNAS.SEARCH.PREDICTOR_KEEP must be in (0, 1], got {self.predictor_keep}"
            )
        slices = list(self.racing_slices)
        if any(not 0.0 < f < 1.0 for f in slices) or slices != sorted(set(slices)):
            raise UserError(
                f"DETNAS.SEARCH.RACING.SLICES must be increasing fractions in (0, 1) (the whole set is the last "
                f"rung), e.g. (0.1, 0.3); got {self.racing_slices}"
            )
        if self.racing_margin < 0:
            raise UserError(f"DETNAS.SEARCH.RACING.MARGIN must be >= 0, got {self.racing_margin}")
        if self.racing_margin_mode not in MARGIN_MODES:
            raise UserError(
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
    ensemble_weights: Tuple[
        str, ...
    ] = ()  # several supernets: a candidate's score is the mean of theirs

    @property
    def supernets(self) -> Tuple[str, ...]:
        """The checkpoints every candidate is scored on: ENSEMBLE_WEIGHTS, else MODEL.WEIGHTS."""
        return self.ensemble_weights or (self.weights,)

    @classmethod
    def from_cfg(cls, cfg) -> "ScoringSettings":
        s = cfg.DETNAS.SEARCH
        if s.DIST_MODE not in DIST_MODES:
            raise UserError(
                f"DETNAS.SEARCH.DIST_MODE must be one of {DIST_MODES}, got '{s.DIST_MODE}'"
            )
        recalib = RecalibrationSettings.from_cfg(cfg)
        recalib.require_dataset()
        eval_dataset = s.EVAL_DATASET or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
        if not eval_dataset:
            raise UserError(
                "Set DETNAS.SEARCH.EVAL_DATASET (a held-out split) or DATASETS.TEST: candidates are scored on it"
            )
        task = get_task(cfg)
        if s.EVAL_MIN_SIZE < 0 or (s.EVAL_MIN_SIZE and task.name != "detection"):
            raise UserError(
                f"DETNAS.SEARCH.EVAL_MIN_SIZE={s.EVAL_MIN_SIZE}: a detector's test-time shorter side (> 0) or 0 "
                "(the model's own); a classifier's test size is INPUT.CLS.TEST_RESIZE / TEST_CROP"
            )
        settings = cls(
            cfg.MODEL.WEIGHTS,
            cfg.MODEL.META_ARCHITECTURE,
            task.fitness,
            recalib,
            eval_dataset,
            int(s.EVAL_IMAGES),
            int(s.EVAL_BATCH_SIZE),
            int(s.EVAL_MIN_SIZE),
            float(s.CACHE_MB),
            s.DIST_MODE,
            int(s.SEED),
            tuple(s.ENSEMBLE_WEIGHTS),
        )
        settings.validate()
        return settings

    def validate(self):
        counts = (
            (
                "DETNAS.SEARCH.EVAL_IMAGES",
                self.eval_images,
                0,
                "the first N images of the split; 0: all",
            ),
            ("DETNAS.SEARCH.EVAL_BATCH_SIZE", self.eval_batch_size, 1, "images per forward"),
            (
                "DETNAS.BN_RECALIB.IMAGES",
                self.recalib.images,
                1,
                "training images for each path's BN",
            ),
            ("DETNAS.BN_RECALIB.BATCH_SIZE", self.recalib.batch_size, 1, "images per forward"),
            ("DETNAS.SEARCH.CACHE_MB", self.cache_mb, 0, "megabytes of inputs kept in memory"),
        )
        for key, value, least, meaning in counts:
            if value < least:
                raise UserError(f"{key} must be >= {least} ({meaning}), got {value}")
        require_registered([self.eval_dataset], "DETNAS.SEARCH.EVAL_DATASET (or DATASETS.TEST)")
        require_registered([self.recalib.dataset], "DETNAS.BN_RECALIB.DATASET (or DATASETS.TRAIN)")


def scoring_from_cfg(cfg) -> Union[ScoringSettings, ZeroShotSettings]:
    """How candidates are scored, by DETNAS.SEARCH.SCORER: on the supernet (ScoringSettings) or zero-shot
    (ZeroShotSettings), which refuses the options that only apply to supernets."""
    s = cfg.DETNAS.SEARCH
    if s.SCORER not in SCORERS:
        raise UserError(f"DETNAS.SEARCH.SCORER must be one of {list(SCORERS)}, got '{s.SCORER}'")
    if s.SCORER == "supernet":
        return ScoringSettings.from_cfg(cfg)
    supernet_only = [
        key
        for key, value in (
            ("DETNAS.SEARCH.FINALISTS.TOPK", s.FINALISTS.TOPK),
            ("DETNAS.SEARCH.RACING.SLICES", tuple(s.RACING.SLICES)),
            ("DETNAS.SEARCH.ENSEMBLE_WEIGHTS", tuple(s.ENSEMBLE_WEIGHTS)),
        )
        if value
    ]
    if supernet_only:
        raise UserError(
            f"DETNAS.SEARCH.SCORER {s.SCORER} scores without a supernet, but {', '.join(supernet_only)} "
            "only apply to supernet scores: unset them (or search with SCORER supernet)"
        )
    if s.DIST_MODE not in DIST_MODES:
        raise UserError(f"DETNAS.SEARCH.DIST_MODE must be one of {DIST_MODES}, got '{s.DIST_MODE}'")
    return ZeroShotSettings.from_cfg(cfg)


@dataclass(frozen=True)
class FinalistSettings:
    """DETNAS.SEARCH.FINALISTS, read once (finalists.py)."""

    topk: int = 0  # the best candidates scored again; 0: no finalists
    eval_images: int = 0  # on the first N images of the evaluation split; 0: all
    weights: Tuple[str, ...] = ()  # on each of these supernets (the search's own when empty)
    bootstrap: int = 1000  # resamples of the images (and of the supernets) for the intervals
    confidence: float = 0.95  # of the intervals
    seed: int = 0
    tie_break: str = (
        ""  # a cost: the cheapest of the best and its indistinguishable finalists; "": the best
    )

    @classmethod
    def from_cfg(cls, cfg, scoring: ScoringSettings) -> "FinalistSettings":
        f = cfg.DETNAS.SEARCH.FINALISTS
        settings = cls(
            int(f.TOPK),
            int(f.EVAL_IMAGES),
            tuple(f.WEIGHTS) or scoring.supernets,
            int(f.BOOTSTRAP),
            float(f.CONFIDENCE),
            int(cfg.DETNAS.SEARCH.SEED),
            str(f.TIE_BREAK),
        )
        settings.validate()
        if settings.tie_break == "latency_ms" and not cfg.DETNAS.SEARCH.LATENCY_TABLE:
            raise UserError(
                "DETNAS.SEARCH.FINALISTS.TIE_BREAK latency_ms needs DETNAS.SEARCH.LATENCY_TABLE "
                "(python -m detnas_d2.latency), or choose by flops or params"
            )
        return settings

    def validate(self):
        for key in ("topk", "eval_images"):
            if getattr(self, key) < 0:
                raise UserError(
                    f"DETNAS.SEARCH.FINALISTS.{key.upper()} must be >= 0, got {getattr(self, key)}"
                )
        if self.bootstrap < 1:
            raise UserError(f"DETNAS.SEARCH.FINALISTS.BOOTSTRAP must be >= 1, got {self.bootstrap}")
        if not 0.0 < self.confidence < 1.0:
            raise UserError(
                f"DETNAS.SEARCH.FINALISTS.CONFIDENCE must be in (0, 1), got {self.confidence}"
            )
        if self.tie_break not in TIE_BREAKS:
            raise UserError(
                f"DETNAS.SEARCH.FINALISTS.TIE_BREAK must be one of {TIE_BREAKS}, got '{self.tie_break}'"
            )


def search_fingerprint(
    settings: SearchSettings,
    space: SearchSpace,
    constraints,
    scoring: Optional[Union[ScoringSettings, ZeroShotSettings]] = None,
    finalists: Optional[FinalistSettings] = None,
) -> Dict:
    """What fixes a search's candidate sequence and scores (and its finalists' records): a state file
    resumes only with the same. MAX_CANDIDATES and GENERATIONS only say when to stop, so a resumed search
    may extend them; FINALISTS.CONFIDENCE and TIE_BREAK only how the records are summed up."""
    fingerprint = {
        k: v for k, v in asdict(settings).items() if k not in ("max_candidates", "generations")
    }
    if not settings.predictor:  # searches without a predictor keep the fingerprint they always had
        fingerprint = {k: v for k, v in fingerprint.items() if not k.startswith("predictor")}
    if not settings.racing_slices:  # the same for searches without racing
        fingerprint = {k: v for k, v in fingerprint.items() if not k.startswith("racing")}
    if settings.racing_margin_mode == "absolute":  # the margin racing searches had before the modes
        fingerprint.pop("racing_margin_mode", None)
    if finalists is not None and finalists.topk:
        fingerprint["finalists"] = {
            k: v for k, v in asdict(finalists).items() if k not in ("confidence", "tie_break")
        }
        fingerprint["finalists"][_SHA256] = [file_sha256(path) for path in finalists.weights]
    fingerprint["space"] = [space.ref, space.width_mult] + ([space.digest] if space.source else [])
    fingerprint["constraints"] = [
        constraints.flops_min,
        constraints.flops_max,
        constraints.params_max,
    ]
    if constraints.latency is not None:
        fingerprint["latency"] = [constraints.latency_max_ms, constraints.latency.to_dict()]
    if isinstance(scoring, ZeroShotSettings):  # the scorer and its settings; no supernet
        fingerprint.update(scoring.fingerprint())
    elif scoring is not None:
        supernets = scoring.supernets
        fingerprint.update(
            {
                "weights": supernets[0] if len(supernets) == 1 else list(supernets),
                _SHA256: _one_or_list([file_sha256(path) for path in supernets]),
                "meta_architecture": scoring.meta_architecture,
                "fitness": scoring.fitness,
                "input_size": constraints.input_size,
                "recalib_dataset": scoring.recalib.dataset,
                "recalib_images": scoring.recalib.images,
                "recalib_batch_size": scoring.recalib.batch_size,
                "eval_dataset": scoring.eval_dataset,
                "eval_images": scoring.eval_images,
                "eval_batch_size": scoring.eval_batch_size,
            }
        )
        if scoring.eval_min_size:  # searches at the model's own size keep their fingerprint
            fingerprint["eval_min_size"] = scoring.eval_min_size
    return json.loads(json.dumps(fingerprint))  # as it reads back from the file


# ---- the supernets' identity: their contents ---------------------------------------------------------

_SHA256 = "weights_sha256"  # beside "weights" (the paths): the checkpoints' contents
_file_hashes: Dict[
    Tuple[str, int, int], str
] = {}  # (real path, size, mtime) -> sha256, this process


def file_sha256(path: str) -> str:
    """The sha256 (hex) of the file at `path` (local or any PathManager URI), read in 1 MiB blocks;
    computed once per process for a file of one path, size and modification time."""
    local = PathManager.get_local_path(path)
    stat = os.stat(local)
    key = (os.path.realpath(local), stat.st_size, stat.st_mtime_ns)
    if key not in _file_hashes:
        digest = hashlib.sha256()
        with open(local, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _file_hashes[key] = digest.hexdigest()
    return _file_hashes[key]


def _one_or_list(values: List):
    return values[0] if len(values) == 1 else values


def _as_list(value) -> List:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _supernet_files(fingerprint: Dict) -> List[Tuple[str, List, Optional[List]]]:
    """(option, paths, sha256s or None) of the checkpoints a fingerprint names."""
    files = []
    if "weights" in fingerprint:
        weights = fingerprint["weights"]
        option = "MODEL.WEIGHTS" if isinstance(weights, str) else "DETNAS.SEARCH.ENSEMBLE_WEIGHTS"
        hashes = fingerprint.get(_SHA256)
        files.append((option, _as_list(weights), None if hashes is None else _as_list(hashes)))
    finalists = fingerprint.get("finalists")
    if finalists:
        files.append(
            ("DETNAS.SEARCH.FINALISTS.WEIGHTS", list(finalists["weights"]), finalists.get(_SHA256))
        )
    return files


def changed_supernets(saved: Dict, current: Dict) -> List[str]:
    """The checkpoints of `current` whose contents differ from those at the same path in `saved` (a
    search's state), e.g. "MODEL.WEIGHTS w.pth (sha256 1a2b3c4d5e6f when the search started,
    9f8e7d6c5b4a now)". Other paths are differences of the settings (diff_fingerprints)."""
    saved_files = {option: (paths, hashes) for option, paths, hashes in _supernet_files(saved)}
    changed = []
    for option, paths, hashes in _supernet_files(current):
        saved_paths, saved_hashes = saved_files.get(option, (None, None))
        if saved_hashes is None or hashes is None:
            continue
        for path, saved_path, then, now in zip(paths, saved_paths, saved_hashes, hashes):
            if path == saved_path and then != now:
                changed.append(
                    f"{option} {path} (sha256 {then[:12]} when the search started, {now[:12]} now)"
                )
    return changed


def adopt_supernet_hashes(saved: Dict, current: Dict) -> List[str]:
    """Give a saved fingerprint that names checkpoints by path only (a search started before their
    contents were recorded) the contents of `current`'s, so that its resumes are checked from now on.
    Returns the options it completed."""
    saved_files = {option: hashes for option, _, hashes in _supernet_files(saved)}
    adopted = []
    for option, _, hashes in _supernet_files(current):
        if option in saved_files and saved_files[option] is None and hashes is not None:
            if option == "DETNAS.SEARCH.FINALISTS.WEIGHTS":
                saved["finalists"][_SHA256] = hashes
            else:
                saved[_SHA256] = current[_SHA256]
            adopted.append(option)
    return adopted
