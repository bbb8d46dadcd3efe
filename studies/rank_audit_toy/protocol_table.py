#!/usr/bin/env python
"""Every scoring protocol against both ground truths (protocol_table.md, protocol_table.json).

Ground truths: the 13 study archs (standalone_paired.jsonl, 6.6-9.0M FLOPs, where FLOPs alone rank well)
and the in-band archs (standalone_inband-paired.jsonl, 10 archs inside the search's 8.5-9.0M band).

For a protocol scored by several supernets (recipe (a) trained with supernet seeds 0-4), tau is the mean
over the supernets of each one's tau: what one run of that protocol is expected to reach. An ensemble of k
supernets ranks by the mean of their scores; its tau is the mean over all k-subsets of the supernets. The
intervals are percentile bootstraps over archs (2,000 resamples, the same for every protocol, so the gains
are paired). The gain is over the best trivial ranking: FLOPs or params, in either direction, whichever has
the highest tau against that truth (chosen on the full sample, which favours the trivial ranking).
Forwards: the images a candidate costs (recalibration + evaluation, at the protocol's input size).

The search-procedure rows are simulated from score files with the search's own code:
- finalists' scoring: the finalists procedure scores the search's top-k on the 512 held-out images on k
  supernets, each recalibrated: its ranking of an arch set is the ensemble of the 64 + 512-image scores.
- racing: the archs come in a random order, in generations of RACING_GENERATION; each is scored on the first
  rung (the first 16 of the 64 evaluation images, *_slice16) and goes on to the whole 64 when
  search/racing.py's rule (TOPK 4, MARGIN 1.0, as the toy search) promotes it, the margin measured on the
  archs fully scored so far. Raced-out archs rank below the fully scored ones, by their slice score. Tau and
  forwards are means over RACING_ORDERS orders per supernet.
- ridge predictor: search/predictor.py's ridge regression fitted on the shipped scores of 40 other archs of
  the band (archs_ridge.txt, inband/ridge_a_seed*), ranking the arch set by its predictions: no forward
  per candidate, 40 x 128 for the whole search.

A protocol whose score files are missing is listed as not measured.

    python studies/rank_audit_toy/protocol_table.py
"""

import argparse
import itertools
import json
from pathlib import Path

from detnas_d2 import rank_stats as rs

import numpy as np

from detnas_d2.audit.scores import read_scores
from detnas_d2.search.predictor import RidgePredictor
from detnas_d2.search.racing import promoted, rung_margin
from detnas_d2.search_space import get_space

HERE = Path(__file__).resolve().parent
SUPERNET_SEEDS = range(5)
SAMPLES = 2000

TRUTHS = {
    "13 study archs": HERE / "standalone_paired.jsonl",
    "in-band archs": HERE / "standalone_inband-paired.jsonl",
}
# Score files per truth, per set of supernets: "{s}" is the supernet seed. Recipe (a) was trained twice with
# seeds 0-4, alike but not bit-identical (the code changed in between): the first set scored only the 13 archs
# (run.sh supernet-seeds), the second (run.sh inband-supernets, protocols) both arch sets. Rows never mix sets.
SCORES = {
    "13 study archs": {
        "supernets of supernet_noise/": "supernet_noise/a_seed{s}{suffix}.jsonl",
        "supernets of inband/": "inband/archs13_a_seed{s}{suffix}.jsonl",
    },
    "in-band archs": {"supernets of inband/": "inband/a_seed{s}{suffix}.jsonl"},
}
SUPERNET_PROTOCOLS = {
    "bbox AP, 64 + 64 images (shipped)": "",
    "bbox AP, 64 + 512 images": "_eval512",
    "step-1 top-1 (48 px, 128 + 200 images)": "_step1",
    "bbox AP, 16 + 64 images": "_recalib16",
    "bbox AP, 64 + 64 images at 96 px": "_res96",
    "bbox AP, 16 + 32 images": "_r16e32",
    "bbox AP, 64 + 16 images (racing's first rung)": "_slice16",
}
ZERO_SHOT = {
    "13 study archs": "zero_shot/{name}_archs13.jsonl",
    "in-band archs": "zero_shot/{name}_inband.jsonl",
}
ZERO_SHOT_PROTOCOLS = {"zero-shot: MAE-DET entropy": "entropy", "zero-shot: Zen-score": "zen"}
RACING_ORDERS = 20
RACING_GENERATION = 5
RACING_TOPK, RACING_MARGIN = 4, 1.0
RIDGE_TRAINING = (
    "supernets of inband/",
    "inband/ridge_a_seed{s}.jsonl",
)  # the supernets it was scored on


def read_truth(path):
    truth = {}
    for r in read_scores(path):
        truth.setdefault(tuple(r["arch"]), {})[int(r["seed"])] = float(r["score"])
        truth[tuple(r["arch"])]["info"] = (r["flops"], r["params"])
    return truth


