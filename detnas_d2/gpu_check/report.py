"""The GPU check's reports: `gpu_check.json` (everything measured) and `gpu_check.md` (the same as tables),
with the machine they ran on and what one GPU cannot check."""

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import detectron2
import torch

from ..compat import has_compiled_ops
from ..file_io import atomic_write
from .results import PartReport

__all__ = [
    "REPORT_FORMAT",
    "JSON_FILE",
    "MARKDOWN_FILE",
    "NOT_CHECKED",
    "environment",
    "write_reports",
    "markdown",
]

REPORT_FORMAT = "detnas-d2-gpu-check-v1"
JSON_FILE, MARKDOWN_FILE = "gpu_check.json", "gpu_check.md"

NOT_CHECKED = (
    "NCCL across GPUs: DDP's gradient all-reduce, SyncBN's cross-GPU statistics, the search's BN-statistics "
    "all-reduce and result gathering (here NCCL only starts a one-process group).",
    "`--num-gpus 8`: launching 8 workers, DDP with find_unused_parameters for supernets across ranks, the "
    "search's split_images / split_candidates on 8 GPUs, and the 8-GPU wall time (the projections assume "
    "linear scaling).",
    "Multi-node runs: `--num-machines`, `--dist-url` across hosts, SLURM (`tools/slurm_train.sbatch`) and "
    "submitit requeues on a real cluster.",
    "The data pipeline of 8 GPUs sharing one node's cores, and reading ImageNet/COCO from disk or network "
    "(the synthetic JPEGs sit in the page cache).",
    "Accuracy: every model here is randomly initialised or trained for seconds.",
)


def environment(device: torch.device, quick: bool, argv: Sequence[str]) -> Dict:
    env = {
        "device": str(device),
        "quick": quick,
        "command": " ".join(argv),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "detectron2": detectron2.__version__,
        "detectron2_compiled_ops": has_compiled_ops(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            {
                "gpu": props.name,
                "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                "compute_capability": f"{props.major}.{props.minor}",
                "cudnn": torch.backends.cudnn.version(),
                "cudnn_benchmark": torch.backends.cudnn.benchmark,
                "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                "tf32_cudnn": torch.backends.cudnn.allow_tf32,
                "gpu_count": torch.cuda.device_count(),
            }
        )
    return env


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(t: Dict) -> List[str]:
    lines = [
        f"**{t['title']}**",
        "",
        "| " + " | ".join(map(_cell, t["headers"])) + " |",
        "|" + "---|" * len(t["headers"]),
    ]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in t["rows"]]
    return lines + [""]


def markdown(env: Dict, reports: Sequence[PartReport]) -> str:
    device = env.get("gpu") or f"CPU ({env['cpu_count']} cores)"
    ok = all(r.status == "ok" for r in reports)
    lines = [
        f"# GPU check: {device}",
        "",
        f"{env['created']}, `{env['command']}`"
        + (" (**quick mode: tiny sizes, the numbers mean nothing**)" if env["quick"] else ""),
        "",
        f"torch {env['torch']} (CUDA {env['torch_cuda']}), Detectron2 {env['detectron2']} (compiled ops: "
        f"{'yes' if env['detectron2_compiled_ops'] else 'no'}), Python {env['python']}, {env['cpu_count']} CPU "
        "cores"
        + (
            f"; {env['gpu']}, {env['gpu_memory_gib']} GiB, compute capability {env['compute_capability']}, "
            f"cuDNN {env['cudnn']}"
            if "gpu" in env
            else ""
        ),
        "",
        f"**{'All parts passed' if ok else 'Some parts FAILED'}**: "
        + ", ".join(f"{r.name} {r.status}" for r in reports),
        "",
    ]
    for r in reports:
        lines += [
            f"## {r.title} (`{r.name}`): {r.status}, {r.seconds:.1f} s of {r.budget_s:g} s",
            "",
        ]
        if r.error:
            lines += [f"Error: `{r.error}`", ""]
        for t in r.tables:
            lines += _table(t)
        if r.checks:
            lines += [
                f"- check {'passed' if c['passed'] else 'FAILED'}: {c['name']}"
                + (f" ({c['detail']})" if c["detail"] else "")
                for c in r.checks
            ] + [""]
        if r.goals:
            verdict = {True: "met", False: "NOT met", None: "not measured"}
            lines += [
                f"- goal {verdict[g['met']]}: {g['name']}"
                + (f" ({g['detail']})" if g["detail"] else "")
                for g in r.goals
            ] + [""]
        lines += [f"{n}" for n in r.notes] + ([""] if r.notes else [])
    lines += ["## What one GPU cannot check", ""] + [f"- {n}" for n in NOT_CHECKED] + [""]
    return "\n".join(lines)


def write_reports(output_dir: str, env: Dict, reports: Sequence[PartReport]) -> Dict[str, str]:
    """Write gpu_check.json and gpu_check.md into `output_dir`; returns their paths."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    paths = {
        "json": os.path.join(output_dir, JSON_FILE),
        "markdown": os.path.join(output_dir, MARKDOWN_FILE),
    }
    document = {
        "format": REPORT_FORMAT,
        "environment": env,
        "ok": all(r.status == "ok" for r in reports),
        "parts": [r.to_dict() for r in reports],
        "not_checked": list(NOT_CHECKED),
    }
    atomic_write(paths["json"], json.dumps(document, indent=1, default=str) + "\n")
    atomic_write(paths["markdown"], markdown(env, reports))
    return paths
