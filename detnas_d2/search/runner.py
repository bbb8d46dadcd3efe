"""`run_search(cfg, resume)`: step 3 of the pipeline, in every process of a (possibly distributed) run.

Rank 0 owns the search (candidate generation, selection, state and outputs) and hands the candidates
to score to the other processes; DETNAS.SEARCH.DIST_MODE says how they share the work:
- split_images: all processes score each candidate together, each on its share of the images
  (BN statistics all-reduced, COCO results gathered by COCOEvaluator);
- split_candidates: each process scores its own candidate on all images; the results are gathered.
Both give the same scores as one process (see scoring.py), so a search may be resumed with another
number of processes or mode.
"""
import logging
import os
from typing import Dict, List, Optional, Sequence

from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from detectron2.utils.file_io import PathManager

from detnas_d2.checkpoint import DetNASCheckpointer
from detnas_d2.search_space import space_from_cfg
from detnas_d2.tasks import get_task

from .constraints import ArchConstraints
from .evolution import EvolutionSearch
from .outputs import SearchOutputs
from .scoring import CandidateScorer
from .settings import ScoringSettings, SearchSettings

__all__ = ["run_search", "DistributedScoring", "STATE_FILE", "build_scorer"]

logger = logging.getLogger(__name__)
STATE_FILE = "search_state.json"


class DistributedScoring:
    """Spreads scoring over the processes. Rank 0 calls `score(archs)` (it returns the results);
    the other processes call `serve()`, which returns once rank 0 calls `stop()`."""

    def __init__(self, scorer: CandidateScorer, mode: str):
        self.scorer = scorer
        self.split_candidates = mode == "split_candidates" and comm.get_world_size() > 1
        # Candidates scored between two state saves.
        self.chunk_size = comm.get_world_size() if self.split_candidates else 1

    def _score_share(self, archs: Sequence, fraction: float) -> Optional[List[Dict]]:
        if not self.split_candidates:
            return [self.scorer.score(a, fraction) for a in archs]
        rank = comm.get_rank()
        mine = self.scorer.score(archs[rank], fraction) if rank < len(archs) else None
        gathered = comm.gather(mine, dst=0)
        return gathered[: len(archs)] if comm.is_main_process() else None

    def score(self, archs: Sequence, fraction: float = 1.0) -> List[Dict]:
        """Scores on the first `fraction` of the evaluation images (racing; 1.0: all)."""
        comm.all_gather((list(archs), fraction))  # hand the candidates to the other processes
        return self._score_share(archs, fraction)

    def serve(self):
        while True:
            work = comm.all_gather(None)[0]
            if work is None:
                return
            self._score_share(*work)

    def stop(self):
        if comm.get_world_size() > 1:
            comm.all_gather(None)


def build_scorer(cfg, scoring: Optional[ScoringSettings] = None, search: Optional[SearchSettings] = None
                 ) -> CandidateScorer:
    """The supernet model of `cfg` loaded from MODEL.WEIGHTS, and its CandidateScorer (with the racing
    slices of `search`, holding a population's partial scores)."""
    scoring = scoring or ScoringSettings.from_cfg(cfg)
    _check_weights(scoring.weights)
    model = build_model(cfg)
    DetNASCheckpointer(model).load(scoring.weights)
    slices, keep = (search.racing_slices, search.population) if search is not None else ((), 0)
    return CandidateScorer(
        cfg, get_task(cfg), scoring, model, distributed=scoring.dist_mode == "split_images", slices=slices, keep=keep,
    )


def _check_weights(weights: str):
    if not weights:
        raise ValueError("MODEL.WEIGHTS is empty: give the supernet checkpoint to search (pipeline step 2)")
    if not PathManager.exists(weights):
        raise FileNotFoundError(f"MODEL.WEIGHTS={weights}: no such supernet checkpoint")


def run_search(cfg, resume: bool = False) -> Optional[Dict]:
    """Run (or with `resume`, continue) the search of `cfg` in OUTPUT_DIR. Returns the best candidate's
    record on rank 0, None elsewhere. Settings and constraints are checked before anything is loaded."""
    space = space_from_cfg(cfg)
    settings = SearchSettings.from_cfg(cfg)
    constraints = ArchConstraints.from_cfg(cfg, space)
    constraints.check_feasible(settings.seed)
    scoring = ScoringSettings.from_cfg(cfg)
    _check_weights(scoring.weights)
    search = None
    if comm.is_main_process():
        search = EvolutionSearch(
            settings, space, constraints, os.path.join(cfg.OUTPUT_DIR, STATE_FILE), scoring=scoring, resume=resume
        )
        logger.info(
            f"{settings.mode} search in space '{space.name}' (width {space.width_mult}, {space.num_layers} layers), "
            f"{constraints.describe()} at input {constraints.input_size}; budget {settings.budget} candidates; "
            f"fitness {scoring.fitness}; {comm.get_world_size()} process(es), {scoring.dist_mode}."
            + (f" Racing on slices {settings.racing_slices} of the evaluation images, margin >= "
               f"{settings.racing_margin}." if settings.racing_slices else "")
        )
    pool = DistributedScoring(build_scorer(cfg, scoring, settings), scoring.dist_mode)
    if not comm.is_main_process():
        pool.serve()
        return None
    outputs = SearchOutputs(cfg.OUTPUT_DIR, space, scoring.fitness, settings.budget, search.history)
    with EventStorage(len(search.history)):
        search.run(pool.score, pool.chunk_size, callbacks=[outputs])
        pool.stop()
        if not search.history:
            raise RuntimeError(f"No arch meets {constraints.describe()}: nothing was scored")
        return outputs.finish(search, supernet=scoring.weights, input_size=constraints.input_size)
