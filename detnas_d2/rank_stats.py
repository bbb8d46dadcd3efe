"""Rank statistics for auditing a supernet's ranking of archs (tools/rank_audit.py), in plain numpy.

- `kendall_tau_b`: Kendall's tau-b, which corrects for ties in either ranking;
- `spearman_rho`: Pearson correlation of the average ranks (ties share their mean rank);
- `bootstrap_ci`: percentile interval of any paired statistic over archs resampled with replacement;
- `top_k_overlap`: how many of one ranking's top fraction are in the other's;
- `seed_noise`: how much the ground truth itself moves between training seeds;
- `arch_effect`: do the archs differ beyond seed noise at all (one-way random-effects ANOVA, permutation p);
- `arch_effect_seed_blocks`: the same with each training seed as a block shared by all archs (two-way ANOVA):
  a seed's offset common to every arch (same data order, say) moves no ranking of seed means;
- `seeds_needed`: how many seeds per arch a ground truth of that ICC needs to allow a given tau;
- `permutation_test`: is one arch's mean score over seeds higher than another's beyond seed noise;
- `paired_permutation_test`: the same with the runs of one seed paired (sign flips of their differences).

A statistic that is undefined (fewer than two archs, or one ranking constant) is NaN.
"""

import math
from itertools import combinations, permutations, product
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "arch_effect",
    "arch_effect_seed_blocks",
    "average_ranks",
    "bootstrap_ci",
    "kendall_tau_b",
    "paired_permutation_test",
    "permutation_test",
    "seed_noise",
    "seeds_needed",
    "spearman_rho",
    "top_k",
    "top_k_overlap",
]


