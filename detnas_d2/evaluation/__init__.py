from .classification import ClassificationEvaluator
from .finite_results import NonFiniteResultsError, require_finite_results

__all__ = ["ClassificationEvaluator", "NonFiniteResultsError", "require_finite_results"]
