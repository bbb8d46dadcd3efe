from .classification import ClassificationEvaluator
from .finite_results import NonFiniteResultsError, require_finite_results
from .pascal_voc import VOC_IOU_THRESHOLDS, PascalVOCEvaluator, build_detection_evaluator

__all__ = [
    "ClassificationEvaluator",
    "NonFiniteResultsError",
    "PascalVOCEvaluator",
    "VOC_IOU_THRESHOLDS",
    "build_detection_evaluator",
    "require_finite_results",
]
