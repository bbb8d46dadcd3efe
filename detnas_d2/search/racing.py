"""Racing: score a generation's candidates on a first slice of the evaluation images and spend more images
only on those that can still enter the top-k (successive halving with a safety margin).

DETNAS.SEARCH.RACING.SLICES are the fractions of the evaluation images of the first rungs; the last rung is
the whole set. After rung r a candidate goes on unless at least TOPK other candidates beat its slice score
by more than the rung's margin; the others are "raced out": their record keeps the slice score, marked
`"full": false`, and never enters the top-k. The competitors are this generation's candidates at rung r and
every earlier candidate that was scored on slice r (their slice scores are in their records).

Why no top-k arch is lost: if every slice score lies within `d` of the candidate's full score, a candidate
beaten by more than 2d on the slice is beaten on the full set too, so a candidate raced out has TOPK better
ones and was not in the top-k. The margin of rung r is max(RACING.MARGIN, 2 x the largest |slice - full|
difference of the candidates fully scored so far): the search measures its own `d`.
"""
from typing import Dict, List, Sequence

__all__ = ["SLICE_SCORES", "is_full", "rung_margin", "promoted"]

SLICE_SCORES = "slice_scores"  # record key: the scores on the slices the candidate was raced on


def is_full(record: Dict) -> bool:
    """Whether a record's score is on the whole evaluation set (records without racing are)."""
    return record.get("full", True)


def rung_margin(history: Sequence[Dict], rung: int, base: float) -> float:
    """The safety margin of `rung`: at least `base`, and twice the largest slice error seen so far."""
    errors = [
        abs(r[SLICE_SCORES][rung] - r["score"])
        for r in history if is_full(r) and len(r.get(SLICE_SCORES, ())) > rung
    ]
    return max([base] + [2.0 * e for e in errors])


def promoted(scores: Sequence[float], history: Sequence[Dict], rung: int, topk: int, margin: float) -> List[bool]:
    """Which candidates (their slice scores at `rung`, `scores`) go on to the next rung: those that fewer
    than `topk` competitors (the others and the earlier candidates scored on this slice) beat by more than
    `margin`."""
    earlier = [r[SLICE_SCORES][rung] for r in history if len(r.get(SLICE_SCORES, ())) > rung]
    pool = sorted(list(scores) + earlier, reverse=True)
    if len(pool) <= topk:
        return [True] * len(scores)
    threshold = pool[topk - 1] - margin  # the k-th best slice score, less the margin
    return [s >= threshold for s in scores]