def read_protocol(path):
    """{arch: (score, forwards, seconds)} of a score file, and the weights it scored with (one file, one
    supernet)."""
    out, weights = {}, set()
    for r in read_scores(path):
        forwards = r.get("images_recalib", 0) + r.get("images_eval", 0)
        out[tuple(r["arch"])] = (float(r["score"]), forwards, float(r.get("seconds", "nan")))
        weights.add(r.get("settings", {}).get("weights_sha1"))
    if len(weights) > 1:
        raise SystemExit(f"{path}: scores of {len(weights)} different supernets in one file")
    return out, weights.pop() if weights else None


def taus(columns, truth, idx):
    """Mean over `columns` (each an array of scores over archs) of tau against `truth`, on rows `idx`."""
    return float(np.mean([rs.kendall_tau_b(c[idx], truth[idx]) for c in columns]))


def figures(columns, truth, trivial, shipped, resamples):
    """tau of `columns` with its interval, and its paired gains over the `trivial` ranking and over the
    `shipped` protocol's columns (on the same supernets)."""
    all_rows = np.arange(len(truth))
    tau = taus(columns, truth, all_rows)
    boot, gain, over_shipped = [], [], []
    for idx in resamples:
        t = taus(columns, truth, idx)
        boot.append(t)
        gain.append(t - rs.kendall_tau_b(trivial[idx], truth[idx]))
        over_shipped.append(t - taus(shipped, truth, idx) if shipped else np.nan)
    boot, gain, over_shipped = np.array(boot), np.array(gain), np.array(over_shipped)
    ok = ~np.isnan(boot) & ~np.isnan(gain)
    out = {
        "tau": tau,
        "tau_ci": np.quantile(boot[ok], [0.025, 0.975]).tolist(),
        "gain": tau - rs.kendall_tau_b(trivial, truth),
        "gain_ci": np.quantile(gain[ok], [0.025, 0.975]).tolist(),
    }
    if shipped:
        out["over_shipped"] = tau - taus(shipped, truth, all_rows)
        out["over_shipped_ci"] = np.quantile(over_shipped[ok], [0.025, 0.975]).tolist()
    return out


def protocol_columns(truth_name, archs):
    """{protocol: (score columns (one per supernet, or per ensemble), forwards per candidate, seconds per
    candidate, the supernet seeds)}."""
    out = {}
    sets = SCORES[truth_name]
    for set_name, pattern in sets.items():
        tag = f" ({set_name})" if len(sets) > 1 else ""
        weights_of, runs_of = {}, {}
        for label, suffix in SUPERNET_PROTOCOLS.items():
            runs, seeds = [], []
            for s in SUPERNET_SEEDS:
                path = HERE / pattern.format(s=s, suffix=suffix)
                if not path.exists():
                    continue
                scores, weights = read_protocol(path)
                if not all(a in scores for a in archs):
                    continue
                if suffix != "_step1" and weights_of.setdefault(s, weights) != weights:
                    raise SystemExit(f"{path}: another supernet than the other files of seed {s}")
                runs.append(scores)
                seeds.append(s)
            if not runs:
                continue
            runs_of[suffix] = dict(zip(seeds, runs))
            columns = [np.array([r[a][0] for a in archs]) for r in runs]
            forwards = float(np.mean([r[a][1] for r in runs for a in archs]))
            seconds = float(np.mean([r[a][2] for r in runs for a in archs]))
            out[label + tag] = (columns, forwards, seconds, seeds)
            ensemble_label = {
                "": "ensemble of {k} supernets, 64 + 64 images",
                "_eval512": "finalists' scoring: {k} supernets, 64 + 512 images each",
            }.get(suffix)
            for k in range(2, len(runs) + 1) if ensemble_label else ():
                ensembles = [np.mean(c, axis=0) for c in itertools.combinations(columns, k)]
                out[ensemble_label.format(k=k) + tag] = (
                    ensembles,
                    k * forwards,
                    k * seconds,
                    seeds,
                )
        full, sliced = runs_of.get("", {}), runs_of.get("_slice16", {})
        seeds = [s for s in full if s in sliced]
        for mode, name in (
            ("offset", "margin less the common offset"),
            ("absolute", "absolute margin"),
        ):
            if seeds:
                rng = np.random.default_rng(0)
                columns, forwards = racing_columns(
                    [full[s] for s in seeds], [sliced[s] for s in seeds], archs, mode, rng
                )
                out[f"racing, 16 then 64 images ({name}){tag}"] = (columns, forwards, np.nan, seeds)
        ridge = {s: HERE / RIDGE_TRAINING[1].format(s=s) for s in SUPERNET_SEEDS}
        seeds = [s for s, p in ridge.items() if p.exists() and s in full]
        if seeds and set_name == RIDGE_TRAINING[0]:
            columns = []
            for s in seeds:
                training, weights = read_protocol(ridge[s])
                if weights != weights_of[s]:
                    raise SystemExit(
                        f"{ridge[s]}: another supernet than the other files of seed {s}"
                    )
                columns.append(ridge_column(training, archs))
            out[f"ridge predictor fitted on 40 band archs' shipped scores{tag}"] = (
                columns,
                0.0,
                0.0,
                seeds,
            )
    for label, name in ZERO_SHOT_PROTOCOLS.items():
        path = HERE / ZERO_SHOT[truth_name].format(name=name)
        if path.exists():
            scores, _ = read_protocol(path)
            if all(a in scores for a in archs):
                column = np.array([scores[a][0] for a in archs])
                forwards = float(np.mean([scores[a][1] for a in archs]))
                seconds = float(np.mean([scores[a][2] for a in archs]))
                out[label] = ([column], forwards, seconds, [])
    return out


