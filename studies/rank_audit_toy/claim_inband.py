#!/usr/bin/env python
"""DetNAS's claim at equal FLOPs (claim_inband.md): does the arch searched on the detection supernet retrain
better than random archs of the same FLOPs band?

Inputs (run.sh claim-inband, run.sh inband): the det-search and cls-search archs of supernet seed s
(claim_inband/{det,cls}_search_supernet<s>.yaml) retrained under the paired protocol
(claim_inband/searched_supernet<s>.jsonl), and the in-band ground truth's 10 random archs of the band under the
same protocol and seeds (standalone_inband-paired.jsonl). Paired by training seed (with paired initialisation
one seed gives every arch the same initial weights where they share blocks, the same heads and data order):

- against the random baseline: each seed's mean AP over the random archs (the expected AP of a random arch of
  the band), one-sided sign-flip test that det-search is better;
- against each random arch: how many of them det-search beats on the mean over seeds;
- det-search against cls-search, both directions;
- each search again with DETNAS.SEARCH.SEED n (run.sh's SEARCH_SEED=n: files ending _search<n>), in a
  section of its own, then each option pooled over the search seeds (per training seed, the mean AP of
  the archs its searches found);
- det-search with finalists (best mean, or the fewest params among those tied with it) and with ensemble
  scoring on k supernets (run.sh claim-inband-robust,
  claim_inband/det_search_{finalists,tiebreak,ensemble}<k>_supernet<s>.yaml) against the random baseline,
  and all-3x3 beside them (outside the band, from the 13-arch truth's same protocol and seeds).

    python studies/rank_audit_toy/claim_inband.py [--supernet-seeds 0] [--search-seeds 0 1]
"""

import argparse
import itertools
import re
from pathlib import Path

from detnas_d2 import rank_stats as rs

import numpy as np

from detnas_d2.arch_io import load_arch_record
from detnas_d2.audit.scores import read_scores

HERE = Path(__file__).resolve().parent
LABELS = {"det": "det-search", "cls": "cls-search"}
ROBUST = {  # run.sh claim-inband-robust's options, by the number of supernets k
    "finalists": "det-search with finalists (top 5 on {k} supernets)",
    "tiebreak": "det-search with finalists, the fewest params of the best's ties (top 5 on {k} supernets)",
    "ensemble": "det-search scored by {k} supernets",
}
ROBUST_FILE = re.compile(
    r"det_search_(" + "|".join(ROBUST) + r")(\d+)_supernet(\d+)(_search\d+)?\.yaml"
)


def search_tag(n: int) -> str:
    """What run.sh appends to the files of a search with DETNAS.SEARCH.SEED n (SEARCH_SEED)."""
    return f"_search{n}" if n else ""


def robust_searches(s: int, n: int):
    """{(option, k): arch file} of supernet seed s and search seed n, by k then option."""
    found = {}
    for path in (HERE / "claim_inband").glob(f"det_search_*_supernet{s}{search_tag(n)}.yaml"):
        m = ROBUST_FILE.fullmatch(path.name)
        if m:
            found[(m[1], int(m[2]))] = path
    return dict(
        sorted(found.items(), key=lambda item: (item[0][1], list(ROBUST).index(item[0][0])))
    )


def arch_of(path: Path):
    return tuple(load_arch_record(str(path)).arch)


def by_arch_seed(path: Path):
    out = {}
    for r in read_scores(path):
        out.setdefault(tuple(r["arch"]), {})[int(r["seed"])] = (float(r["score"]), r["flops"])
    return out


