"""The GPU acceptance check (tools/gpu_check.py, docs/gpu_check.md): on one CUDA GPU, in at most 8
minutes, everything a user wants to know before running the pipeline at full scale, as a JSON and a
Markdown report; `--device cpu --quick` runs the same code at tiny sizes (the test suite does).

results.py (what a part records) < synthetic.py (stand-in datasets) < full_scale.py (the configs measured),
steps.py (timed training steps) < one module per part: toy_steps, step_costs, data_pipeline,
search_scoring, projection, syncbn, latency_table, export_parity < report.py (the report files),
check.py (the parts, their budgets, the loop) < command.py (the command line).
"""

from .check import PARTS, Part, PartTimeout, run_parts
from .command import main
from .results import CheckContext, PartReport

__all__ = ["PARTS", "CheckContext", "Part", "PartReport", "PartTimeout", "main", "run_parts"]
