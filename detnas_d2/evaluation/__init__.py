from .classification import ClassificationEvaluator

__all__ = ["ClassificationEvaluator"]
