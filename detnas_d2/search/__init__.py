"""Step 3: evolutionary search over a trained supernet (see search_net.py).

predictor.py, racing.py (cheaper protocols) < settings.py (settings read once, the resume fingerprint)
< constraints.py (exact FLOPs/params/latency bands, uniform sampling inside them), candidates.py,
state.py < evolution.py (the loop) < finalists.py (the best candidates scored again on every supernet,
with bootstrap intervals) ; per_image.py (a candidate's score on any resample of the images) < scoring.py
(one candidate, on a slice of the images or all, on one supernet or the mean of several) ; outputs.py
(files, logs, TensorBoard) < runner.py (`run_search`: processes, scorers, search, finalists and outputs
together).
"""

from .candidates import generate_candidates
from .constraints import ArchConstraints
from .evolution import EvolutionSearch
from .finalists import Finalists, choose_finalist, summarize_finalists
from .outputs import SearchOutputs, pareto_front
from .runner import DistributedScoring, build_scorer, check_search, run_search
from .scoring import CandidateScorer
from .settings import (
    DIST_MODES,
    FinalistSettings,
    ScoringSettings,
    SearchSettings,
    search_fingerprint,
)
from .state import SearchState, SearchStateError

__all__ = [
    "ArchConstraints",
    "CandidateScorer",
    "DIST_MODES",
    "DistributedScoring",
    "EvolutionSearch",
    "FinalistSettings",
    "Finalists",
    "ScoringSettings",
    "SearchOutputs",
    "SearchSettings",
    "SearchState",
    "SearchStateError",
    "build_scorer",
    "check_search",
    "choose_finalist",
    "generate_candidates",
    "pareto_front",
    "run_search",
    "search_fingerprint",
    "summarize_finalists",
]
