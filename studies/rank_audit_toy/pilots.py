#!/usr/bin/env python
"""Which stand-alone protocol separates archs? The shipped one against run.sh's pilots, on the pilots' archs.

For each score file (default: standalone.jsonl, the shipped 400 + 1,500-iteration steps 4-5, and the pilots
standalone_converged*.jsonl beside it), over the archs of the pilots that hold >= 2 seeds in every file:
mean bbox AP and step-4 top-1, the pooled seed std (with its degrees of freedom), the estimated std of the
archs' true AP, ICC, the tau a perfect predictor could reach against a 2-seed mean, the seeds per arch a tau
of 0.7 would need, and the permutation p-value of "the archs differ" (detnas_d2.rank_stats.arch_effect);
the same with seeds as blocks (arch_effect_seed_blocks); then each arch's AP per seed.
Writes pilots.md and pilots.json beside this script (or --output-dir); a partial pilot is compared on the
archs it has finished.

    python studies/rank_audit_toy/pilots.py --scores studies/rank_audit_toy/standalone.jsonl \
        studies/rank_audit_toy/standalone_converged.jsonl studies/rank_audit_toy/standalone_paired.jsonl
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from detnas_d2.audit.formatting import json_safe
from detnas_d2.audit.scores import read_scores
from detnas_d2.rank_stats import arch_effect, arch_effect_seed_blocks

HERE = Path(__file__).resolve().parent


def by_arch(path: Path):
    """{arch_str: {seed: record}} of a score file."""
    runs = {}
    for r in read_scores(path):
        runs.setdefault(r["arch_str"], {})[r["seed"]] = r
    return runs


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scores",
        nargs="+",
        type=Path,
        default=[HERE / "standalone.jsonl", *sorted(HERE.glob("standalone_converged*.jsonl"))],
    )
    parser.add_argument("--output-dir", type=Path, default=HERE)
    args = parser.parse_args()
    files = {path.stem: by_arch(path) for path in args.scores}
    pilots = [runs for name, runs in files.items() if name != "standalone"] or list(files.values())
    archs = [
        a for a in next(iter(pilots)) if all(len(runs.get(a, {})) >= 2 for runs in files.values())
    ]
    if len(archs) < 2:
        sys.exit(f"{len(archs)} arch(s) have >= 2 seeds in every file: nothing to compare yet")

    rows, per_arch = [], {a: {} for a in archs}
    for name, runs in files.items():
        scores = [{s: r["score"] for s, r in runs[a].items()} for a in archs]
        effect, blocks = arch_effect(scores), arch_effect_seed_blocks(scores)
        records = [r for a in archs for r in runs[a].values()]
        rows.append(
            {
                "file": name,
                "protocol": records[0]["protocol"],
                "archs": len(archs),
                "runs": len(records),
                "mean_AP": float(np.mean([r["score"] for r in records])),
                "mean_top1": float(np.mean([r["top1"] for r in records])),
                "minutes_per_run": float(np.mean([r["seconds"] for r in records]) / 60),
                "seed_df": effect["runs"] - effect["archs"],
                **effect,
                "seed_blocks": blocks,
            }
        )
        for a in archs:
            per_arch[a][name] = {s: round(r["score"], 2) for s, r in sorted(runs[a].items())}

    lines = [
        f"## Stand-alone protocols on the same {len(archs)} archs (>= 2 seeds each)",
        "",
        "| score file | protocol | runs | mean AP | mean top-1 | min/run | seed std (df) | arch std | ICC "
        "| tau ceiling | seeds for tau 0.7 | p (archs differ) "
        "| seed blocks: shared offset std, std left, arch std, tau ceiling, seeds for tau 0.7, p |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['file']} | {r['protocol']} | {r['runs']} | {r['mean_AP']:.1f} | {r['mean_top1']:.1f} "
            f"| {r['minutes_per_run']:.1f} | {r['seed_std']:.2f} ({r['seed_df']}) | {r['arch_std']:.2f} "
            f"| {r['icc']:.2f} | {r['tau_ceiling']:.2f} | {r['seeds_for_tau_07']:.0f} | {r['p_value']:.3f} | "
            + ", ".join(
                f"{r['seed_blocks'][k]:.{0 if k == 'seeds_for_tau_07' else 2}f}"
                for k in (
                    "seed_block_std",
                    "seed_std",
                    "arch_std",
                    "tau_ceiling",
                    "seeds_for_tau_07",
                    "p_value",
                )
            )
            + " |"
        )
    lines += ["", "| arch | " + " | ".join(files) + " |", "|---|" + "---|" * len(files)]
    for a in archs:
        cells = [" / ".join(f"{v:.1f}" for v in per_arch[a][name].values()) for name in files]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "AP per seed (0 / 1 / ...). seed std: pooled within-arch std; arch std: estimated std of the "
        "archs' true AP; tau ceiling: what a perfect predictor could reach against the seed means "
        "(detnas_d2.rank_stats.arch_effect); seeds for tau 0.7: the seeds per arch whose mean would allow "
        "a tau of 0.7 (Spearman-Brown from the ICC; inf: no arch effect measured); seed blocks: the same "
        "when a seed's offset shared by all archs is not noise (arch_effect_seed_blocks). minutes: each "
        "run's own seconds, which depend on what else ran.",
    ]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "pilots.md").write_text("\n".join(lines) + "\n")
    (args.output_dir / "pilots.json").write_text(
        json.dumps(json_safe({"protocols": rows, "ap": per_arch}), indent=1) + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
