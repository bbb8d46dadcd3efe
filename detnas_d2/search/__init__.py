"""Step 3: evolutionary search over a trained supernet (see search_net.py).

predictor.py, racing.py (cheaper protocols) < settings.py (settings read once, the resume fingerprint)
< constraints.py, candidates.py, state.py < evolution.py (the loop) ; scoring.py (one candidate, on a slice
of the images or all) ; outputs.py (files, logs, TensorBoard) < runner.py (`run_search`: processes, scorer,
search and outputs together).
"""
from .candidates import generate_candidates
from .constraints import ArchConstraints
from .evolution import EvolutionSearch
from .outputs import SearchOutputs, pareto_front
from .runner import DistributedScoring, build_scorer, run_search
from .scoring import CandidateScorer
from .settings import DIST_MODES, ScoringSettings, SearchSettings, search_fingerprint
from .state import SearchState, SearchStateError

__all__ = [
    "ArchConstraints",
    "CandidateScorer",
    "DIST_MODES",
    "DistributedScoring",
    "EvolutionSearch",
    "ScoringSettings",
    "SearchOutputs",
    "SearchSettings",
    "SearchState",
    "SearchStateError",
    "build_scorer",
    "generate_candidates",
    "pareto_front",
    "run_search",
    "search_fingerprint",
]
