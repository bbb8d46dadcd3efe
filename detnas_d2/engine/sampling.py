"""Random paths for supernet training.

A path is a pure function of (DETNAS.SAMPLER.SEED, iteration) through :func:`path_rng`, so every rank
draws the same path without communicating, and a resumed run draws exactly what an uninterrupted one
would have.

Samplers (DETNAS.SAMPLER.NAME):

- ``uniform`` (SPOS): every layer picks one of the blocks uniformly. With DETNAS.SAMPLER.FLOPS_MIN/MAX
  set, paths are uniform among those whose FLOPs lie in [FLOPS_MIN, FLOPS_MAX].
- ``flops_uniform`` (official DetNAS): pick one of NUM_BINS equal FLOPs bins between FLOPS_MIN and
  FLOPS_MAX uniformly, then a path uniformly among those whose FLOPs fall in that bin. FLOPS_MAX thus
  also acts as a FLOPs limit.
- ``latency_uniform``: the same over the predicted latency of LATENCY_TABLE (a table of
  ``python -m detnas_d2.latency`` for the target device), bins spanning the space's latency range:
  FLOPs predict latency poorly across block kinds.

Progressive path warm-up (DETNAS.SAMPLER.PROGRESSIVE_ITERS > 0, :func:`progressive_path`): during the
first PROGRESSIVE_ITERS iterations only the last layers take the sampled blocks, the others keep the
reference arch's; the random part grows linearly from the last layer to all of them. These mixed paths
are not held to FLOPS_MIN/MAX. Neither MMRazor nor the official DetNAS code has it; the full-scale
configs keep it off (0). With DETNAS.SAMPLER.PROGRESSIVE_REFERENCE ``rotating``, the fixed layers take a
new sampled arch (:func:`warmup_reference`) each time the random part grows, instead of the reference
arch for the whole warm-up: the warm-up then favours no arch. On the toy data, a supernet with all 20
layers random from the first iteration keeps its loss at chance for 2,000-5,000 iterations (when it
takes off varies from run to run); with the warm-up it learns from the start and, once every layer is
random, its random paths keep learning (docs/pipeline.md, "Supernet training").

The official code draws the in-bin path by rejection from uniform paths, which can take millions of
tries for the bins near the space's extremes. :class:`FlopsBinSampler` draws from the same distribution
efficiently: backbone FLOPs are a sum of per-layer terms, so a dynamic program over quantised FLOPs counts
the paths per quantised total; the proposal is uniform over the paths whose quantised FLOPs can lie in
the bin (a superset of the bin), and an exact FLOPs check rejects the few outside it.
"""

import logging
import math
import random
from typing import List, Sequence, Tuple

from ..arch_io import load_arch
from ..flops import get_flops_table
from ..latency import LatencyTable
from ..search_space import SearchSpace, space_from_cfg

__all__ = [
    "path_rng",
    "UniformPathSampler",
    "FlopsBinSampler",
    "build_path_sampler",
    "num_random_layers",
    "progressive_path",
    "reference_arch",
    "warmup_reference",
    "SAMPLER_NAMES",
    "WARMUP_REFERENCES",
]

SAMPLER_NAMES = ("uniform", "flops_uniform", "latency_uniform")
WARMUP_REFERENCES = ("fixed", "rotating")
logger = logging.getLogger(__name__)


def reference_arch(cfg) -> Tuple[int, ...]:
    """MODEL.DETNAS.REFERENCE_ARCH (file or ids) or, when empty, the space's default arch: the path a
    supernet is evaluated on during training, and the fixed layers of the progressive warm-up."""
    space = space_from_cfg(cfg)
    spec = cfg.MODEL.DETNAS.REFERENCE_ARCH.strip()
    return load_arch(spec, space) if spec else space.default_arch()


def path_rng(seed: int, iteration: int) -> random.Random:
    """The RNG that draws the path of `iteration`: identical in every process (no `hash()`)."""
    return random.Random(int(seed) * 1_000_003 + int(iteration))


def num_random_layers(iteration: int, warmup_iters: int, num_layers: int) -> int:
    """How many of the last layers are random at `iteration` of a progressive warm-up of `warmup_iters`
    iterations: 1 at iteration 0, growing linearly to `num_layers` (all of them, as after the warm-up)."""
    if iteration >= warmup_iters:
        return num_layers
    return 1 + num_layers * iteration // warmup_iters


def progressive_path(
    arch: Sequence[int], reference: Sequence[int], iteration: int, warmup_iters: int
) -> Tuple[int, ...]:
    """`arch` with its first layers replaced by `reference`'s, leaving
    `num_random_layers(iteration, warmup_iters, len(arch))` random ones at the end."""
    fixed = len(arch) - num_random_layers(iteration, warmup_iters, len(arch))
    return tuple(reference[:fixed]) + tuple(arch[fixed:])