def _pair(x: Sequence[float], y: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(
            f"expected two 1-d sequences of one length, got shapes {x.shape} and {y.shape}"
        )
    if np.isnan(x).any() or np.isnan(y).any():
        raise ValueError("NaN in the values to rank: drop those archs first")
    return x, y


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """(concordant - discordant) / sqrt((n0 - ties_x) * (n0 - ties_y)) over the n0 = n(n-1)/2 pairs;
    a pair tied in x (or y) counts in neither the numerator nor x's (or y's) factor."""
    x, y = _pair(x, y)
    if len(x) < 2:
        return float("nan")
    iu = np.triu_indices(len(x), k=1)
    sx = np.sign(x[:, None] - x[None, :])[iu]
    sy = np.sign(y[:, None] - y[None, :])[iu]
    untied_x, untied_y = np.count_nonzero(sx), np.count_nonzero(sy)
    if untied_x == 0 or untied_y == 0:
        return float("nan")
    return float(np.sum(sx * sy) / math.sqrt(untied_x * untied_y))


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of `x` (ascending); tied values share the mean of their ranks."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0  # mean of ranks start+1 .. end
            start = end
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of the average ranks of x and y."""
    x, y = _pair(x, y)
    if len(x) < 2:
        return float("nan")
    rx, ry = average_ranks(x), average_ranks(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float(np.sum(dx * dx)) * float(np.sum(dy * dy)))
    return float(np.sum(dx * dy) / denom) if denom > 0 else float("nan")


def bootstrap_ci(
    statistic: Callable[..., float],
    x: Sequence[float],
    y: Sequence[float],
    *more: Sequence[float],
    samples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Dict[str, float]:
    """Percentile bootstrap interval of `statistic(x, y, *more)`: the archs (the rows of x, y, ...) are
    resampled with replacement `samples` times with numpy's generator seeded by `seed`, so calls with the
    same seed and number of archs draw the same resamples (paired comparisons of predictors). Resamples
    where the statistic is undefined (e.g. every row the same arch) are left out; `valid` says how many
    counted. Returns {"low", "high", "valid"} (NaN bounds when none counted)."""
    x, y = _pair(x, y)
    more = [_pair(x, m)[1] for m in more]
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    rng = np.random.default_rng(seed)
    n = len(x)
    values = np.full(samples, np.nan)
    for b in range(samples):
        if n:
            idx = rng.integers(0, n, size=n)
            values[b] = statistic(x[idx], y[idx], *(m[idx] for m in more))
    values = values[~np.isnan(values)]
    if not len(values):
        return {"low": float("nan"), "high": float("nan"), "valid": 0}
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return {"low": float(low), "high": float(high), "valid": int(len(values))}


def top_k(values: Sequence[float], fraction: float = 0.2) -> List[int]:
    """Indices of the ceil(fraction * n) (at least 1) highest values, best first; equal values keep their
    input order."""
    values = np.asarray(values, dtype=float)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    k = max(1, math.ceil(fraction * len(values) - 1e-9)) if len(values) else 0
    return [int(i) for i in np.argsort(-values, kind="stable")[:k]]


def top_k_overlap(
    predicted: Sequence[float], truth: Sequence[float], fraction: float = 0.2
) -> Dict[str, float]:
    """How many of the `predicted` top fraction are in the `truth` top fraction:
    {"hits", "k", "precision" = hits / k}."""
    predicted, truth = _pair(predicted, truth)
    top_pred, top_true = top_k(predicted, fraction), top_k(truth, fraction)
    hits = len(set(top_pred) & set(top_true))
    k = len(top_pred)
    return {"hits": hits, "k": k, "precision": hits / k if k else float("nan")}


def seed_noise(
    scores: Sequence[Dict[int, float]],
    bootstrap_samples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    seed_pair: Optional[Tuple[int, int]] = None,
) -> Dict:
    """The ground truth's own noise. `scores`: per arch, {training seed: score}.

    - per-arch sample std across seeds (archs with >= 2 seeds): mean, median and max;
    - the spread of the per-arch means (std across archs), to set the std against;
    - Kendall tau between the rankings of two seeds (`seed_pair`, default the two lowest seeds found in
      most archs) over the archs that have both, with its bootstrap interval: how well one training
      run ranks the archs as another does, an estimate of how much tau a single-seed ground truth allows.
    """
    stds = [float(np.std(list(s.values()), ddof=1)) for s in scores if len(s) >= 2]
    means = [float(np.mean(list(s.values()))) for s in scores if s]
    out = {
        "archs_with_2_seeds": len(stds),
        "std_mean": float(np.mean(stds)) if stds else float("nan"),
        "std_median": float(np.median(stds)) if stds else float("nan"),
        "std_max": float(np.max(stds)) if stds else float("nan"),
        "between_arch_std": float(np.std(means, ddof=1)) if len(means) >= 2 else float("nan"),
        "seed_pair": None,
        "tau_between_seeds": float("nan"),
        "tau_between_seeds_ci": {"low": float("nan"), "high": float("nan"), "valid": 0},
        "archs_in_pair": 0,
    }
    if seed_pair is None:
        counts: Dict[int, int] = {}
        for s in scores:
            for k in s:
                counts[k] = counts.get(k, 0) + 1
        common = sorted(counts, key=lambda k: (-counts[k], k))[:2]
        seed_pair = tuple(sorted(common)) if len(common) == 2 else None
    if seed_pair is not None:
        a, b = seed_pair
        both = [(s[a], s[b]) for s in scores if a in s and b in s]
        out["seed_pair"] = [a, b]
        out["archs_in_pair"] = len(both)
        if len(both) >= 2:
            xa, xb = np.array([p[0] for p in both]), np.array([p[1] for p in both])
            out["tau_between_seeds"] = kendall_tau_b(xa, xb)
            out["tau_between_seeds_ci"] = bootstrap_ci(
                kendall_tau_b, xa, xb, samples=bootstrap_samples, seed=seed, level=level
            )
    return out


def tau_ceiling(reliability: float) -> float:
    """The Kendall tau that scores of this reliability reach against the exact true scores they measure:
    (2 / pi) asin(sqrt(r)), their Pearson correlation being sqrt(r) (normal scores); 0 for r <= 0."""
    return 2 / math.pi * math.asin(math.sqrt(max(0.0, reliability)))


def seeds_needed(icc: float, tau: float = 0.7) -> float:
    """Seeds per arch whose mean scores would let a perfect predictor reach Kendall `tau` against them (the
    inverse of the tau ceiling: reliability r = sin(pi tau / 2)^2, then Spearman-Brown: n = r (1 - icc) /
    ((1 - r) icc)); inf when the ICC is <= 0 (no number of seeds separates archs that do not differ)."""
    if not 0 < tau < 1:
        raise ValueError(f"tau must be in (0, 1), got {tau}")
    if math.isnan(icc):
        return float("nan")
    if icc <= 0:
        return float("inf")
    r = math.sin(math.pi * tau / 2) ** 2
    return r * (1 - icc) / ((1 - r) * icc)


def _variance_shares(out: Dict, between: float, noise: float, n: float):
    """ICC, reliability of an n-seed mean, its tau ceiling, the seeds a tau of 0.7 needs (`seeds_for_tau_07`,
    the ranking audit's target agreement) and F, from the arch and noise mean squares."""
    if between + (n - 1) * noise > 0:
        out["icc"] = (between - noise) / (between + (n - 1) * noise)
        out["seeds_for_tau_07"] = seeds_needed(out["icc"])
    if between > 0:
        out["reliability"] = (between - noise) / between
        out["tau_ceiling"] = tau_ceiling(out["reliability"])
    if noise > 0:
        out["f"] = between / noise


# The figures both ANOVAs give (`_variance_shares` and the permutation test), NaN until measured.
_SHARES = ("icc", "reliability", "tau_ceiling", "seeds_for_tau_07", "f", "p_value")


def _unmeasured(*keys: str) -> Dict[str, float]:
    return {k: float("nan") for k in keys}


def arch_effect(scores: Sequence[Dict[int, float]], samples: int = 10_000, seed: int = 0) -> Dict:
    """How much of the ground truth is the arch's and how much the training seed's: a one-way random-effects
    ANOVA over the archs with >= 2 seeds (`scores`: per arch, {training seed: score}).

    - `seed_std`: the pooled within-arch std (sqrt MSW); `arch_std`: the estimated std of the archs' true
      (infinitely-many-seed) scores, sqrt(max(0, (MSB - MSW) / n0)), n0 the ANOVA's mean group size;
    - `icc`: ICC(1), the share of one run's variance that is the arch's; `reliability`: (MSB - MSW) / MSB,
      that of an arch's mean over n0 seeds (Spearman-Brown); both can fall below 0 when the archs' means
      spread less than seed noise alone would make them;
    - `tau_ceiling`: the Kendall tau a perfect predictor of the true scores would reach against those means,
      (2 / pi) asin(sqrt(reliability)) (their Pearson correlation is sqrt(reliability); normal scores);
      `seeds_for_tau_07`: the seeds per arch a ceiling of 0.7 needs (`seeds_needed(icc)`);
    - `p_value`: permutation test of F = MSB / MSW (scores relabelled across archs, group sizes kept;
      `samples` random relabellings plus the observed one): the chance of archs this different if the arch
      did not matter.
    """
    groups = [np.asarray(list(s.values()), dtype=float) for s in scores if len(s) >= 2]
    out = {
        "archs": len(groups),
        "runs": int(sum(len(g) for g in groups)),
        **_unmeasured("n0", "seed_std", "arch_std", *_SHARES),
    }
    if len(groups) < 2:
        return out
    sizes = np.array([len(g) for g in groups])
    pooled, k, total = np.concatenate(groups), len(groups), int(sizes.sum())
    bounds = np.cumsum(sizes)[:-1]

    def mean_squares(values: np.ndarray) -> Tuple[float, float]:
        parts = np.split(values, bounds)
        means = np.array([p.mean() for p in parts])
        between = float(np.sum(sizes * (means - values.mean()) ** 2)) / (k - 1)
        within = float(sum(np.sum((p - m) ** 2) for p, m in zip(parts, means))) / (total - k)
        return between, within

    msb, msw = mean_squares(pooled)
    n0 = (total - float(np.sum(sizes**2)) / total) / (k - 1)
    out.update(n0=n0, seed_std=math.sqrt(msw), arch_std=math.sqrt(max(0.0, (msb - msw) / n0)))
    _variance_shares(out, msb, msw, n0)
    if msw > 0:
        rng = np.random.default_rng(seed)
        eps = 1e-12 * out["f"]
        hits = 0
        for _ in range(samples):
            b, w = mean_squares(pooled[rng.permutation(total)])
            hits += w == 0 or b / w >= out["f"] - eps
        out["p_value"] = (hits + 1) / (samples + 1)
    return out


def arch_effect_seed_blocks(
    scores: Sequence[Dict[int, float]], samples: int = 10_000, seed: int = 0
) -> Dict:
    """`arch_effect` for archs trained with the same seeds: a two-way ANOVA (arch x seed, one run per cell) over
    the seeds that every arch with >= 2 seeds has. A seed's offset shared by all archs is a block, not noise:
    it moves every arch's seed mean alike and so no ranking of them.

    - `seeds`: the common seeds; `seed_block_std`: the estimated std of the seeds' shared offsets,
      sqrt(max(0, (MS_seed - MS_res) / archs)); `seed_std`: what is left of seed noise (sqrt MS_res, the
      arch x seed interaction); `arch_std`: sqrt(max(0, (MS_arch - MS_res) / seeds));
    - `icc`, `reliability` ((MS_arch - MS_res) / MS_arch, that of the seed means for ranking), `tau_ceiling`,
      `seeds_for_tau_07` and `f` (MS_arch / MS_res) as in `arch_effect`;
    - `p_value`: permutation test of F with the scores permuted across archs within each seed (every
      arrangement when there are at most `samples`, else `samples` random ones plus the observed).
    """
    groups = [s for s in scores if len(s) >= 2]
    common = sorted(set.intersection(*(set(s) for s in groups))) if groups else []
    out = {
        "archs": len(groups),
        "seeds": common,
        **_unmeasured("seed_block_std", "seed_std", "arch_std", *_SHARES),
    }
    if len(groups) < 2 or len(common) < 2:
        return out
    x = np.array([[s[k] for k in common] for s in groups], dtype=float)
    a, b = x.shape

    def mean_squares(values: np.ndarray) -> Tuple[float, float, float]:
        arch_means, seed_means, mean = values.mean(1), values.mean(0), values.mean()
        residual = values - arch_means[:, None] - seed_means[None, :] + mean
        return (
            b * float(np.sum((arch_means - mean) ** 2)) / (a - 1),
            a * float(np.sum((seed_means - mean) ** 2)) / (b - 1),
            float(np.sum(residual**2)) / ((a - 1) * (b - 1)),
        )

    msa, msb, mse = mean_squares(x)
    out.update(
        seed_block_std=math.sqrt(max(0.0, (msb - mse) / a)),
        seed_std=math.sqrt(mse),
        arch_std=math.sqrt(max(0.0, (msa - mse) / b)),
    )
    _variance_shares(out, msa, mse, b)
    if mse > 0:
        eps = 1e-12 * out["f"]

        def at_least(
            orders,
        ) -> bool:  # F of the scores with seeds 1.. reordered across archs (seed 0 kept)
            values = np.column_stack([x[:, 0]] + [x[list(o), j + 1] for j, o in enumerate(orders)])
            arch_ms, _, res_ms = mean_squares(values)
            return res_ms == 0 or arch_ms / res_ms >= out["f"] - eps

        if math.factorial(a) ** (b - 1) <= samples:
            hits = [at_least(orders) for orders in product(permutations(range(a)), repeat=b - 1)]
            out["p_value"] = sum(hits) / len(hits)
        else:
            rng = np.random.default_rng(seed)
            hits = sum(at_least([rng.permutation(a) for _ in range(b - 1)]) for _ in range(samples))
            out["p_value"] = (hits + 1) / (samples + 1)
    return out


def _tail_p(
    diffs: np.ndarray, observed: float, alternative: str, extra: int, scale: float
) -> float:
    """The fraction of `diffs` (plus `extra` counts of the observed one) at least as extreme as `observed`."""
    eps = 1e-12 * max(1.0, scale)
    if alternative == "greater":
        hits = np.sum(diffs >= observed - eps)
    elif alternative == "less":
        hits = np.sum(diffs <= observed + eps)
    else:
        hits = np.sum(np.abs(diffs) >= abs(observed) - eps)
    return float((hits + extra) / (len(diffs) + extra))


def _check_alternative(alternative: str):
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(
            f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}"
        )


def permutation_test(
    a: Sequence[float],
    b: Sequence[float],
    alternative: str = "greater",
    max_exact: int = 200_000,
    samples: int = 100_000,
    seed: int = 0,
) -> float:
    """p-value of a two-sample permutation test of mean(a) - mean(b) (e.g. one arch's scores over
    training seeds against another's): the fraction of the relabellings of the pooled scores into groups
    of len(a) and len(b) whose difference is at least the observed one ("greater"), at most it ("less"),
    or at least as far from 0 ("two-sided"). Exact (every relabelling) when there are at most `max_exact`
    of them, else `samples` random ones (seeded) plus the observed one. No normality assumed."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or b.ndim != 1 or len(a) < 1 or len(b) < 1:
        raise ValueError(f"expected two non-empty 1-d samples, got shapes {a.shape} and {b.shape}")
    _check_alternative(alternative)
    pooled, n = np.concatenate([a, b]), len(a)
    total = pooled.sum()

    def differences(first_sums: np.ndarray) -> np.ndarray:
        return first_sums / n - (total - first_sums) / len(b)

    observed = differences(np.array([a.sum()]))[0]
    if math.comb(len(pooled), n) <= max_exact:
        sums = np.array([pooled[list(idx)].sum() for idx in combinations(range(len(pooled)), n)])
        diffs, extra = differences(sums), 0
    else:
        rng = np.random.default_rng(seed)
        sums = np.array([pooled[rng.permutation(len(pooled))[:n]].sum() for _ in range(samples)])
        diffs, extra = differences(sums), 1  # the observed labelling counts once (Phipson & Smyth)
    return _tail_p(diffs, observed, alternative, extra, float(np.abs(pooled).max()))


def paired_permutation_test(
    a: Sequence[float],
    b: Sequence[float],
    alternative: str = "greater",
    max_exact: int = 2**16,
    samples: int = 100_000,
    seed: int = 0,
) -> float:
    """p-value of a paired permutation test of mean(a - b), `a[i]` and `b[i]` being runs of one training
    seed (e.g. two archs trained with MODEL.DETNAS.PAIRED_INIT, which share that seed's initial weights):
    under "no difference" each pair's difference is as likely with either sign, so the p-value is the
    fraction of the 2^n sign flips whose mean is at least the observed one ("greater"), at most it ("less"),
    or at least as far from 0 ("two-sided"). Exact up to `max_exact` flips, else `samples` random ones
    (seeded) plus the observed one. With n pairs the smallest possible p is 1/2^n."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 1:
        raise ValueError(
            f"expected two non-empty 1-d samples of one length (paired by seed), got shapes "
            f"{a.shape} and {b.shape}"
        )
    _check_alternative(alternative)
    d = a - b
    if 2 ** len(d) <= max_exact:
        signs, extra = np.array(list(product((1.0, -1.0), repeat=len(d)))), 0
    else:
        signs, extra = np.random.default_rng(seed).choice((1.0, -1.0), size=(samples, len(d))), 1
    return _tail_p(signs @ d / len(d), float(d.mean()), alternative, extra, float(np.abs(d).max()))
