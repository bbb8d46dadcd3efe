"""Step 3: evolutionary search over a trained supernet (see search_net.py)."""
from .evolution import ArchConstraints, EvolutionSearch, SearchSettings, SearchState, SearchStateError
from .outputs import SearchOutputs, pareto_front
from .runner import DIST_MODES, DistributedScoring, build_scorer, run_search
from .scoring import CandidateScorer, InputBatches, recalibrate_bn

__all__ = [
    "ArchConstraints",
    "CandidateScorer",
    "DIST_MODES",
    "DistributedScoring",
    "EvolutionSearch",
    "InputBatches",
    "SearchOutputs",
    "SearchSettings",
    "SearchState",
    "SearchStateError",
    "build_scorer",
    "pareto_front",
    "recalibrate_bn",
    "run_search",
]
