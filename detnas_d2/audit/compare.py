"""The audit's figures: each supernet protocol's ranking of the archs against the stand-alone ground truth
(Kendall tau-b, Spearman rho with bootstrap intervals, top-fraction precision, the gain over ranking by
FLOPs or over a baseline protocol), the stand-alone seed noise, rank-by-FLOPs/params, over all archs and
those inside the FLOPs band: compare.md, compare.json and compare.png."""

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tabulate import tabulate

from .. import rank_stats as rs
from ..config import get_detnas_cfg
from ..config_files import config_file
from ..file_io import atomic_write
from ..user_errors import UserError
from .archs import Arch, arch_str
from .console import log
from .formatting import fmt, fmt_ci, json_safe
from .scores import read_scores

__all__ = [
    "best_trivial_ranking",
    "compare",
    "load_compare_inputs",
    "plot_compare",
    "predictor_figures",
]


def predictor_figures(predicted, truth, fraction, samples, seed, baselines=None) -> Dict:
    """tau-b, rho (with bootstrap intervals) and top-fraction precision of `predicted` against `truth`;
    for each of `baselines` ({name: another predictor's values}), tau(predicted) - tau(baseline) with its
    interval over the same resamples (a paired comparison)."""
    predicted, truth = np.asarray(predicted, dtype=float), np.asarray(truth, dtype=float)
    figures = {
        "n": len(truth),
        "tau": rs.kendall_tau_b(predicted, truth),
        "tau_ci": rs.bootstrap_ci(rs.kendall_tau_b, predicted, truth, samples=samples, seed=seed),
        "rho": rs.spearman_rho(predicted, truth),
        "rho_ci": rs.bootstrap_ci(rs.spearman_rho, predicted, truth, samples=samples, seed=seed),
        "top": rs.top_k_overlap(predicted, truth, fraction),
        "tau_gain": {},
    }

    def gain(p, t, b):
        return rs.kendall_tau_b(p, t) - rs.kendall_tau_b(b, t)

    for name, baseline in (baselines or {}).items():
        baseline = np.asarray(baseline, dtype=float)
        figures["tau_gain"][name] = {
            "value": figures["tau"] - rs.kendall_tau_b(baseline, truth),
            "ci": rs.bootstrap_ci(gain, predicted, truth, baseline, samples=samples, seed=seed),
        }
    return figures


def load_compare_inputs(supernet_files: Sequence[str], standalone_file: str):
    """({label: {arch: score}} per supernet protocol, {arch: {seed: AP}}, {arch: (flops, params)})."""
    predictors: Dict[str, Dict[Arch, float]] = {}
    info: Dict[Arch, Tuple[int, int]] = {}
    for path in supernet_files:
        records = read_scores(Path(path))
        if not records:
            raise UserError(f"{path}: no scores")
        for label in dict.fromkeys(r.get("protocol") for r in records):
            key = label if label not in predictors else f"{label} ({Path(path).stem})"
            predictors[key] = {}
            for r in records:
                if r.get("kind") != "supernet":
                    raise UserError(
                        f"{path}: a line of kind '{r.get('kind')}' where supernet scores were expected"
                    )
                if r["protocol"] == label:
                    if math.isnan(float(r["score"])):
                        log(f"{path}: {r['arch_str']} has no score (NaN): left out")
                        continue
                    predictors[key][tuple(r["arch"])] = float(r["score"])
                    info[tuple(r["arch"])] = (r["flops"], r["params"])
    truth: Dict[Arch, Dict[int, float]] = {}
    mismatch = False
    records = read_scores(Path(standalone_file))
    if not records:
        raise UserError(f"{standalone_file}: no scores")
    for r in records:
        if r.get("kind") != "standalone":
            raise UserError(
                f"{standalone_file}: a line of kind '{r.get('kind')}' where stand-alone scores were expected"
            )
        score = float(r["score"])
        if math.isnan(score):
            log(f"{standalone_file}: {r['arch_str']} seed {r['seed']} has no score (NaN): left out")
            continue
        truth.setdefault(tuple(r["arch"]), {})[int(r["seed"])] = score
        if (
            info.get(tuple(r["arch"]), (r["flops"], r["params"])) != (r["flops"], r["params"])
            and not mismatch
        ):
            mismatch = True
            log(
                f"FLOPs/params differ between the supernet and stand-alone files (another input size or space "
                f"in --config-file?): those of {standalone_file} are used"
            )
        info[tuple(r["arch"])] = (r["flops"], r["params"])
    return predictors, truth, info


