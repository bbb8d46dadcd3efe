"""What a part of the GPU check records, and what every part is given.

A part fills a `PartReport`: `data` (numbers for the JSON report), `tables` (for the Markdown report),
`checks` (correctness: one that fails fails the part), `goals` (targets such as "supernet/subnet <= 1.05":
reported as met or not, the part does not fail) and `notes`. `CheckContext` holds the device, the mode
(full size, or `quick`: the same code at tiny sizes), the work folder and the reports of the parts that
ran before (the projections read the step costs).
"""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

__all__ = ["CheckContext", "PartReport", "non_finite"]


@dataclass
class PartReport:
    name: str
    title: str
    budget_s: float
    status: str = "not run"  # ok | failed | skipped
    seconds: float = 0.0
    error: str = ""
    data: Dict[str, Any] = field(default_factory=dict)
    tables: List[Dict[str, Any]] = field(default_factory=list)
    checks: List[Dict[str, Any]] = field(default_factory=list)
    goals: List[Dict[str, Any]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def table(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.tables.append(
            {"title": title, "headers": list(headers), "rows": [list(r) for r in rows]}
        )

    def check(self, name: str, passed: bool, detail: str = "") -> bool:
        self.checks.append({"name": name, "passed": bool(passed), "detail": detail})
        return bool(passed)

    def goal(self, name: str, met: Optional[bool], detail: str = "") -> None:
        """`met` None: not measurable here (e.g. AMP on CPU)."""
        self.goals.append({"name": name, "met": met, "detail": detail})

    def note(self, text: str) -> None:
        self.notes.append(text)

    def failed_checks(self) -> List[Dict[str, Any]]:
        return [c for c in self.checks if not c["passed"]]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "budget_s": self.budget_s,
            "error": self.error,
            "data": self.data,
            "tables": self.tables,
            "checks": self.checks,
            "goals": self.goals,
            "notes": self.notes,
        }


@dataclass
class CheckContext:
    device: torch.device
    quick: bool
    work_dir: Path
    log: Callable[[str], None] = print
    reports: Dict[str, PartReport] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def precisions(self):
        """fp32, and AMP where Detectron2's AMPTrainer runs (CUDA)."""
        return ("fp32", "amp") if self.cuda else ("fp32",)

    def earlier(self, name: str) -> Optional[PartReport]:
        """The report of part `name` if it ran and passed, else None."""
        report = self.reports.get(name)
        return report if report is not None and report.status == "ok" else None

    def folder(self, name: str) -> Path:
        path = self.work_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def non_finite(value) -> List[str]:
    """Paths (a.b[2].c) of every NaN or infinite float inside `value` (dicts, lists, numbers)."""
    bad = []

    def walk(v, path):
        if isinstance(v, float) and not math.isfinite(v):
            bad.append(path or ".")
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{path}.{k}" if path else str(k))
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(x, f"{path}[{i}]")

    walk(value, "")
    return bad
