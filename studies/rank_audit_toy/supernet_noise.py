#!/usr/bin/env python
"""How reproducible is the supernet's ranking? The report of `run.sh supernet-seeds` (supernet_noise.md).

For each scoring protocol of supernet_noise/ (the search's: 64 images of toy_det_search; eval512: 512
held-out images; step1: the step-1 supernet's top-1), over the supernet seeds: the tau between two
supernets trained alike, the two-way ANOVA of rank_stats.arch_effect_seed_blocks with supernet seeds in
the place of training seeds (how much of a supernet's score is the arch's), and the tau of the mean over
supernet seeds (an ensemble) against the stand-alone ground truth. Each supernet's own tau against it, with
gains over FLOPs, is in supernet_noise/compare.md (rank_audit.py compare).

    python studies/rank_audit_toy/supernet_noise.py [--standalone studies/rank_audit_toy/standalone_paired.jsonl]
"""

import argparse
import itertools
import re
from pathlib import Path

from detnas_d2 import rank_stats as rs

import numpy as np

from detnas_d2.audit.scores import read_scores

HERE = Path(__file__).resolve().parent

PROTOCOLS = {
    "": "bbox AP, 64 images (the search's)",
    "_eval512": "bbox AP, 512 images",
    "_step1": "step-1 top-1",
}


def tau_ci(x, y):
    ci = rs.bootstrap_ci(rs.kendall_tau_b, x, y, samples=2000, seed=0)
    return rs.kendall_tau_b(x, y), (ci["low"], ci["high"])


def fmt(tau, ci=None):
    return f"{tau:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--standalone", default=str(HERE / "standalone_paired.jsonl"))
    args = parser.parse_args()
    truth = {}
    for r in read_scores(Path(args.standalone)):
        truth.setdefault(tuple(r["arch"]), {})[r["seed"]] = r["score"]
    archs = sorted(truth)
    gt = [np.mean(list(truth[a].values())) for a in archs]
    gt_noise = rs.arch_effect([truth[a] for a in archs])
    lines = [
        "## Supernet ranking noise: recipe (a) trained with several seeds, scored by several protocols\n",
        f"Ground truth: {Path(args.standalone).name}, {len(archs)} archs, seeds per arch "
        f"{min(map(len, truth.values()))}-{max(map(len, truth.values()))}; its ICC {gt_noise['icc']:.2f}, "
        f"reliability of the mean {gt_noise['reliability']:.2f}, tau ceiling {gt_noise['tau_ceiling']:.2f}. "
        "Each supernet's tau against it: supernet_noise/compare.md.\n",
    ]
    scores = {}  # protocol -> {seed: {arch: score}}
    for path in sorted((HERE / "supernet_noise").glob("a_seed*.jsonl")):
        seed, protocol = re.fullmatch(r"a_seed(\d+)(.*)", path.stem).groups()
        scores.setdefault(protocol, {})[int(seed)] = {
            tuple(r["arch"]): r["score"] for r in read_scores(path)
        }
    summary = [
        "| protocol | supernet seeds | tau between seeds | ICC over supernet seeds | "
        "one supernet's tau ceiling | reliability of the mean | p (archs differ) | "
        "tau if both rankings were one, but noisy | mean over seeds: tau vs ground truth [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for protocol, label in PROTOCOLS.items():
        by_seed = {s: v for s, v in scores.get(protocol, {}).items() if all(a in v for a in archs)}
        if len(by_seed) < 2:
            continue
        pairs = [
            f"{rs.kendall_tau_b([by_seed[s][a] for a in archs], [by_seed[t][a] for a in archs]):.2f} ({s} vs {t})"
            for s, t in itertools.combinations(sorted(by_seed), 2)
        ]
        # seed blocks: a supernet's level shared by all archs (AP 9 or 13) moves no ranking
        effect = rs.arch_effect_seed_blocks([{s: by_seed[s][a] for s in by_seed} for a in archs])
        mean = [np.mean([by_seed[s][a] for s in by_seed]) for a in archs]
        # the attenuation bound: true scores in the same order, both means noisy (normal scores)
        both = max(0.0, effect["reliability"]) * max(0.0, gt_noise["reliability"])
        summary.append(
            f"| {label} | {' '.join(map(str, sorted(by_seed)))} | {'; '.join(pairs)} | "
            f"{effect['icc']:.2f} | {rs.tau_ceiling(effect['icc']):.2f} | {effect['reliability']:.2f} | "
            f"{effect['p_value']:.4f} | "
            f"{rs.tau_ceiling(both):.2f} | {fmt(*tau_ci(mean, gt))} |"
        )
    seeds_both = sorted(set(scores.get("", {})) & set(scores.get("_eval512", {})))
    scoring = [
        fmt(
            rs.kendall_tau_b(
                [scores[""][s][a] for a in archs], [scores["_eval512"][s][a] for a in archs]
            )
        )
        + f" (seed {s})"
        for s in seeds_both
    ]
    text = (
        "\n".join(lines + summary)
        + (
            f"\n\nThe same supernet scored on 64 against 512 images (scoring noise): tau {'; '.join(scoring)}.\n"
            if scoring
            else "\n"
        )
        + (
            "\nICC over supernet seeds: the share of one supernet's score variance that is the arch's; the rest is "
            "the arch x supernet interaction (which supernet, i.e. its training seed, and scoring noise), a level "
            "shared by all archs left out as it moves no ranking (rank_stats.arch_effect_seed_blocks). One "
            "supernet's tau ceiling: the tau of one supernet's scores against the archs' exact stand-alone scores "
            "if its true ranking were theirs, (2 / pi) asin(sqrt(ICC)). Reliability: that of the mean over the "
            "supernet seeds. Tau if both rankings were one: the tau that mean would reach against the ground "
            "truth's means if the archs' true supernet scores ranked them exactly as their true stand-alone scores "
            "(both reliabilities, normal scores): a tau well below it is the supernet's bias, not noise.\n"
        )
    )
    (HERE / "supernet_noise.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
