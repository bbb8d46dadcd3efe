"""`run_search(cfg, resume)`: step 3 of the pipeline, in every process of a (possibly distributed) run.

Rank 0 owns the search (candidate generation, selection, state and outputs) and hands the candidates
to score to the other processes; DETNAS.SEARCH.DIST_MODE says how they share the work:
- split_images: all processes score each candidate together, each on its share of the images
  (BN statistics all-reduced, COCO results gathered by COCOEvaluator);
- split_candidates: each process scores its own candidate on all images; the results are gathered.
Both give the same scores as one process (see scoring.py), so a search may be resumed with another
number of processes or mode. The finalists (finalists.py) are scored the same way, after the search, by a
scorer of their own (their evaluation images and supernets). With a zero-shot DETNAS.SEARCH.SCORER, a
ZeroShotScorer (detnas_d2/zero_shot) takes the supernet scorer's place: no checkpoint or data is read,
and every process computes the same scores.
"""

import dataclasses
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from detectron2.utils.file_io import PathManager

from detnas_d2.checkpoint import DetNASCheckpointer
from detnas_d2.search_space import space_from_cfg
from detnas_d2.tasks import get_task
from detnas_d2.user_errors import UserError
from detnas_d2.zero_shot import ZeroShotScorer, ZeroShotSettings

from .constraints import ArchConstraints
from .evolution import EvolutionSearch
from .finalists import Finalists
from .outputs import CANDIDATES_FILE, SearchOutputs
from .scoring import CandidateScorer
from .settings import FinalistSettings, ScoringSettings, SearchSettings, scoring_from_cfg

__all__ = ["run_search", "check_search", "DistributedScoring", "STATE_FILE", "build_scorer"]

logger = logging.getLogger(__name__)
STATE_FILE = "search_state.json"


class DistributedScoring:
    """Spreads scoring over the processes. Rank 0 calls `score(archs, ...)` (it returns the results);
    the other processes call `serve()`, which returns once rank 0 calls `stop()`."""

    def __init__(self, scorer: CandidateScorer, mode: str):
        self.scorer = scorer
        self.split_candidates = mode == "split_candidates" and comm.get_world_size() > 1
        # Candidates scored between two state saves.
        self.chunk_size = comm.get_world_size() if self.split_candidates else 1

    def _score_share(
        self,
        archs: Sequence,
        fraction: float,
        supernets: Optional[Sequence[Optional[int]]],
        bootstrap: Optional[Tuple[int, int]],
    ) -> Optional[List[Dict]]:
        work = list(zip(archs, supernets or [None] * len(archs)))
        if not self.split_candidates:
            return [self.scorer.score(a, fraction, s, bootstrap) for a, s in work]
        rank = comm.get_rank()
        mine = None
        if rank < len(work):
            arch, supernet = work[rank]
            mine = self.scorer.score(arch, fraction, supernet, bootstrap)
        gathered = comm.gather(mine, dst=0)
        return gathered[: len(work)] if comm.is_main_process() else None

    def score(
        self,
        archs: Sequence,
        fraction: float = 1.0,
        supernets: Optional[Sequence[Optional[int]]] = None,
        bootstrap: Optional[Tuple[int, int]] = None,
    ) -> List[Dict]:
        """Scores on the first `fraction` of the evaluation images (racing; 1.0: all); `supernets`, `bootstrap`:
        CandidateScorer.score's, `supernets` one per arch."""
        work = (list(archs), fraction, supernets, bootstrap)
        comm.all_gather(work)  # hand the candidates to the other processes
        return self._score_share(*work)

    def serve(self):
        while True:
            work = comm.all_gather(None)[0]
            if work is None:
                return
            self._score_share(*work)

    def stop(self):
        if comm.get_world_size() > 1:
            comm.all_gather(None)


