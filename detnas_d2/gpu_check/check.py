"""The parts of the GPU check and the loop that runs them, each under its own time budget.

A part that raises, runs past its budget (SIGALRM interrupts it, in the main thread) or fails one of its
checks is reported as failed with a one-line error; the parts after it still run. Budgets (seconds) are
sized so that all parts together stay inside 8 minutes on one GPU; the quick budgets are for `--device
cpu --quick` on a loaded 2-core machine.
"""

import signal
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence

from . import (
    data_pipeline,
    export_parity,
    latency_table,
    projection,
    search_scoring,
    step_costs,
    syncbn,
    toy_steps,
)
from .results import CheckContext, PartReport, non_finite

__all__ = ["Part", "PARTS", "PartTimeout", "run_parts", "time_limit"]


@dataclass(frozen=True)
class Part:
    name: str
    title: str
    run: Callable[[CheckContext, PartReport], None]
    budget_s: float  # on one GPU
    quick_budget_s: float  # --quick


PARTS = (
    Part("toy_steps", "Toy steps 1-2 trained on the device, fp32 and AMP", toy_steps.run, 80, 120),
    Part(
        "step_costs",
        "Full-scale step costs: seconds per iteration and memory",
        step_costs.run,
        130,
        120,
    ),
    Part("data_pipeline", "Data pipeline images/s against the step's", data_pipeline.run, 40, 60),
    Part("search_scoring", "Search scoring: seconds per candidate", search_scoring.run, 60, 60),
    Part(
        "projection", "Projected GPU-hours of the pipeline beside the paper's", projection.run, 5, 5
    ),
    Part("syncbn", "SyncBN config trained in one process", syncbn.run, 25, 60),
    Part(
        "latency_table",
        "Latency table on the device and its validation error",
        latency_table.run,
        45,
        60,
    ),
    Part("export", "TorchScript and ONNX export with parity", export_parity.run, 50, 60),
)


class PartTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float):
    """Raise PartTimeout inside the block after `seconds` (main thread only; elsewhere no limit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise PartTimeout(f"ran past its budget of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_parts(
    ctx: CheckContext, parts: Sequence[Part] = PARTS, only: Sequence[str] = ()
) -> List[PartReport]:
    """Run `parts` (those named in `only`, if given) in order; every one gets a report."""
    reports: List[PartReport] = []
    chosen = [p for p in parts if not only or p.name in only]
    for i, part in enumerate(chosen, 1):
        budget = part.quick_budget_s if ctx.quick else part.budget_s
        report = PartReport(part.name, part.title, budget)
        ctx.reports[part.name] = report
        reports.append(report)
        ctx.log(f"[{i}/{len(chosen)}] {part.name}: {part.title} (budget {budget:g} s)")
        start = time.perf_counter()
        try:
            with time_limit(budget):
                part.run(ctx, report)
            failed = report.failed_checks()
            bad_numbers = non_finite(report.data)
            if failed:
                report.status, report.error = (
                    "failed",
                    f"check failed: {failed[0]['name']} ({failed[0]['detail']})",
                )
            elif bad_numbers:
                report.status, report.error = (
                    "failed",
                    f"non-finite numbers: {', '.join(bad_numbers[:3])}",
                )
            else:
                report.status = "ok"
        except Exception as e:  # a failing part must not stop the others: report it and go on
            report.status, report.error = "failed", _one_line(e)
            report.data["traceback"] = traceback.format_exc().splitlines()[-12:]
        report.seconds = time.perf_counter() - start
        verdict = "ok" if report.status == "ok" else f"FAILED: {report.error}"
        ctx.log(f"[{i}/{len(chosen)}] {part.name}: {verdict} ({report.seconds:.1f} s)")
    return reports


def summary(reports: Sequence[PartReport]) -> Dict[str, int]:
    return {status: sum(r.status == status for r in reports) for status in ("ok", "failed")}