def best_trivial_ranking(flops, params, truth) -> Tuple[str, List[float]]:
    """The ranking by FLOPs or by params, in either direction, with the highest tau against `truth`:
    (its name, e.g. "-FLOPs" for "fewer FLOPs is better", its values). Chosen on the full sample, which
    favours it: a predictor's gain over it is, if anything, understated."""
    rankings = {
        "FLOPs": list(flops),
        "-FLOPs": [-f for f in flops],
        "params": list(params),
        "-params": [-p for p in params],
    }
    taus = {name: rs.kendall_tau_b(values, truth) for name, values in rankings.items()}
    best = max(rankings, key=lambda name: -math.inf if math.isnan(taus[name]) else taus[name])
    return best, rankings[best]


def _subset_figures(
    archs, predictors, truth, info, baseline, top_fraction, bootstrap, seed
) -> Dict:
    """The figures of every predictor, FLOPs and params, and the seed noise, over `archs`."""
    mean = [float(np.mean(list(truth[a].values()))) for a in archs]
    flops = [info[a][0] for a in archs]
    params = [info[a][1] for a in archs]
    best, trivial = best_trivial_ranking(flops, params, mean)
    figures = {}
    for label, scores in predictors.items():
        baselines = {"FLOPs": flops, "best trivial": trivial}
        if baseline and label != baseline:
            baselines[baseline] = [predictors[baseline][a] for a in archs]
        figures[label] = predictor_figures(
            [scores[a] for a in archs], mean, top_fraction, bootstrap, seed, baselines=baselines
        )
    figures["rank by FLOPs"] = predictor_figures(flops, mean, top_fraction, bootstrap, seed)
    figures["rank by params"] = predictor_figures(params, mean, top_fraction, bootstrap, seed)
    noise = rs.seed_noise([truth[a] for a in archs], bootstrap, seed)
    noise["arch_effect"] = rs.arch_effect([truth[a] for a in archs], seed=seed)
    noise["arch_effect_seed_blocks"] = rs.arch_effect_seed_blocks(
        [truth[a] for a in archs], seed=seed
    )
    return {"n": len(archs), "predictors": figures, "noise": noise, "best_trivial": best}


def plot_compare(path: Path, predictors, archs, truth, info, band, summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(predictors) + ["rank by FLOPs"]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels), 4.6), dpi=100, squeeze=False
    )
    mean = np.array([np.mean(list(truth[a].values())) for a in archs])
    std = np.array(
        [np.std(list(truth[a].values()), ddof=1) if len(truth[a]) > 1 else 0.0 for a in archs]
    )
    inside = np.array([band[0] <= info[a][0] <= band[1] for a in archs], dtype=bool)
    for ax, label in zip(axes[0], panels):
        if label == "rank by FLOPs":
            x, xlabel = np.array([info[a][0] / 1e6 for a in archs]), "backbone MFLOPs"
        else:
            x, xlabel = np.array([predictors[label][a] for a in archs]), f"supernet score ({label})"
        if inside.any():
            ax.errorbar(
                x[inside],
                mean[inside],
                yerr=std[inside],
                fmt="o",
                color="tab:blue",
                capsize=3,
                label="inside the FLOPs band",
            )
        if (~inside).any():
            ax.errorbar(
                x[~inside],
                mean[~inside],
                yerr=std[~inside],
                fmt="o",
                mfc="none",
                color="tab:gray",
                capsize=3,
                label="outside the band",
            )
        taus = [summary["subsets"][s]["predictors"][label]["tau"] for s in ("all", "band")]
        ax.set_title(
            f"{label}\nKendall tau {fmt(taus[0])} (all), {fmt(taus[1])} (band)", fontsize=10
        )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("stand-alone score, mean ± std over seeds")
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    plt.close(fig)


