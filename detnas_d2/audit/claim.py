"""DetNAS's claim at small scale (tools/study.py): the arch searched on detection against the arch
searched on classification, all-3x3 and a random arch of the same FLOPs, each retrained alike (steps 4-5)
with one or more seeds; the report tests det-search against each other arch over the seeds."""

import json
import random
import statistics
from pathlib import Path

from tabulate import tabulate

from ..rank_stats import paired_permutation_test, permutation_test
from ..search_space import arch_to_str

__all__ = ["P_COLUMNS", "similar_flops_arch", "write_report"]


def similar_flops_arch(space, table, flops, seed, exclude=(), tolerance=0.02):
    """A random arch within `tolerance` of `flops`, none of `exclude` (the study's other archs)."""
    rng = random.Random(seed)
    for _ in range(100000):
        arch = space.random_arch(rng)
        if abs(table.flops(arch) - flops) <= tolerance * flops and arch not in exclude:
            return arch
    raise RuntimeError(f"no random arch within {tolerance:.0%} of {flops / 1e6:.2f}M FLOPs")


P_COLUMNS = (
    "p_det_search_better",
    "p_det_search_better_paired",
    "p_det_search_worse",
    "p_det_search_worse_paired",
)


def write_report(out: Path, archs, runs, table, input_size: int, protocol: str = "") -> str:
    """study.json and study.md over the seeds done so far; `protocol`: the steps' own options, if any."""
    rows = []
    for name, arch in archs.items():
        aps = [r["AP"] for r in runs[name]]
        rows.append(
            {
                "arch": name,
                "ids": arch_to_str(arch),
                "flops": table.flops(arch),
                "params": table.params(arch),
                "top1": statistics.mean(r["top1"] for r in runs[name]),
                "AP": statistics.mean(aps),
                "AP_std": statistics.stdev(aps) if len(aps) > 1 else 0.0,
                "runs": runs[name],
            }
        )
    seeds = len(rows[0]["runs"])
    det_aps = [r["AP"] for r in rows[0]["runs"]]
    for row in rows[1:]:
        # Does det-search beat this arch beyond seed noise? One-sided exact permutation test over seeds.
        aps = [r["AP"] for r in row["runs"]]
        row["p_det_search_better"] = permutation_test(det_aps, aps) if seeds > 1 else None
        # The same with each seed's two runs paired (they share that seed's data order, and with
        # MODEL.DETNAS.PAIRED_INIT the initial weights of the blocks both archs have).
        row["p_det_search_better_paired"] = (
            paired_permutation_test(det_aps, aps) if seeds > 1 else None
        )
        # ... and the other way: does this arch beat det-search?
        row["p_det_search_worse"] = permutation_test(aps, det_aps) if seeds > 1 else None
        row["p_det_search_worse_paired"] = (
            paired_permutation_test(aps, det_aps) if seeds > 1 else None
        )
    (out / "study.json").write_text(json.dumps(rows, indent=2))
    text = tabulate(
        [
            [
                r["arch"],
                f"{r['flops'] / 1e6:.2f}",
                f"{r['params'] / 1e6:.3f}",
                f"{r['top1']:.1f}",
                f"{r['AP']:.2f}" + (f" ± {r['AP_std']:.2f}" if seeds > 1 else ""),
                *("" if r.get(k) is None else f"{r[k]:.3f}" for k in P_COLUMNS),
                r["ids"],
            ]
            for r in rows
        ],
        headers=[
            "arch",
            "MFLOPs",
            "Mparams",
            "cls top-1",
            "bbox AP",
            "p (det-search better)",
            "p paired by seed",
            "p (det-search worse)",
            "p worse, paired",
            "block ids",
        ],
        tablefmt="pipe",
    )
    text += (
        f"\n\n{seeds} training seed(s) per arch; FLOPs of the backbone at "
        f"{input_size}x{input_size}. p: one-sided exact permutation "
        "test of det-search's mean AP over seeds against the arch's (needs >= 2 seeds; with 5 seeds "
        "each the smallest possible p is 1/252); p paired by seed: one-sided exact sign-flip test of the "
        "per-seed differences (the runs of one seed share its data order, and with "
        "MODEL.DETNAS.PAIRED_INIT the initial weights of the blocks both archs have; smallest p 1/2^seeds); "
        "worse: the same tests the other way (the arch beats det-search)."
        + (f" Retrained {protocol}." if protocol else "")
        + "\n"
    )
    (out / "study.md").write_text(text)
    return text
