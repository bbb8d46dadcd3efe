"""The calibration of a latency table: a least-squares line through the measured end-to-end latency of
whole backbones against the table's sums for the same archs (the fit archs), measured with the table;
`LatencyTable.predict` then gives `scale * sum + offset_ms`.

Why: the table times every block alone, so its sum misses what a whole network adds or saves (the
blocks' outputs handed from one to the next through the caches, the network's call overhead). On our
2-core CPU (thread clock, one thread, small space, 224x224, a machine loaded by other jobs) the sum was
6.5-9.5% below the measured backbones, a bias that moved between runs with the load, over a per-arch
scatter of about 3%.

The fit archs: the space's four one-block archs (every layer shuffle_3x3, ..., every layer xception) and
random ones. Random archs' sums lie within about +-10% of each other, so with a 3% scatter a line fitted
on a dozen of them has an unsteady slope (0.93 to 1.28 in three runs); the one-block archs span the
space's range (all-xception's sum is 1.5x all-3x3's) and steady it. Measured on two runs of 40 random
archs plus the four one-block ones (each split 300 times: fit archs, then 24 held-out archs), mean |error|
on held-out archs before / after: 9.5% / 2.9% and 6.5% / 3.1%, worst 6.4% and 8.9% on average (p95 7.6%,
10.3%); on 12 random fit archs alone 2.8% and 3.5%, worst 7.4% and 10.1% (p95 9.5%, 14.5%).

Why a line through the total, not per-stage corrections (a scale for each stage's sum and an offset):
on the same runs per-stage corrections fitted on 12 archs did worse on held-out ones, 3.4% and 4.0%
mean, 9.0% and 11.7% worst: random archs' stage sums vary little and together, so five coefficients
fitted on a dozen archs follow the timing noise. A ratio alone (no offset) did about as well as the line
on CPU; the offset is kept for GPUs, where launching and synchronising a whole network may add a
constant.
"""

from typing import Dict, List, Sequence, Tuple

from ..search_space import SearchSpace

__all__ = ["MIN_FIT_ARCHS", "CalibrationError", "fit_line", "one_block_archs"]

MIN_FIT_ARCHS = 2


class CalibrationError(ValueError):
    """No usable calibration could be fitted (too few archs, no spread, a non-positive slope)."""


def one_block_archs(space: SearchSpace) -> List[Tuple[int, ...]]:
    """The archs whose every layer takes the same block id (a layer of fewer blocks its last): the ends
    of the space's latency range."""
    return [
        tuple(min(block, n - 1) for n in space.num_choices) for block in range(space.max_choices)
    ]


def fit_line(sums_ms: Sequence[float], measured_ms: Sequence[float]) -> Dict[str, float]:
    """{"scale", "offset_ms"} of the least-squares line measured = scale * sum + offset."""
    n = len(sums_ms)
    if n != len(measured_ms) or n < MIN_FIT_ARCHS:
        raise CalibrationError(
            f"a calibration needs at least {MIN_FIT_ARCHS} archs with a measured latency, got {n} sums and "
            f"{len(measured_ms)} measurements"
        )
    mean_x, mean_y = sum(sums_ms) / n, sum(measured_ms) / n
    sxx = sum((x - mean_x) ** 2 for x in sums_ms)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(sums_ms, measured_ms))
    if sxx <= 1e-12 * max(mean_x**2, 1e-30):
        raise CalibrationError("the fit archs' table sums are all equal: no line can be fitted")
    scale = sxy / sxx
    if scale <= 0:
        raise CalibrationError(
            f"the fitted scale is {scale:.3g} (<= 0): the measurements are noisier than the archs' "
            "differences; time with more --repeats or --fit-archs"
        )
    return {"scale": scale, "offset_ms": mean_y - scale * mean_x}