def compare(
    *,
    supernet: Sequence[str],
    standalone: str,
    config: str,
    flops_min: Optional[float],
    flops_max: Optional[float],
    top_fraction: float,
    baseline: Optional[str],
    bootstrap: int,
    seed: int,
    output_dir: Optional[str],
) -> int:
    """The report of supernet score files `supernet` against stand-alone score file `standalone`:
    compare.md (printed), compare.json and compare.png in `output_dir` (default: the stand-alone file's
    folder). The FLOPs band: `flops_min` / `flops_max`, else search config `config`'s (0: none);
    `baseline`: a supernet protocol whose tau every other one's is compared with. Returns the exit status."""
    predictors, truth, info = load_compare_inputs(supernet, standalone)
    if baseline and baseline not in predictors:
        raise UserError(
            f"--baseline '{baseline}' is none of the supernet protocols {sorted(predictors)}"
        )
    archs = [a for a in truth if all(a in p for p in predictors.values())]
    if len(archs) < len(truth):
        log(
            f"{len(truth) - len(archs)} of the {len(truth)} stand-alone archs have no supernet score: left out"
        )
    if len(archs) < 2:
        raise UserError(f"{len(archs)} arch(s) with both scores: nothing to compare")
    cfg = get_detnas_cfg(config_file(config))
    lo = flops_min if flops_min is not None else float(cfg.DETNAS.SEARCH.FLOPS_MIN)
    hi = flops_max if flops_max is not None else float(cfg.DETNAS.SEARCH.FLOPS_MAX)
    band = (lo or 0.0, hi or float("inf"))
    subsets = {"all": archs, "band": [a for a in archs if band[0] <= info[a][0] <= band[1]]}
    seeds = sorted({s for a in archs for s in truth[a]})
    summary = {
        "supernet_files": list(supernet),
        "standalone_file": standalone,
        "flops_band": [band[0], band[1] if math.isfinite(band[1]) else None],
        "top_fraction": top_fraction,
        "bootstrap": {"samples": bootstrap, "seed": seed, "level": 0.95},
        "seeds": seeds,
        "subsets": {
            name: _subset_figures(
                sub, predictors, truth, info, baseline, top_fraction, bootstrap, seed
            )
            for name, sub in subsets.items()
        },
    }
    if band[0] > 0 and math.isfinite(band[1]):
        band_text = f"FLOPs in [{band[0] / 1e6:.2f}M, {band[1] / 1e6:.2f}M]"
    elif math.isfinite(band[1]):
        band_text = f"FLOPs <= {band[1] / 1e6:.2f}M"
    else:
        band_text = f"FLOPs >= {band[0] / 1e6:.2f}M"
    names = {"all": "all archs", "band": band_text}
    pct = f"top-{top_fraction:.0%}"
    rows, noise_rows, block_rows = [], [], []
    gain_columns = ["FLOPs", "best trivial"] + ([baseline] if baseline else [])
    for name, sub in summary["subsets"].items():
        for label, f in sub["predictors"].items():
            gains = [
                fmt_ci(f["tau_gain"][b]["value"], f["tau_gain"][b]["ci"])
                if b in f["tau_gain"]
                else ""
                for b in gain_columns
            ]
            rows.append(
                [
                    names[name],
                    label,
                    f["n"],
                    fmt_ci(f["tau"], f["tau_ci"]),
                    fmt_ci(f["rho"], f["rho_ci"]),
                    f"{f['top']['hits']}/{f['top']['k']}",
                ]
                + gains
            )
        nz = sub["noise"]
        pair, effect = nz["seed_pair"], nz["arch_effect"]
        noise_rows.append(
            [
                names[name],
                sub["n"],
                nz["archs_with_2_seeds"],
                f"{fmt(nz['std_mean'])} / {fmt(nz['std_max'])}",
                fmt(nz["between_arch_std"]),
                (
                    f"seeds {pair[0]} vs {pair[1]} ({nz['archs_in_pair']} archs): "
                    + fmt_ci(nz["tau_between_seeds"], nz["tau_between_seeds_ci"])
                )
                if pair
                else "n/a (one seed)",
                fmt(effect["arch_std"]),
                fmt(effect["icc"]),
                fmt(effect["reliability"]),
                fmt(effect["tau_ceiling"]),
                fmt(effect["seeds_for_tau_07"], 1),
                fmt(effect["p_value"], 4),
            ]
        )
        blocks = nz["arch_effect_seed_blocks"]
        block_rows.append(
            [
                names[name],
                blocks["archs"],
                " ".join(map(str, blocks["seeds"])) or "n/a",
                fmt(blocks["seed_block_std"]),
                fmt(blocks["seed_std"]),
                fmt(blocks["arch_std"]),
                fmt(blocks["icc"]),
                fmt(blocks["reliability"]),
                fmt(blocks["tau_ceiling"]),
                fmt(blocks["seeds_for_tau_07"], 1),
                fmt(blocks["p_value"], 4),
            ]
        )
    table = tabulate(
        rows,
        headers=[
            "archs",
            "predictor",
            "n",
            "Kendall tau-b [95% CI]",
            "Spearman rho [95% CI]",
            f"{pct} precision",
        ]
        + [f"tau - tau({b}) [95% CI]" for b in gain_columns],
        tablefmt="pipe",
        disable_numparse=True,
    )
    noise = tabulate(
        noise_rows,
        headers=[
            "archs",
            "n",
            "with >= 2 seeds",
            "seed std per arch (mean / max)",
            "std of arch means",
            "Kendall tau between seeds [95% CI]",
            "true arch std (est.)",
            "ICC",
            "reliability of the mean",
            "tau ceiling",
            "seeds for tau 0.7",
            "p (archs differ)",
        ],
        tablefmt="pipe",
        disable_numparse=True,
    )
    blocks = tabulate(
        block_rows,
        headers=[
            "archs",
            "n",
            "common seeds",
            "seed offset std (shared)",
            "seed std left",
            "true arch std (est.)",
            "ICC",
            "reliability of the mean",
            "tau ceiling",
            "seeds for tau 0.7",
            "p (archs differ)",
        ],
        tablefmt="pipe",
        disable_numparse=True,
    )
    per_arch = tabulate(
        [
            [
                arch_str(a),
                f"{info[a][0] / 1e6:.3f}",
                f"{info[a][1] / 1e6:.4f}",
                "yes" if a in subsets["band"] else "no",
            ]
            + [fmt(p[a], 3) for p in predictors.values()]
            + [
                f"{np.mean(list(truth[a].values())):.2f}"
                + (
                    f" ± {np.std(list(truth[a].values()), ddof=1):.2f}" if len(truth[a]) > 1 else ""
                ),
                " ".join(fmt(truth[a][s]) for s in sorted(truth[a])),
            ]
            for a in sorted(archs, key=lambda a: info[a][0])
        ],
        headers=["arch", "MFLOPs", "Mparams", "in band"]
        + [f"supernet ({p})" for p in predictors]
        + ["stand-alone mean ± std", "per seed"],
        tablefmt="pipe",
        disable_numparse=True,
    )
    text = (
        f"## Supernet ranking vs stand-alone training\n\n{table}\n\n"
        f"Predictors ranked against the stand-alone score averaged over seeds {seeds}. 95% intervals: "
        f"percentile bootstrap over archs ({bootstrap} resamples, seed {seed}; the same resamples "
        f"for every predictor, so tau - tau(...) is a paired difference). {pct} precision: how many of the "
        f"predictor's top {top_fraction:.0%} "
        f"(ceil, at least 1) are in the stand-alone top {top_fraction:.0%}. The best trivial ranking is "
        "FLOPs or params in either direction, whichever ranks best against the ground truth ("
        + ", ".join(f"{names[n]}: {sub['best_trivial']}" for n, sub in summary["subsets"].items())
        + "): a protocol is worth its cost only where its gain over it is above 0.\n\n"
        f"## Stand-alone seed noise\n\n{noise}\n\n"
        "The tau between two seeds is how well one training run ranks the archs as another does: a bound on "
        "what any predictor can reach against a single-seed ground truth (a mean over seeds is steadier). "
        "The last six columns are a one-way random-effects ANOVA over the archs with >= 2 seeds: the "
        "estimated std of the archs' true scores (free of seed noise), ICC (the share of one run's variance "
        "that is the arch's), the reliability r of an arch's mean over its seeds, the tau that a perfect "
        "predictor would reach against those means ((2 / pi) asin(sqrt(r)), normal scores), the seeds per "
        "arch whose mean would allow a tau of 0.7 (Spearman-Brown from the ICC; inf: the archs do not differ "
        "measurably), and a permutation test of whether the archs differ at all beyond seed noise.\n\n"
        f"{blocks}\n\nThe same with each seed as a block (two-way ANOVA over the seeds every arch has): a seed's "
        "offset shared by all archs (the same data order, say) moves every arch's mean alike and so no ranking; "
        "what is left is the arch x seed interaction. The permutation test shuffles archs within each seed.\n\n"
        f"## Archs\n\n{per_arch}\n"
    )
    out = Path(output_dir) if output_dir else Path(standalone).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(str(out / "compare.md"), text)
    summary["archs"] = [
        {
            "arch": list(a),
            "flops": info[a][0],
            "params": info[a][1],
            "in_band": a in subsets["band"],
            "supernet": {label: p[a] for label, p in predictors.items()},
            "standalone": {str(s): v for s, v in truth[a].items()},
        }
        for a in archs
    ]
    atomic_write(str(out / "compare.json"), json.dumps(json_safe(summary), indent=2) + "\n")
    plot_compare(out / "compare.png", predictors, archs, truth, info, band, summary)
    print(text)
    log(f"written: {out / 'compare.md'}, {out / 'compare.json'}, {out / 'compare.png'}")
    return 0
