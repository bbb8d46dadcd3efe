"""What a search writes to OUTPUT_DIR (rank 0), as callbacks of `EvolutionSearch.run`.

- candidates.jsonl: one JSON line per scored candidate (rewritten from the state on resume, so it
  always matches search_state.json);
- progress with an ETA per candidate and the top-k table per generation, through the logger;
- TensorBoard scalars through Detectron2's EventStorage and TensorboardXWriter: search/score,
  search/flops per candidate (step: its index); search/best_score, search/generation_mean,
  search/generation_max, search/topk_mean, search/generation per generation (step: the number of
  candidates scored when it ended);
- search_scores.png: score against FLOPs coloured by generation, with the Pareto front;
- finalists.jsonl (with FINALISTS.TOPK): one JSON line per (finalist, supernet) scored (finalists.py),
  rewritten from the state on resume; the finalists' table through the logger;
- best_arch.yaml: the best arch in our arch file format, with its score, FLOPs and params: the search's
  best candidate, or with finalists the finalist of the best mean (its score: that mean), the finalists'
  table and those that cannot be told apart from it.
"""

import datetime
import json
import logging
import os
import time
from typing import Dict, List

from detectron2.utils.events import TensorboardXWriter, get_event_storage
from detectron2.utils.file_io import PathManager
from tabulate import tabulate

from detnas_d2.arch_io import save_arch
from detnas_d2.file_io import atomic_write
from detnas_d2.rank_stats import kendall_tau_b
from detnas_d2.search_space import SearchSpace, arch_to_str

from .finalists import FINALISTS_FILE, best_group, choose_finalist, finalists_table
from .racing import is_full

__all__ = ["SearchOutputs", "pareto_front", "topk_table", "plot_search"]

logger = logging.getLogger(__name__)

CANDIDATES_FILE = "candidates.jsonl"
PLOT_FILE = "search_scores.png"
BEST_ARCH_FILE = "best_arch.yaml"


def candidate_line(record: Dict, space: SearchSpace) -> str:
    line = dict(record)
    line["arch_str"] = arch_to_str(record["arch"])
    line["arch_names"] = [space.block_name(i, a) for i, a in enumerate(record["arch"])]
    return json.dumps(line)


def pareto_front(records: List[Dict]) -> List[Dict]:
    """Records not beaten by another of no more FLOPs and a higher score, by increasing FLOPs."""
    front, best = [], float("-inf")
    for r in sorted(records, key=lambda r: (r["flops"], -r["score"])):
        if r["score"] > best:
            front.append(r)
            best = r["score"]
    return front


def topk_table(records: List[Dict], indices: List[int]) -> str:
    rows = [
        (
            rank + 1,
            r["index"],
            r["generation"],
            f"{r['score']:.3f}",
            f"{r['flops'] / 1e6:.2f}",
            f"{r['params'] / 1e6:.3f}",
            arch_to_str(r["arch"]),
        )
        for rank, r in enumerate(records[i] for i in indices)
    ]
    headers = ["rank", "candidate", "generation", "score", "MFLOPs", "Mparams", "arch"]
    return tabulate(rows, headers=headers, tablefmt="pipe")


