"""Finalists: after the evolution, the DETNAS.SEARCH.FINALISTS.TOPK best candidates are scored again, more
carefully, so that the search does not crown the candidate one noisy score favoured (the winner's curse):
on the first FINALISTS.EVAL_IMAGES images of the evaluation split (0: all), on every supernet of
FINALISTS.WEIGHTS (several seeds, or the last snapshots of one run; empty: the search's), each with its own
BN recalibration. Scoring is the search's (scoring.py), spread over the processes in its DIST_MODE.

Records. One per (finalist, supernet), finalist by finalist: the score on the whole set and on each of
FINALISTS.BOOTSTRAP resamples of the images ("replicates": AP or top-1 recomputed exactly on the resampled
images, per_image.py; the same resamples for every finalist and supernet). They are kept in the search
state as they are scored (and written to finalists.jsonl), so a search stopped among its finalists
resumes where it was, with nothing scored twice; FINALISTS' settings are part of the resume fingerprint.

Intervals. A finalist's mean is the mean of its scores over the supernets. Its bootstrap replicate b is
the mean over a resample of the supernets (drawn with replacement, the same for every finalist; with one
supernet, that one) of its scores on image resample b; its interval is the percentile interval of the
replicates at FINALISTS.CONFIDENCE. The best finalist has the best mean (ties: the better search score);
another cannot be told apart from it when the percentile interval of the paired differences (best minus
it, replicate by replicate, on the same images and supernets) contains 0.

Choice. best_arch.yaml names the best finalist, or with FINALISTS.TIE_BREAK (a cost: flops, params,
latency_ms) the cheapest of the best and those that cannot be told apart from it (ties: the better mean):
the scores do not separate them, the cost does (as the one-standard-error rule picks the simplest model
within the noise of the best).
"""

import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
from tabulate import tabulate

from detnas_d2.search_space import arch_to_str

from .evolution import EvolutionSearch, top_candidates
from .settings import TIE_BREAKS, FinalistSettings

__all__ = [
    "FINALISTS_FILE",
    "Finalists",
    "best_group",
    "choose_finalist",
    "finalists_table",
    "summarize_finalists",
]

FINALISTS_FILE = "finalists.jsonl"
COSTS = tuple(k for k in TIE_BREAKS if k)  # what FINALISTS.TIE_BREAK may choose by

logger = logging.getLogger(__name__)


class Finalists:
    """Scores the finalists of `search` (rank 0), its records in `search.state.finalists`."""

    def __init__(self, search: EvolutionSearch, settings: FinalistSettings):
        self.search, self.settings = search, settings
        self.indices = top_candidates(search.history, settings.topk)
        self.plan = [
            (rank, index, s)
            for rank, index in enumerate(self.indices)
            for s in range(len(settings.weights))
        ]
        rank_of = {self._key(index, s): rank for rank, index, s in self.plan}
        kept = [
            r
            for r in search.state.finalists
            if (tuple(r["arch"]), r["supernet"], r["weights"]) in rank_of
        ]
        if len(kept) < len(
            search.state.finalists
        ):  # a resumed search with a larger budget found better ones
            logger.info(
                f"{len(search.state.finalists) - len(kept)} finalist record(s) of candidates no longer "
                "among the finalists dropped."
            )
            search.state.finalists = kept
        for r in kept:
            r["finalist"] = rank_of[tuple(r["arch"]), r["supernet"], r["weights"]]

    def _key(self, index: int, supernet: int):
        return tuple(self.search.history[index]["arch"]), supernet, self.settings.weights[supernet]

    @property
    def records(self) -> List[Dict]:
        return self.search.state.finalists

    def pending(self) -> List[tuple]:
        done = {(tuple(r["arch"]), r["supernet"], r["weights"]) for r in self.records}
        return [(rank, index, s) for rank, index, s in self.plan if self._key(index, s) not in done]

    def run(self, score_fn, chunk_size: int = 1, callbacks=()) -> List[Dict]:
        """Score the pending (finalist, supernet) pairs with `score_fn(archs, fraction, supernets, bootstrap)`
        (DistributedScoring.score), `chunk_size` at a time, then return `summary()`. callbacks: objects with
        optional `before_finalists(finalists)` and `after_finalist(finalists, record)` methods."""
        history, s = self.search.history, self.settings
        _call(callbacks, "before_finalists", self)
        pending = self.pending()
        for start in range(0, len(pending), chunk_size):
            chunk = pending[start : start + chunk_size]
            results = score_fn(
                [history[index]["arch"] for _, index, _ in chunk],
                1.0,
                [supernet for _, _, supernet in chunk],
                (s.bootstrap, s.seed),
            )
            for (rank, index, supernet), result in zip(chunk, results):
                record = {
                    "finalist": rank,
                    "candidate": index,
                    "arch": list(history[index]["arch"]),
                    "supernet": supernet,
                    "weights": s.weights[supernet],
                    "search_score": history[index]["score"],
                }
                record.update(result)
                record["score"] = float(record["score"])
                record["replicates"] = [float(v) for v in record["replicates"]]
                self.records.append(record)
                self.search.save()
                _call(callbacks, "after_finalist", self, record)
        return self.summary()

    def summary(self) -> List[Dict]:
        """One row per finalist (summarize_finalists, with the candidate's costs: flops, params and, when
        the search has a latency table, latency_ms), in search rank order."""
        by_key = {(tuple(r["arch"]), r["supernet"]): r for r in self.records}
        per_finalist = [
            [
                by_key[tuple(self.search.history[i]["arch"]), s]
                for s in range(len(self.settings.weights))
            ]
            for i in self.indices
        ]
        rows = summarize_finalists(per_finalist, self.settings.confidence, self.settings.seed)
        for row in rows:
            candidate = self.search.history[row["candidate"]]
            row.update({k: candidate[k] for k in COSTS if k in candidate})
        return rows