def warmup_reference(sampler, seed: int, phase: int) -> Tuple[int, ...]:
    """The fixed layers' arch in `phase` (its number of random layers) of a ``rotating`` warm-up: drawn by
    `sampler` from an RNG of (seed, phase) alone, apart from every iteration's path RNG."""
    return sampler(random.Random(f"warmup-reference:{int(seed)}:{int(phase)}"))


class UniformPathSampler:
    """Every layer picks a block uniformly at random."""

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, rng: random.Random) -> Tuple[int, ...]:
        return self.space.random_arch(rng)


class FlopsBinSampler:
    """Pick one of `num_bins` equal FLOPs bins of [flops_min, flops_max] uniformly, then a path uniformly
    among those whose FLOPs fall in the bin (the last bin includes `flops_max`).

    `flops_table` is a :func:`detnas_d2.flops.get_flops_table` result (`.flops(arch)`, `.layer_flops`).
    Every bin is checked at construction: one without any path raises ValueError naming it.
    """

    GRID_PER_BIN = (
        256  # quantisation steps per bin: the proposal overshoots a bin by <= num_layers/2 steps
    )
    MAX_GRID = 8192  # cap on the steps over the whole FLOPs span of the space (DP cost)

    def __init__(
        self,
        space: SearchSpace,
        flops_table,
        flops_min: float,
        flops_max: float,
        num_bins: int = 1,
        max_tries: int = 1000,
    ):
        self.space = space
        self.table = flops_table
        self.max_tries = max_tries
        num_layers = space.num_layers
        layer_flops = [[float(v) for v in flops_table.layer_flops[i]] for i in range(num_layers)]
        default = space.default_arch()
        base = float(flops_table.flops(default)) - sum(
            layer_flops[i][c] for i, c in enumerate(default)
        )
        lowest = [min(row) for row in layer_flops]
        space_min = base + sum(lowest)
        space_max = base + sum(max(row) for row in layer_flops)
        self.flops_min = float(flops_min) if flops_min > 0 else space_min
        self.flops_max = float(flops_max) if flops_max > 0 else space_max
        if num_bins < 1:
            raise ValueError(f"DETNAS.SAMPLER.NUM_BINS must be >= 1, got {num_bins}")
        if not self.flops_min < self.flops_max:
            raise ValueError(
                f"DETNAS.SAMPLER FLOPs range is empty: FLOPS_MIN {self.flops_min:.4g} >= FLOPS_MAX "
                f"{self.flops_max:.4g} (space '{space.name}' spans {space_min:.4g}..{space_max:.4g} MACs)"
            )
        self.edges = [
            self.flops_min + (self.flops_max - self.flops_min) * b / num_bins
            for b in range(num_bins + 1)
        ]

        unit = max(
            (self.flops_max - self.flops_min) / (num_bins * self.GRID_PER_BIN),
            (space_max - space_min) / self.MAX_GRID,
            1e-12,
        )
        self._steps = [
            [round((f - low) / unit) for f in row] for row, low in zip(layer_flops, lowest)
        ]
        # _counts[i][s]: number of ways layers i.. add up to s quantised steps.
        total_steps = sum(max(row) for row in self._steps)
        counts: List[List[int]] = [[0] * (total_steps + 1) for _ in range(num_layers + 1)]
        counts[num_layers][0] = 1
        for i in range(num_layers - 1, -1, -1):
            nxt, cur = counts[i + 1], counts[i]
            for q in self._steps[i]:
                for s in range(total_steps + 1 - q):
                    if nxt[s]:
                        cur[s + q] += nxt[s]
        self._counts = counts
        # Rounding moves a path's quantised total by at most num_layers/2 steps from its exact FLOPs.
        slack = num_layers / 2
        self._bin_sums = []
        for b in range(num_bins):
            first = max(0, math.ceil((self.edges[b] - space_min) / unit - slack))
            last = min(total_steps, math.floor((self.edges[b + 1] - space_min) / unit + slack))
            sums = [(s, counts[0][s]) for s in range(first, last + 1) if counts[0][s]]
            self._bin_sums.append(sums)
            # Bounded pre-check: an empty superset, or no exact hit within max_tries, fails here.
            if not sums or self._sample_in_bin(b, random.Random(b)) is None:
                raise ValueError(
                    f"DETNAS.SAMPLER: FLOPs bin {b} [{self.edges[b]:.4g}, {self.edges[b + 1]:.4g}) of "
                    f"[{self.flops_min:.4g}, {self.flops_max:.4g}] holds no path of space '{space.name}' "
                    f"(width {space.width_mult}, paths span {space_min:.4g}..{space_max:.4g} MACs at the "
                    "sampler's INPUT_SIZE): change DETNAS.SAMPLER.FLOPS_MIN/FLOPS_MAX/NUM_BINS"
                )

    @property
    def num_bins(self) -> int:
        return len(self._bin_sums)

    def _in_bin(self, flops: float, b: int) -> bool:
        lo, hi = self.edges[b], self.edges[b + 1]
        return lo <= flops < hi or (b == self.num_bins - 1 and flops == hi)

    def _draw_path(self, rng: random.Random, sums: Sequence[Tuple[int, int]]) -> Tuple[int, ...]:
        """A path drawn uniformly among those whose quantised total is one of `sums`."""
        pick = rng.randrange(sum(n for _, n in sums))
        for remaining, n in sums:
            if pick < n:
                break
            pick -= n
        arch = []
        for i, steps in enumerate(self._steps):
            nxt = self._counts[i + 1]
            weights = [nxt[remaining - q] if 0 <= remaining - q < len(nxt) else 0 for q in steps]
            pick = rng.randrange(sum(weights))
            for choice, w in enumerate(weights):
                if pick < w:
                    break
                pick -= w
            arch.append(choice)
            remaining -= steps[choice]
        return tuple(arch)

    def _sample_in_bin(self, b: int, rng: random.Random):
        for _ in range(self.max_tries):
            arch = self._draw_path(rng, self._bin_sums[b])
            if self._in_bin(float(self.table.flops(arch)), b):
                return arch
        return None

    def __call__(self, rng: random.Random) -> Tuple[int, ...]:
        b = rng.randrange(self.num_bins)
        arch = self._sample_in_bin(b, rng)
        if arch is None:
            raise RuntimeError(
                f"no path with FLOPs in bin {b} [{self.edges[b]:.4g}, {self.edges[b + 1]:.4g}) after "
                f"{self.max_tries} tries; widen DETNAS.SAMPLER.FLOPS_MIN/FLOPS_MAX or lower NUM_BINS"
            )
        return arch