def plot_search(records: List[Dict], path: str, title: str = ""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    raced_out = [r for r in records if not is_full(r)]
    if raced_out:
        ax.scatter(
            [r["flops"] / 1e6 for r in raced_out],
            [r["score"] for r in raced_out],
            marker="x",
            s=10,
            color="0.6",
            label="raced out (slice score)",
        )
    records = [r for r in records if is_full(r)]
    flops = [r["flops"] / 1e6 for r in records]
    scores = [r["score"] for r in records]
    gens = [r["generation"] for r in records]
    points = ax.scatter(flops, scores, c=gens, cmap="viridis", s=14, alpha=0.8)
    fig.colorbar(points, ax=ax, label="generation")
    front = pareto_front(records)
    ax.step(
        [r["flops"] / 1e6 for r in front],
        [r["score"] for r in front],
        where="post",
        color="tab:red",
        linewidth=1.2,
        label="Pareto front",
    )
    best = max(records, key=lambda r: r["score"])
    ax.scatter(
        [best["flops"] / 1e6], [best["score"]], marker="*", s=160, color="tab:red", label="best"
    )
    ax.set_xlabel("backbone MFLOPs")
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with PathManager.open(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


class SearchOutputs:
    """Callbacks writing the outputs above. Use inside an EventStorage."""

    def __init__(self, output_dir: str, space, fitness: str, budget: int, history: List[Dict]):
        self.output_dir = output_dir
        self.space = space
        self.fitness = fitness
        self.budget = budget
        PathManager.mkdirs(output_dir)
        self._candidates_path = os.path.join(output_dir, CANDIDATES_FILE)
        atomic_write(
            self._candidates_path, "".join(candidate_line(r, self.space) + "\n" for r in history)
        )
        self._writer = TensorboardXWriter(output_dir)
        self._start = time.perf_counter()
        self._scored_here = 0

    def after_candidate(self, search, record):
        with PathManager.open(self._candidates_path, "a") as f:
            f.write(candidate_line(record, self.space) + "\n")
        storage = get_event_storage()
        storage.iter = record["index"]
        if is_full(record):
            storage.put_scalar("search/score", record["score"], smoothing_hint=False)
        storage.put_scalar("search/flops", record["flops"], smoothing_hint=False)
        self._writer.write()
        self._scored_here += 1
        done = len(search.history)
        per_candidate = (time.perf_counter() - self._start) / self._scored_here
        eta = datetime.timedelta(seconds=int(per_candidate * max(self.budget - done, 0)))
        timings = ", ".join(
            f"{k[len('seconds_') :]} {v:.2f}s"
            for k, v in record.items()
            if k.startswith("seconds_")
        )
        logger.info(
            f"[generation {record['generation']}] candidate {record['index']} ({done}/{self.budget} scored; "
            f"{record['origin']}, {record['flops'] / 1e6:.1f} MFLOPs): {self.fitness} {record['score']:.3f}"
            f"{'' if is_full(record) else ' on a slice (raced out)'} "
            f"({timings}); best {search.best()['score']:.3f}; eta {eta}"
        )

    def after_generation(self, search, generation):
        history = search.history
        records = [r for r in history if r["generation"] == generation]
        scores = [
            r["score"] for r in records if is_full(r)
        ]  # raced-out slice scores are not comparable
        topk = search.state.topk
        storage = get_event_storage()
        # Step = candidates scored so far; written with the next candidate's scalars (or at the end),
        # since the writer only writes steps after the last one written.
        storage.iter = len(history)
        storage.put_scalar("search/best_score", history[topk[0]]["score"], smoothing_hint=False)
        if scores:
            storage.put_scalar(
                "search/generation_mean", sum(scores) / len(scores), smoothing_hint=False
            )
            storage.put_scalar("search/generation_max", max(scores), smoothing_hint=False)
        storage.put_scalar(
            "search/topk_mean",
            sum(history[i]["score"] for i in topk) / len(topk),
            smoothing_hint=False,
        )
        storage.put_scalar("search/generation", generation, smoothing_hint=False)
        screened = [r for r in records if "predicted" in r and is_full(r)]
        if len(screened) >= 2:
            tau = kendall_tau_b([r["predicted"] for r in screened], [r["score"] for r in screened])
            storage.put_scalar("search/predictor_tau", tau, smoothing_hint=False)
            logger.info(
                f"Generation {generation}: predictor Kendall tau {tau:.3f} on its {len(screened)} candidates"
            )
        raced = (
            f", {len(records) - len(scores)} raced out on a slice"
            if len(scores) < len(records)
            else ""
        )
        logger.info(
            f"Generation {generation} done ({len(records)} candidates{raced}, {len(history)} in all); "
            f"top {len(topk)}:\n" + topk_table(history, topk)
        )
        self.plot(search)

    def plot(self, search):
        plot_search(
            search.history,
            os.path.join(self.output_dir, PLOT_FILE),
            title=f"{self.fitness} of {len(search.history)} candidates ({self.space.name} space)",
        )

    # ---- finalists ------------------------------------------------------------------------------
    def before_finalists(self, finalists):
        path = os.path.join(self.output_dir, FINALISTS_FILE)
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in finalists.records))
        s = finalists.settings
        logger.info(
            f"Finalists: the {len(finalists.indices)} best candidates, each on {len(s.weights)} supernet(s) "
            f"({', '.join(s.weights)}), {'all' if not s.eval_images else s.eval_images} evaluation images, "
            f"{s.bootstrap} bootstrap resamples; {len(finalists.pending())} of {len(finalists.plan)} to score."
        )

    def after_finalist(self, finalists, record):
        with PathManager.open(os.path.join(self.output_dir, FINALISTS_FILE), "a") as f:
            f.write(json.dumps(record) + "\n")
        logger.info(
            f"Finalist {record['finalist'] + 1} (candidate {record['candidate']}) on supernet {record['supernet']}: "
            f"{self.fitness} {record['score']:.3f} (search score {record['search_score']:.3f}); "
            f"{len(finalists.records)}/{len(finalists.plan)} scored"
        )

    def finish(self, search, finalists=None, **metadata) -> Dict:
        """Write best_arch.yaml and the final plot; returns the best record (with finalists, the best
        finalist's, its row under "finalist"). `finalists`: the finished `Finalists`, if any."""
        best = search.best()
        score = best["score"]
        if finalists is not None:
            rows = finalists.summary()
            tie_break = finalists.settings.tie_break
            row = choose_finalist(rows, tie_break)
            best = dict(search.history[row["candidate"]], finalist=row)
            score = row["mean"]
            logger.info(
                f"Finalists ({self.fitness} on {len(finalists.settings.weights)} supernet(s)"
                + (
                    f"; chosen: the fewest {tie_break} of the best and its ties"
                    if tie_break
                    else ""
                )
                + "):\n"
                + finalists_table(rows, finalists.settings.confidence)
            )
            if tie_break:
                metadata["tie_break"] = tie_break
            metadata.update(
                search_score=best["score"],
                finalist_interval=row["interval"],
                indistinguishable=[
                    arch_to_str(r["arch"]) for r in best_group(rows) if r is not row
                ],
                finalists=[
                    {
                        "candidate": r["candidate"],
                        "arch": arch_to_str(r["arch"]),
                        "search_score": r["search_score"],
                        "mean": r["mean"],
                        "interval": r["interval"],
                        "tied": r["tied"],
                        **({"best": r["best"], tie_break: r[tie_break]} if tie_break else {}),
                    }
                    for r in rows
                ],
            )
        scores = {r["score"] for r in search.history if r.get("score") is not None}
        if len(search.history) > 1 and len(scores) == 1:
            # Nothing was ranked (e.g. a supernet trained a few iterations detects nothing): say so
            # rather than hand the first candidate on as a searched arch.
            metadata["ranking"] = f"none: all {len(search.history)} candidates scored {score:.3f}"
            logger.warning(
                f"every one of the {len(search.history)} candidates scored {score:.3f} "
                f"{self.fitness}: the supernet does not tell these archs apart, so {BEST_ARCH_FILE} "
                "is the first candidate, not a searched arch; train the supernet longer or check "
                "MODEL.WEIGHTS"
            )
        path = os.path.join(self.output_dir, BEST_ARCH_FILE)
        if "latency_ms" in best:
            metadata["latency_ms"] = best["latency_ms"]
        save_arch(
            path,
            best["arch"],
            self.space,
            score=score,
            fitness=self.fitness,
            flops=best["flops"],
            params=best["params"],
            generation=best["generation"],
            candidate=best["index"],
            candidates_scored=len(search.history),
            **metadata,
        )
        self.plot(search)
        self._writer.write()
        self._writer.close()
        logger.info(
            f"Search done: {len(search.history)} candidates. Best {self.fitness} {score:.3f} "
            f"({best['flops'] / 1e6:.2f} MFLOPs, {best['params'] / 1e6:.3f} M params): "
            f"{arch_to_str(best['arch'])} -> {path}"
        )
        return best