def build_scorer(
    cfg,
    scoring: Optional[Union[ScoringSettings, ZeroShotSettings]] = None,
    search: Optional[SearchSettings] = None,
    weights: Sequence[str] = (),
) -> Union[CandidateScorer, ZeroShotScorer]:
    """The supernet model of `cfg` loaded from each of `weights` (default: the scoring's supernets,
    MODEL.WEIGHTS or ENSEMBLE_WEIGHTS) and their CandidateScorer (with the racing slices of `search`,
    holding a population's partial scores); with zero-shot settings (DETNAS.SEARCH.SCORER), the
    ZeroShotScorer, which reads no supernet."""
    scoring = scoring or scoring_from_cfg(cfg)
    if isinstance(scoring, ZeroShotSettings):
        return ZeroShotScorer(cfg, scoring)
    weights = tuple(weights) or scoring.supernets
    models = []
    for path in weights:
        _check_weights(path)
        models.append(build_model(cfg))
        DetNASCheckpointer(models[-1], allow_random_heads=cfg.MODEL.DETNAS.ALLOW_RANDOM_HEADS).load(
            path
        )
    slices, keep = (search.racing_slices, search.population) if search is not None else ((), 0)
    return CandidateScorer(
        cfg,
        get_task(cfg),
        scoring,
        models,
        distributed=scoring.dist_mode == "split_images",
        slices=slices,
        keep=keep,
    )


def _check_weights(weights: str, key: str = "MODEL.WEIGHTS"):
    if not weights:
        raise UserError(f"{key} is empty: give the supernet checkpoint to search (pipeline step 2)")
    if not PathManager.isfile(weights):
        what = "a folder, not a checkpoint file" if PathManager.isdir(weights) else "no such file"
        raise UserError(f"{key} {weights}: {what}; give the supernet checkpoint to search")


def _finalist_pool(
    cfg, scoring: ScoringSettings, finalists: FinalistSettings
) -> DistributedScoring:
    """Every process: the scorer of the finalists (their images and supernets), spread like the search's."""
    settings = dataclasses.replace(scoring, eval_images=finalists.eval_images)
    return DistributedScoring(
        build_scorer(cfg, settings, weights=finalists.weights), scoring.dist_mode
    )


def _read_settings(cfg):
    """The search's space, settings, constraints, scoring and finalists, checked (UserError): a
    ValueError while they are read is a bad option (e.g. of the constraints or the latency table)."""
    try:
        space = space_from_cfg(cfg)
        settings = SearchSettings.from_cfg(cfg)
        constraints = ArchConstraints.from_cfg(cfg, space)
        constraints.check_feasible(settings.seed)
        scoring = scoring_from_cfg(cfg)
        finalist_settings = FinalistSettings.from_cfg(cfg, scoring)
    except UserError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from e
    if isinstance(scoring, ZeroShotSettings):  # no checkpoint is read
        return space, settings, constraints, scoring, finalist_settings
    for key, paths in (
        ("MODEL.WEIGHTS", () if scoring.ensemble_weights else (scoring.weights,)),
        ("DETNAS.SEARCH.ENSEMBLE_WEIGHTS", scoring.ensemble_weights),
        ("DETNAS.SEARCH.FINALISTS.WEIGHTS", cfg.DETNAS.SEARCH.FINALISTS.WEIGHTS),
    ):
        for path in paths:
            _check_weights(path, key)
    return space, settings, constraints, scoring, finalist_settings


def _evolution(cfg, resume: bool, space, settings, constraints, scoring, finalist_settings):
    return EvolutionSearch(
        settings,
        space,
        constraints,
        os.path.join(cfg.OUTPUT_DIR, STATE_FILE),
        scoring=scoring,
        resume=resume,
        finalists=finalist_settings,
    )