def _call(callbacks, name, *args):
    for cb in callbacks:
        fn = getattr(cb, name, None)
        if fn is not None:
            fn(*args)


def _interval(values: np.ndarray, confidence: float) -> List[float]:
    tail = 100.0 * (1.0 - confidence) / 2.0
    return [float(v) for v in np.percentile(values, [tail, 100.0 - tail])]


def summarize_finalists(
    per_finalist: Sequence[Sequence[Dict]], confidence: float, seed: int
) -> List[Dict]:
    """Rows {"finalist", "candidate", "arch", "search_score", "scores" (per supernet), "mean", "interval",
    "difference" (the best's mean less this one's), "difference_interval", "best", "tied"} from each
    finalist's records (one per supernet, in supernet order), as the module doc says."""
    scores = np.array(
        [[r["score"] for r in records] for records in per_finalist]
    )  # (finalists, supernets)
    replicates = np.array(
        [[r["replicates"] for r in records] for records in per_finalist]
    )  # (f, s, b)
    num_supernets, samples = replicates.shape[1], replicates.shape[2]
    if num_supernets > 1:
        drawn = np.random.default_rng([seed, 1]).integers(
            0, num_supernets, size=(samples, num_supernets)
        )
        replicates = replicates[:, drawn, np.arange(samples)[:, None]].mean(axis=2)  # (f, b)
    else:
        replicates = replicates[:, 0, :]
    means = scores.mean(axis=1)
    best = int(np.argmax(means))  # the first of equal means: the better search score
    rows = []
    for f, records in enumerate(per_finalist):
        first = records[0]
        diff = replicates[best] - replicates[f]
        rows.append(
            {
                "finalist": f,
                "candidate": first["candidate"],
                "arch": list(first["arch"]),
                "search_score": first["search_score"],
                "scores": [float(v) for v in scores[f]],
                "mean": float(means[f]),
                "interval": _interval(replicates[f], confidence),
                "difference": float(means[best] - means[f]),
                "difference_interval": _interval(diff, confidence),
                "best": f == best,
            }
        )
        rows[-1]["tied"] = f != best and rows[-1]["difference_interval"][0] <= 0.0
    return rows


def finalists_table(rows: List[Dict], confidence: float) -> str:
    """The finalists as a Markdown table (the search log), with their costs (Finalists.summary's rows)."""
    pct = f"{100 * confidence:g}%"
    latency = all("latency_ms" in r for r in rows)
    table = [
        (
            r["finalist"] + 1,
            r["candidate"],
            f"{r['search_score']:.3f}",
            f"{r['mean']:.3f}",
            "[{:.3f}, {:.3f}]".format(*r["interval"]),
            ""
            if r["best"]
            else "{:.3f} [{:.3f}, {:.3f}]".format(r["difference"], *r["difference_interval"]),
            ("best" if r["best"] else ("tied" if r["tied"] else ""))
            + (", chosen" if r.get("chosen") and not r["best"] else ""),
            f"{r['flops'] / 1e6:.2f}",
            f"{r['params'] / 1e6:.3f}",
            *([f"{r['latency_ms']:.2f}"] if latency else []),
            arch_to_str(r["arch"]),
        )
        for r in rows
    ]
    headers = [
        "finalist",
        "candidate",
        "search score",
        "mean",
        f"{pct} interval",
        f"best - it [{pct}]",
        "",
        "MFLOPs",
        "Mparams",
        *(["ms"] if latency else []),
        "arch",
    ]
    return tabulate(table, headers=headers, tablefmt="pipe")


def best_group(rows: List[Dict]) -> List[Dict]:
    """The best finalist and those that cannot be told apart from it, in search rank order."""
    return [r for r in rows if r["best"] or r["tied"]]


def choose_finalist(rows: List[Dict], tie_break: str = "") -> Optional[Dict]:
    """The row best_arch.yaml names, marked "chosen" (None: no finalists): the best mean's, or with
    `tie_break` (one of COSTS) the cheapest of it and those that cannot be told apart from it."""
    best = next((r for r in rows if r["best"]), None)
    chosen = best
    if best is not None and tie_break:
        chosen = min(best_group(rows), key=lambda r: (r[tie_break], -r["mean"]))
    for r in rows:
        r["chosen"] = r is chosen
    return chosen