class LatencyCosts:
    """A latency table seen as the per-layer additive cost table FlopsBinSampler bins over."""

    def __init__(self, table: LatencyTable):
        self.layer_flops = table.additive_ms()[1]  # calibrated, as `flops`
        self._table = table

    def flops(self, arch: Sequence[int]) -> float:
        return self._table.predict(arch)


def build_path_sampler(cfg, space: SearchSpace = None, flops_table=None):
    """The sampler named by DETNAS.SAMPLER.NAME (see the module doc). `flops_table` defaults to
    `get_flops_table(space, DETNAS.SAMPLER.INPUT_SIZE)` and is only built when the sampler needs it."""
    sampler_cfg = cfg.DETNAS.SAMPLER
    space = space or space_from_cfg(cfg)
    name = sampler_cfg.NAME
    if name not in SAMPLER_NAMES:
        raise ValueError(
            f"DETNAS.SAMPLER.NAME '{name}' is unknown; choose one of {list(SAMPLER_NAMES)}"
        )
    if name == "latency_uniform":
        if not sampler_cfg.LATENCY_TABLE:
            raise ValueError(
                "DETNAS.SAMPLER.NAME latency_uniform needs DETNAS.SAMPLER.LATENCY_TABLE"
            )
        table = LatencyTable.load(sampler_cfg.LATENCY_TABLE, expect_space=space)
        sampler = FlopsBinSampler(space, LatencyCosts(table), 0.0, 0.0, sampler_cfg.NUM_BINS)
        logger.info(
            f"Path sampler 'latency_uniform': {sampler.num_bins} bins of {table.describe()}"
        )
        return sampler
    limited = sampler_cfg.FLOPS_MIN > 0 or sampler_cfg.FLOPS_MAX > 0
    if name == "uniform" and not limited:
        return UniformPathSampler(space)
    if flops_table is None:
        flops_table = get_flops_table(space, sampler_cfg.INPUT_SIZE)
    num_bins = sampler_cfg.NUM_BINS if name == "flops_uniform" else 1
    sampler = FlopsBinSampler(
        space, flops_table, sampler_cfg.FLOPS_MIN, sampler_cfg.FLOPS_MAX, num_bins
    )
    logger.info(
        f"Path sampler '{name}': FLOPs {sampler.flops_min / 1e6:.2f}M..{sampler.flops_max / 1e6:.2f}M "
        f"(input {sampler_cfg.INPUT_SIZE}) in {sampler.num_bins} bin(s)"
    )
    return sampler