def check_search(cfg, resume: bool = False):
    """What `run_search` refuses before it loads a model, checked without writing anything: the
    settings, constraints and checkpoints, and OUTPUT_DIR's search state (a new search does not start
    over one, nor over the records of one whose state file is gone; a resume needs the same settings
    and supernets). Raises UserError."""
    state = os.path.join(cfg.OUTPUT_DIR, STATE_FILE)
    records = [state + ".bak", os.path.join(cfg.OUTPUT_DIR, CANDIDATES_FILE)]
    orphans = [p for p in records if os.path.isfile(p) and os.path.getsize(p)]
    if orphans and not os.path.exists(state):
        raise UserError(
            f"{cfg.OUTPUT_DIR} holds the records of a search ({', '.join(map(os.path.basename, orphans))}) "
            f"but no {STATE_FILE}: copy {STATE_FILE}.bak to {STATE_FILE} to resume it (if there is "
            "one), or give another OUTPUT_DIR (or delete them) to search anew"
        )
    _evolution(cfg, resume, *_read_settings(cfg))


def run_search(cfg, resume: bool = False) -> Optional[Dict]:
    """Run (or with `resume`, continue) the search of `cfg` in OUTPUT_DIR, then its finalists. Returns the
    best candidate's record on rank 0 (with finalists, the best finalist's), None elsewhere. Settings and
    constraints are checked before anything is loaded (`check_search`)."""
    space, settings, constraints, scoring, finalist_settings = _read_settings(cfg)
    search = None
    if comm.is_main_process():
        search = _evolution(cfg, resume, space, settings, constraints, scoring, finalist_settings)
        supernets = scoring.supernets
        logger.info(
            f"{settings.mode} search in space '{space.name}' (width {space.width_mult}, {space.num_layers} layers), "
            f"{constraints.describe()} at input {constraints.input_size}; budget {settings.budget} candidates; "
            f"fitness {scoring.fitness}"
            + (f" (the mean over {len(supernets)} supernets)" if len(supernets) > 1 else "")
            + f"; {comm.get_world_size()} process(es), {scoring.dist_mode}."
            + (
                f" No supernet: MODEL.WEIGHTS ({cfg.MODEL.WEIGHTS}) is not read."
                if isinstance(scoring, ZeroShotSettings) and cfg.MODEL.WEIGHTS
                else ""
            )
            + (
                f" Racing on slices {settings.racing_slices} of the evaluation images, margin >= "
                f"{settings.racing_margin} ({settings.racing_margin_mode})."
                if settings.racing_slices
                else ""
            )
        )
    pool = DistributedScoring(build_scorer(cfg, scoring, settings), scoring.dist_mode)
    if not comm.is_main_process():
        pool.serve()
        del pool  # its models and cached inputs, before the finalists' are loaded
        if comm.all_gather(None)[0]:
            finalist_pool = _finalist_pool(cfg, scoring, finalist_settings)
            finalist_pool.serve()
        return None
    outputs = SearchOutputs(cfg.OUTPUT_DIR, space, scoring.fitness, settings.budget, search.history)
    with EventStorage(len(search.history)):
        search.run(pool.score, pool.chunk_size, callbacks=[outputs])
        pool.stop()
        del pool
        finalists = (
            Finalists(search, finalist_settings)
            if finalist_settings.topk and search.history
            else None
        )
        if comm.all_gather(finalists is not None and bool(finalists.pending()))[
            0
        ]:  # the others build a scorer
            finalist_pool = _finalist_pool(cfg, scoring, finalist_settings)
            finalists.run(finalist_pool.score, finalist_pool.chunk_size, callbacks=[outputs])
            finalist_pool.stop()
        elif (
            finalists is not None
        ):  # all scored before a resume: the files and the table from the state
            finalists.run(None, callbacks=[outputs])
        if not search.history:
            raise RuntimeError(f"No arch meets {constraints.describe()}: nothing was scored")
        return outputs.finish(
            search, finalists=finalists, input_size=constraints.input_size, **_provenance(scoring)
        )


def _provenance(scoring) -> Dict:
    """What best_arch.yaml says scored the arch: the supernet(s), or the zero-shot scorer."""
    if isinstance(scoring, ZeroShotSettings):
        return scoring.fingerprint()
    supernets = scoring.supernets
    return {"supernet": supernets[0] if len(supernets) == 1 else list(supernets)}
