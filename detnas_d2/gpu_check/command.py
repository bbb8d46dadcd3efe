"""The command line of tools/gpu_check.py: run the parts, print a progress line per part, write the reports.

Detectron2's and detnas_d2's logs, Python warnings and anything the parts print go to
<output-dir>/gpu_check.log, so the terminal shows the progress alone. Exit status: 0 when every part
passed, 1 when one failed (its error is in the reports), 2 for a bad option or no CUDA.
"""

import argparse
import contextlib
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from .check import PARTS, Part, run_parts, summary
from .report import environment, write_reports
from .results import CheckContext

__all__ = ["get_parser", "main", "LOG_FILE"]

LOG_FILE = "gpu_check.log"
_LOGGERS = ("detectron2", "detnas_d2", "fvcore", "py.warnings")


def get_parser(parts: Sequence[Part] = PARTS):
    p = argparse.ArgumentParser(
        prog="tools/gpu_check.py",
        description="Acceptance check of one CUDA GPU (at most 8 minutes): toy training, full-scale step "
        "costs and projected GPU-hours, data pipeline, search scoring, SyncBN, latency table, export. "
        "Writes gpu_check.json and gpu_check.md (docs/gpu_check.md).",
    )
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (with --quick)")
    p.add_argument(
        "--quick", action="store_true", help="the same code at tiny sizes, in seconds (tests, CPU)"
    )
    p.add_argument("--output-dir", default="output/gpu_check", help="reports, log and work files")
    p.add_argument(
        "--parts",
        nargs="+",
        metavar="PART",
        choices=[part.name for part in parts],
        help=f"run only these parts, in the usual order: {', '.join(part.name for part in parts)}",
    )
    return p


@contextlib.contextmanager
def _logs_to(path: Path):
    """Inside: the loggers of _LOGGERS, Python warnings and stdout write to `path` alone."""
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s"))
    saved = []
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.level, logger.propagate))
        logger.handlers, logger.propagate = [handler], False
        logger.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        with contextlib.redirect_stdout(handler.stream):
            yield
    finally:
        logging.captureWarnings(False)
        for logger, handlers, level, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)
        handler.close()


def main(argv: Optional[Sequence[str]] = None, parts: Sequence[Part] = PARTS) -> int:
    args = get_parser(parts).parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        print(f"gpu_check: error: --device {args.device}: {e}", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_check: error: --device {args.device}, but torch {torch.__version__} (CUDA "
            f"{torch.version.cuda}) sees no CUDA GPU; on a CPU run `--device cpu --quick`",
            file=sys.stderr,
        )
        return 2
    if device.type == "cpu" and not args.quick:
        print(
            "gpu_check: error: --device cpu runs the check at tiny sizes only: add --quick (the full "
            "check measures a GPU at the real sizes)",
            file=sys.stderr,
        )
        return 2
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    terminal = sys.stdout

    def log(message: str):
        print(message, file=terminal, flush=True)

    command = ["tools/gpu_check.py"] + list(sys.argv[1:] if argv is None else argv)
    env = environment(device, args.quick, command)
    log(
        f"GPU check on {env.get('gpu', 'CPU')} ({device}, torch {env['torch']}, CUDA {env['torch_cuda']})"
        + (", quick mode" if args.quick else "")
        + f"; logs in {output_dir / LOG_FILE}"
    )
    ctx = CheckContext(device, args.quick, output_dir / "work", log)
    with _logs_to(output_dir / LOG_FILE):
        reports = run_parts(ctx, parts, args.parts or ())
    paths = write_reports(str(output_dir), env, reports)
    counts = summary(reports)
    log(
        f"{counts['ok']} of {len(reports)} parts passed"
        + (f", {counts['failed']} FAILED" if counts["failed"] else "")
        + f". Reports: {paths['json']}, {paths['markdown']}"
    )
    return 0 if counts["failed"] == 0 else 1
