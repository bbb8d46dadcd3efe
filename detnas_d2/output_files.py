"""Names of the files the training steps write to OUTPUT_DIR, for the tools that read them."""

__all__ = ["EVAL_RESULTS_FILE"]

EVAL_RESULTS_FILE = "eval_results.json"  # the latest evaluation's results (DetNASTrainer.test)