def racing_columns(full_runs, slice_runs, archs, mode, rng):
    """Racing simulated on each supernet (full and slice scores of the archs, racing.py's rule) in
    RACING_ORDERS random orders: score columns (raced-out archs below the fully scored ones) and the mean
    forwards per candidate."""
    columns, forwards = [], []
    for full, sliced in zip(full_runs, slice_runs):
        for _ in range(RACING_ORDERS):
            order = rng.permutation(len(archs))
            history, column = [], np.zeros(len(archs))
            for start in range(0, len(order), RACING_GENERATION):
                gen = order[start : start + RACING_GENERATION]
                slice_scores = [sliced[archs[i]][0] for i in gen]
                margin = rung_margin(history, 0, RACING_MARGIN, mode)
                goes = promoted(slice_scores, history, 0, RACING_TOPK, margin)
                for i, score, go in zip(gen, slice_scores, goes):
                    f_score, f_forwards, _ = full[archs[i]]
                    history.append(
                        {"score": f_score if go else score, "slice_scores": [score], "full": go}
                    )
                    column[i] = f_score if go else score - 1e3
                    forwards.append(f_forwards if go else sliced[archs[i]][1])
            columns.append(column)
    return columns, float(np.mean(forwards))


def ridge_column(training, archs):
    """The ridge predictor (search/predictor.py) fitted on `training` ({arch: (score, ...)}), predicting
    `archs`."""
    predictor = RidgePredictor(get_space("small"))
    predictor.fit(list(training), [v[0] for v in training.values()])
    return predictor.predict(archs)


def supernet_set_tag(label):
    """The " (supernets of ...)" end of a row label that names its set of supernets, or ""."""
    return label[label.index(" (supernets") :] if " (supernets" in label else ""


def goal_checks(rows, ceiling):
    """Issue 27's goals for each set of supernets in `rows` ({label: figures}): a protocol counts only where
    its gain over the best trivial ranking has an interval above 0."""
    out = []
    groups = {}
    for label, f in rows.items():
        tag = supernet_set_tag(label)
        groups.setdefault(tag, {})[label[: len(label) - len(tag)]] = f
    for tag, group in groups.items():
        shipped, full = (
            group.get(next(iter(SUPERNET_PROTOCOLS))),
            group.get("bbox AP, 64 + 512 images"),
        )
        if not shipped or not full:
            continue
        zero_shot = {k: v for k, v in rows.items() if k.startswith("zero-shot")}
        candidates = {**group, **zero_shot}
        counts = {k: v for k, v in candidates.items() if v["gain_ci"][0] > 0}
        cheap = {k: v for k, v in candidates.items() if v["forwards"] <= shipped["forwards"]}
        best = max(cheap, key=lambda k: cheap[k]["tau"])
        share = cheap[best]["tau"] / ceiling if ceiling > 0 else float("nan")
        met = best in counts and share >= 0.9
        out.append(
            f"Goal 1{tag}: at most {shipped['forwards']:.0f} forwards (the shipped protocol's), tau >= 90% of "
            f"the ceiling {ceiling:.2f}: the best such protocol, {best}, reaches {cheap[best]['tau']:+.2f} "
            f"({100 * share:.0f}%), gain over the best trivial ranking "
            f"{fmt_ci(cheap[best]['gain'], cheap[best]['gain_ci'])}: "
            + ("met" if met else "not met")
        )
        tenth = {k: v for k, v in candidates.items() if v["forwards"] <= full["forwards"] / 10}
        reach = [k for k, v in tenth.items() if v["tau"] >= full["tau"]]
        out.append(
            f"Goal 2{tag}: at most {full['forwards'] / 10:.1f} forwards (1/10 of the 512-image protocol's), tau >= "
            f"its {full['tau']:+.2f}: "
            + (", ".join(f"{k} ({tenth[k]['tau']:+.2f})" for k in reach) or "none")
            + "; of them with a gain interval above 0: "
            + (", ".join(k for k in reach if k in counts) or "none")
            + (": met" if any(k in counts for k in reach) else ": not met")
        )
        out.append(
            f"Protocols{tag} whose gain over the best trivial ranking has an interval above 0: "
            + (", ".join(counts) or "none")
        )
    return out


