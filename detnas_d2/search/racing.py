"""Racing: score a generation's candidates on a first slice of the evaluation images and spend more images
only on those that can still enter the top-k (successive halving with a safety margin).

DETNAS.SEARCH.RACING.SLICES are the fractions of the evaluation images of the first rungs; the last rung is
the whole set. After rung r a candidate goes on unless at least TOPK other candidates beat its slice score
by more than the rung's margin; the others are "raced out": their record keeps the slice score, marked
`"full": false`, and never enters the top-k. The competitors are this generation's candidates at rung r and
every earlier candidate that was scored on slice r (their slice scores are in their records).

Why no top-k arch is lost. Suppose every candidate's slice score s_i lies within d of its full score f_i
plus an offset c common to all candidates (a slice easier or harder than the whole set for everyone):
|s_i - (f_i + c)| <= d. If s_j - s_i > 2d then f_j + c + d >= s_j > s_i + 2d >= f_i + c + d, so f_j > f_i:
c cancels, and a candidate beaten by more than 2d on the slice by TOPK others is beaten by them on the full
set, so it was not in the top-k. The search measures d on the candidates fully scored so far: with
d_i = s_i - f_i, the best common offset is the midrange of the d_i and the margin of rung r is
max(RACING.MARGIN, max d_i - min d_i) (MARGIN_MODE "offset", the default). MARGIN_MODE "absolute" takes
c = 0: max(RACING.MARGIN, 2 max |d_i|), never smaller, and larger by twice the offset, which moves no
ranking but made a biased slice race almost every candidate on.
"""

from typing import Dict, List, Sequence

__all__ = ["MARGIN_MODES", "SLICE_SCORES", "is_full", "rung_margin", "promoted"]

SLICE_SCORES = "slice_scores"  # record key: the scores on the slices the candidate was raced on
MARGIN_MODES = ("offset", "absolute")


def is_full(record: Dict) -> bool:
    """Whether a record's score is on the whole evaluation set (records without racing are)."""
    return record.get("full", True)


def rung_margin(history: Sequence[Dict], rung: int, base: float, mode: str = "offset") -> float:
    """The safety margin of `rung`: at least `base`, and twice the largest slice error seen so far, the
    error measured from the candidates' common offset ("offset") or from 0 ("absolute")."""
    errors = [
        r[SLICE_SCORES][rung] - r["score"]
        for r in history
        if is_full(r) and len(r.get(SLICE_SCORES, ())) > rung
    ]
    if not errors:
        return base
    if mode == "absolute":
        return max(base, 2.0 * max(abs(e) for e in errors))
    return max(base, max(errors) - min(errors))


def promoted(
    scores: Sequence[float], history: Sequence[Dict], rung: int, topk: int, margin: float
) -> List[bool]:
    """Which candidates (their slice scores at `rung`, `scores`) go on to the next rung: those that fewer
    than `topk` competitors (the others and the earlier candidates scored on this slice) beat by more than
    `margin`."""
    earlier = [r[SLICE_SCORES][rung] for r in history if len(r.get(SLICE_SCORES, ())) > rung]
    pool = sorted(list(scores) + earlier, reverse=True)
    if len(pool) <= topk:
        return [True] * len(scores)
    threshold = pool[topk - 1] - margin  # the k-th best slice score, less the margin
    return [s >= threshold for s in scores]
