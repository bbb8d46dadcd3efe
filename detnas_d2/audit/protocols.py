"""A cheaper scoring protocol against a reference one, from two score files or searches' candidates.jsonl:
Kendall tau-b and Spearman rho over the archs both scored, top-k overlap, whether the best archs agree,
and the cost ratios (image forwards, seconds)."""

import json
from pathlib import Path
from typing import Dict, Optional

from tabulate import tabulate

from .. import rank_stats as rs
from ..file_io import atomic_write
from ..user_errors import UserError
from .archs import Arch, arch_str
from .console import log
from .formatting import fmt, json_safe
from .scores import read_scores

__all__ = ["compare_protocols", "protocol_figures", "read_protocol"]


def read_protocol(path: str) -> Dict[Arch, Dict]:
    """{arch: {"score": float, or None when raced out on a slice, "images": int or None, "seconds"}} of a
    score file or a search's candidates.jsonl (images: recalibration + evaluation forwards; seconds: the
    candidate's wall time, or its scoring time)."""
    records = read_scores(Path(path))
    if not records:
        raise ValueError(
            f"{path}: no scores (a score file of this tool or a search's candidates.jsonl)"
        )
    out = {}
    for r in records:
        if "arch" not in r or "score" not in r:
            raise ValueError(f"{path}: a line without arch/score: {json.dumps(r)[:80]}")
        arch = tuple(int(a) for a in r["arch"])
        if arch in out:
            raise ValueError(
                f"{path}: arch {arch_str(arch)} is scored twice; give one protocol run per file"
            )
        images = [r[k] for k in ("images_recalib", "images_eval") if k in r]
        seconds = r.get("seconds_wall", r.get("seconds"))
        if seconds is None and any(k.startswith("seconds_") for k in r):
            seconds = sum(v for k, v in r.items() if k.startswith("seconds_"))
        out[arch] = {
            "score": float(r["score"]) if r.get("full", True) else None,
            "images": sum(images) if images else None,
            "seconds": seconds,
        }
    return out


def _total(records: Dict[Arch, Dict], key: str) -> Optional[float]:
    values = [r[key] for r in records.values()]
    return None if any(v is None for v in values) else float(sum(values))


def protocol_figures(reference: Dict[Arch, Dict], cheap: Dict[Arch, Dict], topk: int) -> Dict:
    """The cheap protocol's ranking of the archs both scored against the reference's: Kendall tau-b and
    Spearman rho over the archs with a full score in both, top-k overlap (a raced-out arch is not in the
    cheap top-k), whether the two bests agree (each file's best full score), and the cost ratios (whole files)."""
    common = [a for a in reference if a in cheap and reference[a]["score"] is not None]
    scored = [a for a in common if cheap[a]["score"] is not None]
    ref, chp = [reference[a]["score"] for a in scored], [cheap[a]["score"] for a in scored]
    k = min(topk, len(common))
    ref_top = sorted(common, key=lambda a: -reference[a]["score"])[:k]
    cheap_top = sorted(scored, key=lambda a: -cheap[a]["score"])[:k]
    best = {
        name: max((a for a in p if p[a]["score"] is not None), key=lambda a: p[a]["score"])
        for name, p in (("reference", reference), ("cheap", cheap))
    }
    figures = {
        "archs_common": len(common),
        "archs_compared": len(scored),
        "raced_out": len(common) - len(scored),
        "tau": rs.kendall_tau_b(chp, ref) if len(scored) >= 2 else float("nan"),
        "rho": rs.spearman_rho(chp, ref) if len(scored) >= 2 else float("nan"),
        "topk": {
            "k": k,
            "hits": len(set(ref_top) & set(cheap_top)),
            "reference_top_raced_out": sum(cheap[a]["score"] is None for a in ref_top),
        },
        "best_reference": list(best["reference"]),
        "best_cheap": list(best["cheap"]),
        "best_agrees": best["reference"] == best["cheap"],
        "best_cheap_reference_score": reference.get(best["cheap"], {}).get("score"),
        "best_reference_score": reference[best["reference"]]["score"],
    }
    for key in ("images", "seconds"):
        r, c = _total(reference, key), _total(cheap, key)
        figures[key] = {"reference": r, "cheap": c, "ratio": c / r if r and c is not None else None}
    return figures


def compare_protocols(*, reference: str, cheap: str, topk: int, output: Optional[str]) -> int:
    """The figures of score file (or candidates.jsonl) `cheap` against `reference`, printed as a table and
    written as JSON to `output` if given. Returns the exit status."""
    figures = protocol_figures(read_protocol(reference), read_protocol(cheap), topk)
    if figures["archs_common"] < 2:
        raise UserError(
            f"{figures['archs_common']} arch(s) scored by both protocols: nothing to compare; give "
            "--reference and --cheap files that score the same archs"
        )
    top, gap = figures["topk"], None
    if figures["best_cheap_reference_score"] is not None:
        gap = figures["best_reference_score"] - figures["best_cheap_reference_score"]
    rows = [
        [
            "archs scored by both (with a full score in both)",
            f"{figures['archs_common']} ({figures['archs_compared']})",
        ],
        ["Kendall tau-b", fmt(figures["tau"], 3)],
        ["Spearman rho", fmt(figures["rho"], 3)],
        [
            f"top-{top['k']} overlap",
            f"{top['hits']}/{top['k']} ({top['reference_top_raced_out']} of the reference "
            "top-k raced out)",
        ],
        [
            "best arch agrees",
            "yes"
            if figures["best_agrees"]
            else f"no: the cheap best scores {fmt(gap, 3)} below the reference best under the reference"
            if gap is not None
            else "no (the cheap best is not in the reference file)",
        ],
    ]
    for key, unit in (("images", "image forwards"), ("seconds", "seconds")):
        f = figures[key]
        rows.append(
            [
                f"{unit}: cheap / reference",
                f"{fmt(f['cheap'], 0)} / {fmt(f['reference'], 0)} = {fmt(f['ratio'], 3)}"
                if f["ratio"] is not None
                else "n/a (not in both files)",
            ]
        )
    text = (
        f"## Scoring protocols: {cheap} against {reference}\n\n"
        + tabulate(rows, headers=["", "value"], tablefmt="pipe", disable_numparse=True)
        + "\n"
    )
    print(text)
    if output:
        atomic_write(
            output,
            json.dumps(
                json_safe(dict(figures, reference_file=reference, cheap_file=cheap)), indent=2
            )
            + "\n",
        )
        log(f"written: {output}")
    return 0