def per_seed(values) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def sign_flip_table(tests, num_seeds: int):
    """Markdown lines: the one-sided tests [(name, p)] and the smallest p possible."""
    return [
        "",
        "| one-sided exact sign-flip test | p |",
        "|---|---|",
        *(f"| {name} | {p:.3f} |" for name, p in tests),
        f"\n(With {num_seeds} seeds the smallest possible p is {2.0**-num_seeds:.3f}.)\n",
    ]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--supernet-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--search-seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    random_runs = by_arch_seed(HERE / "standalone_inband-paired.jsonl")
    lines = ["# DetNAS's claim at equal FLOPs (toy scale, band 8.5-9.0M)\n"]
    all3x3 = by_arch_seed(HERE / "standalone_paired.jsonl").get((0,) * 20, {})
    retrained = {}  # supernet seed -> the searched archs' runs, both score files
    for s in args.supernet_seeds:
        retrained[s] = {}
        for name in (f"searched_supernet{s}.jsonl", f"robust_supernet{s}.jsonl"):
            if (HERE / "claim_inband" / name).exists():
                retrained[s].update(by_arch_seed(HERE / "claim_inband" / name))
    # (supernet seed, training seeds) -> the random archs' mean, the labels, and per option its AP per
    # training seed, one array per search seed
    pooled = {}
    for s, n in itertools.product(args.supernet_seeds, args.search_seeds):
        searched = retrained[s]
        named = {
            kind: arch_of(path)
            for kind in LABELS
            if (
                path := HERE / "claim_inband" / f"{kind}_search_supernet{s}{search_tag(n)}.yaml"
            ).exists()
        }
        if "det" not in named:
            continue
        seeds = sorted(
            set.intersection(
                *(set(searched.get(a, {})) for a in named.values()),
                *(set(v) for v in random_runs.values()),
            )
        )
        lines.append(f"## Supernet seed {s}, search seed {n}: training seeds {seeds}\n")
        if len(seeds) < 2:
            lines.append("Fewer than 2 seeds with every run: nothing to test yet.\n")
            continue
        labels = dict(LABELS)
        for (option, k), path in robust_searches(s, n).items():  # once retrained with every seed
            if set(seeds) <= set(searched.get(arch_of(path), {})):
                kind = f"{option}{k}"
                named[kind] = arch_of(path)
                labels[kind] = ROBUST[option].format(k=k)
        ap = {kind: np.array([searched[a][t][0] for t in seeds]) for kind, a in named.items()}
        flops = {kind: searched[a][seeds[0]][1] for kind, a in named.items()}
        randoms = {a: np.array([v[t][0] for t in seeds]) for a, v in random_runs.items()}
        random_mean = np.mean(list(randoms.values()), axis=0)
        rows = [
            (
                labels[k]
                + (
                    " (the same arch as det-search)"
                    if k not in LABELS and a == named["det"]
                    else ""
                ),
                ap[k],
                f"{flops[k] / 1e6:.2f}",
            )
            for k, a in named.items()
        ]
        rows.append((f"random of the band (mean of {len(randoms)} archs)", random_mean, "8.5-9.0"))
        if set(seeds) <= set(all3x3):
            rows.append(
                (
                    "all-3x3 (outside the band; standalone_paired.jsonl, same protocol and seeds)",
                    np.array([all3x3[t][0] for t in seeds]),
                    f"{all3x3[seeds[0]][1] / 1e6:.2f}",
                )
            )
        lines += [
            "| arch | MFLOPs | bbox AP per seed | mean ± std |",
            "|---|---|---|---|",
        ]
        for name, values, mf in rows:
            lines.append(
                f"| {name} | {mf} | {per_seed(values)} | "
                f"{values.mean():.1f} ± {values.std(ddof=1):.1f} |"
            )
        lines.append("")
        for kind in named:
            beats = sum(ap[kind].mean() > v.mean() for v in randoms.values())
            lines.append(
                f"{labels[kind]}: its mean beats {beats} of the {len(randoms)} random archs' means (rank "
                f"{1 + sum(v.mean() > ap[kind].mean() for v in randoms.values())} of {len(randoms) + 1})."
            )
        tests = [
            (
                f"{labels[k]} > random (paired by seed)",
                rs.paired_permutation_test(ap[k], random_mean),
            )
            for k in named
        ]
        if "cls" in named:
            tests += [
                (
                    "det-search > cls-search (paired)",
                    rs.paired_permutation_test(ap["det"], ap["cls"]),
                ),
                (
                    "cls-search > det-search (paired)",
                    rs.paired_permutation_test(ap["cls"], ap["det"]),
                ),
            ]
        lines += sign_flip_table(tests, len(seeds))
        entry = pooled.setdefault(
            (s, tuple(seeds)), {"random": random_mean, "labels": labels, "ap": {}}
        )
        for kind in named:
            entry["ap"].setdefault(kind, []).append(ap[kind])
    for (s, seeds), entry in pooled.items():
        searches = len(entry["ap"]["det"])
        if searches < 2:
            continue
        lines.append(
            f"## Supernet seed {s}, pooled over {searches} search seeds: training seeds {list(seeds)}\n"
        )
        lines.append(
            "Each option's AP per training seed, the mean of the archs its searches found (those searched "
            "with every search seed), against the random archs' mean:\n"
        )
        mean_ap = {k: np.mean(v, axis=0) for k, v in entry["ap"].items() if len(v) == searches}
        labels, random_mean = entry["labels"], entry["random"]
        lines += ["| option | bbox AP per seed | mean |", "|---|---|---|"]
        lines += [f"| {labels[k]} | {per_seed(v)} | {v.mean():.1f} |" for k, v in mean_ap.items()]
        lines.append(f"| random of the band | {per_seed(random_mean)} | {random_mean.mean():.1f} |")
        tests = [
            (f"{labels[k]} > random (paired by seed)", rs.paired_permutation_test(v, random_mean))
            for k, v in mean_ap.items()
        ]
        tests += [
            (
                f"{labels[k]} > det-search (paired by seed)",
                rs.paired_permutation_test(v, mean_ap["det"]),
            )
            for k, v in mean_ap.items()
            if k != "det"
        ]
        lines += sign_flip_table(tests, len(seeds))
    text = "\n".join(lines) + "\n"
    (HERE / "claim_inband.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