def fmt_ci(value, ci):
    return f"{value:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default=str(HERE))
    args = parser.parse_args()
    report, lines = {}, ["# Scoring protocols against both ground truths\n"]
    rng = np.random.default_rng(0)
    for truth_name, path in TRUTHS.items():
        if not path.exists():
            lines.append(f"## {truth_name}: not measured yet ({path.name} missing)\n")
            continue
        truth = read_truth(path)
        archs = sorted(truth)
        seed_scores = [{s: v for s, v in truth[a].items() if s != "info"} for a in archs]
        mean = np.array([np.mean(list(s.values())) for s in seed_scores])
        effect = rs.arch_effect(seed_scores)
        flops = np.array([truth[a]["info"][0] for a in archs], dtype=float)
        params = np.array([truth[a]["info"][1] for a in archs], dtype=float)
        trivial_all = {"FLOPs": flops, "-FLOPs": -flops, "params": params, "-params": -params}
        trivial_taus = {k: rs.kendall_tau_b(v, mean) for k, v in trivial_all.items()}
        best = max(trivial_taus, key=trivial_taus.get)
        resamples = [rng.integers(0, len(archs), len(archs)) for _ in range(SAMPLES)]
        seeds = sorted({s for sc in seed_scores for s in sc})
        lines += [
            f"## {truth_name}: {len(archs)} archs, seeds {seeds}, FLOPs "
            f"{flops.min() / 1e6:.2f}-{flops.max() / 1e6:.2f}M ({path.name})\n",
            f"Ground truth: std of one run over seeds {effect['seed_std']:.2f} AP, estimated std of the "
            f"archs' true AP {effect['arch_std']:.2f}, ICC {effect['icc']:.2f}, reliability of the seed mean "
            f"{effect['reliability']:.2f}, tau ceiling {effect['tau_ceiling']:.2f}, p (archs differ) "
            f"{effect['p_value']:.4f}. Trivial rankings: "
            + ", ".join(f"{k} {v:+.2f}" for k, v in trivial_taus.items())
            + f"; the best, {best}, is the baseline of the gains.\n",
            "| protocol | supernets | tau [95% CI] | % of ceiling | gain over "
            f"{best} [paired 95% CI] | gain over the shipped protocol, same supernets | "
            "forwards / candidate | seconds / candidate |",
            "|---|---|---|---|---|---|---|---|",
        ]
        rows = {}
        protocols = protocol_columns(truth_name, archs)
        shipped_label = next(iter(SUPERNET_PROTOCOLS))
        for label, (columns, forwards, seconds, supernets) in protocols.items():
            tag = supernet_set_tag(label)
            shipped = protocols.get(shipped_label + tag)
            same = []
            if shipped and supernets and not label.startswith(("ensemble", shipped_label)):
                same = [c for c, s in zip(shipped[0], shipped[3]) if s in supernets]
                if len(same) < len(supernets):
                    same = []
            f = figures(columns, mean, trivial_all[best], same, resamples)
            f.update(forwards=forwards, seconds=seconds, supernets=supernets)
            rows[label] = f
            ceiling = effect["tau_ceiling"]
            versus = fmt_ci(f["over_shipped"], f["over_shipped_ci"]) if same else ""
            # no share of a ceiling the ground truth does not reach (archs not separated yet)
            share = f"{100 * f['tau'] / ceiling:.0f}%" if ceiling > 0 else "n/a"
            secs = "-" if np.isnan(seconds) else f"{seconds:.2f}"  # simulated procedures: not timed
            lines.append(
                f"| {label} | {' '.join(map(str, supernets)) or '-'} | "
                f"{fmt_ci(f['tau'], f['tau_ci'])} | {share} | "
                f"{fmt_ci(f['gain'], f['gain_ci'])} | {versus} | {forwards:.0f} | {secs} |"
            )
        goals = goal_checks(rows, effect["tau_ceiling"])
        lines += [""] + [f"- {g}" for g in goals] + [""]
        report[truth_name] = {
            "goals": goals,
            "standalone_file": path.name,
            "archs": len(archs),
            "seeds": seeds,
            "arch_effect": effect,
            "trivial_taus": trivial_taus,
            "best_trivial": best,
            "protocols": rows,
        }
    out = Path(args.output_dir)
    (out / "protocol_table.md").write_text("\n".join(lines) + "\n")
    (out / "protocol_table.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
