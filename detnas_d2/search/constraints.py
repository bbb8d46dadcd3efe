"""FLOPs/params/latency limits of a search, checked exactly from lookup tables before anything is scored,
and archs drawn uniformly among those that meet them.

All three costs add up over layers, so the archs inside a limit are counted exactly (flops.py, CostBand):
whether the limits can be met is decided, not guessed, and an impossible setting is refused with the
exact achievable range and the nearest setting that can be met. Sampling draws uniformly from the band
of the most selective limit (the one the fewest archs meet); an arch that misses another limit (or, on an
inexact grid, the band itself) is drawn again, so the result is uniform over the archs that meet every
limit. With one limit of integer costs (a FLOPs band, a params limit) no draw is ever repeated.
"""

import random
from typing import Dict, List, Optional, Sequence, Tuple

from detnas_d2.flops import AdditiveCost, CostBand, cost_str, get_flops_table
from detnas_d2.latency import LatencyTable
from detnas_d2.search_space import SearchSpace
from detnas_d2.tasks import get_task

__all__ = ["ArchConstraints"]

SAMPLE_DRAWS = (
    10000  # draws from the most selective band before sampling gives up on the other limits
)


class ArchConstraints:
    """Limits of the backbone (0 disables a bound): FLOPs and params from a FLOPs table, and latency
    (ms) predicted by a latency table measured on the target device (`latency`, optional)."""

    def __init__(
        self,
        table,
        space: SearchSpace,
        input_size: int,
        flops_min=0.0,
        flops_max=0.0,
        params_max=0.0,
        latency: Optional[LatencyTable] = None,
        latency_max_ms=0.0,
    ):
        self.table = table
        self.space = space
        self.input_size = input_size
        self.flops_min = float(flops_min)
        self.flops_max = float(flops_max)
        self.params_max = float(params_max)
        self.latency = latency
        self.latency_max_ms = float(latency_max_ms)
        if self.latency_max_ms and latency is None:
            raise ValueError(
                "DETNAS.SEARCH.LATENCY_MAX_MS needs DETNAS.SEARCH.LATENCY_TABLE (python -m detnas_d2.latency)"
            )
        self._bands: Optional[List[Tuple[Tuple[str, str], CostBand]]] = None

    @classmethod
    def from_cfg(cls, cfg, space: SearchSpace):
        s = cfg.DETNAS.SEARCH
        table = get_flops_table(space, s.INPUT_SIZE, head="none")
        latency = None
        if s.LATENCY_TABLE:
            latency = LatencyTable.load(
                s.LATENCY_TABLE,
                expect_device=s.LATENCY_DEVICE or None,
                expect_space=space,
                expect_input_size=s.LATENCY_INPUT_SIZE or get_task(cfg).test_input_size(cfg),
            )
        return cls(
            table,
            space,
            s.INPUT_SIZE,
            s.FLOPS_MIN,
            s.FLOPS_MAX,
            s.PARAMS_MAX,
            latency,
            s.LATENCY_MAX_MS,
        )

    def measure(self, arch: Sequence[int]) -> Dict[str, float]:
        """{"flops", "params"[, "latency_ms"]} of `arch` (what candidate records hold)."""
        out = {"flops": float(self.table.flops(arch)), "params": float(self.table.params(arch))}
        if self.latency is not None:
            out["latency_ms"] = float(self.latency.predict(arch))
        return out

    def __call__(self, arch: Sequence[int]) -> bool:
        m = self.measure(arch)
        if self.flops_min and m["flops"] < self.flops_min:
            return False
        if self.flops_max and m["flops"] > self.flops_max:
            return False
        if self.latency_max_ms and m["latency_ms"] > self.latency_max_ms:
            return False
        return not (self.params_max and m["params"] > self.params_max)

    def describe(self) -> str:
        lo = f"{self.flops_min / 1e6:.1f}M" if self.flops_min else "-"
        hi = f"{self.flops_max / 1e6:.1f}M" if self.flops_max else "-"
        params = f"{self.params_max / 1e6:.3f}M" if self.params_max else "-"
        text = f"FLOPs in [{lo}, {hi}], params <= {params}"
        if self.latency_max_ms:
            text += f", latency <= {self.latency_max_ms:g} ms ({self.latency.describe()})"
        return text

    # ---- exact bands ---------------------------------------------------------------------------
    def _limits(self) -> List[Tuple[str, str, AdditiveCost, Optional[float], Optional[float]]]:
        """(config key of the lower bound, of the upper bound, cost, lo, hi) of every limit that is set."""
        limits = []
        if self.flops_min or self.flops_max:
            limits.append(
                (
                    "FLOPS_MIN",
                    "FLOPS_MAX",
                    self.table.flops_cost(),
                    self.flops_min or None,
                    self.flops_max or None,
                )
            )
        if self.params_max:
            limits.append(("", "PARAMS_MAX", self.table.params_cost(), None, self.params_max))
        if self.latency_max_ms:
            fixed, layers = self.latency.additive_ms()
            cost = AdditiveCost("latency (ms)", fixed, tuple(tuple(row) for row in layers))
            limits.append(("", "LATENCY_MAX_MS", cost, None, self.latency_max_ms))
        return limits

    def bands(self) -> List[Tuple[Tuple[str, str], CostBand]]:
        """((lower, upper bound's config key), band) of every limit, the most selective (fewest archs) first."""
        if self._bands is None:
            bands = [
                ((lo_key, hi_key), CostBand(cost, lo, hi))
                for lo_key, hi_key, cost, lo, hi in self._limits()
            ]
            self._bands = sorted(bands, key=lambda kb: kb[1].count)
        return self._bands

    def sample(self, rng: random.Random) -> Tuple[int, ...]:
        """An arch drawn uniformly among those that meet every limit (module doc)."""
        bands = self.bands()
        if not bands:
            return self.space.random_arch(rng)
        for _ in range(SAMPLE_DRAWS):
            arch = bands[0][1].sample(rng)
            if self(arch):
                return arch
        raise ValueError(
            f"None of {SAMPLE_DRAWS} archs drawn uniformly among those with {bands[0][1].cost.name} in "
            f"{bands[0][1].describe()} meets {self.describe()}: loosen the other limits"
        )

    def check_feasible(self, seed: int = 0):
        """Raise ValueError, giving the space's ranges and the nearest setting that can be met, if no arch
        meets the limits; otherwise find one (a draw of `sample`)."""
        flops_lo, flops_hi = float(self.table.min_flops), float(self.table.max_flops)
        params_lo = float(self.table.min_params)
        ranges = (
            f"space '{self.space.name}' (width {self.space.width_mult}) at input "
            f"{self.input_size}: backbone FLOPs {flops_lo / 1e6:.2f}M..{flops_hi / 1e6:.2f}M, "
            f"params {params_lo / 1e6:.3f}M..{self.table.max_params / 1e6:.3f}M"
        )
        if self.latency is not None:
            lat_lo, lat_hi = self.latency.range_ms()
            ranges += (
                f", predicted latency {lat_lo:.3f}..{lat_hi:.3f} ms ({self.latency.describe()})"
            )
        problems = []
        if self.flops_min and self.flops_max and self.flops_min > self.flops_max:
            problems.append(
                f"DETNAS.SEARCH.FLOPS_MIN={self.flops_min:g} > DETNAS.SEARCH.FLOPS_MAX={self.flops_max:g}"
            )
        if self.flops_max and self.flops_max < flops_lo:
            problems.append(
                f"DETNAS.SEARCH.FLOPS_MAX={self.flops_max:g} is below the smallest FLOPs "
                f"(nearest feasible: DETNAS.SEARCH.FLOPS_MAX={cost_str(flops_lo)})"
            )
        if self.flops_min and self.flops_min > flops_hi:
            problems.append(
                f"DETNAS.SEARCH.FLOPS_MIN={self.flops_min:g} is above the largest FLOPs "
                f"(nearest feasible: DETNAS.SEARCH.FLOPS_MIN={cost_str(flops_hi)})"
            )
        if self.params_max and self.params_max < params_lo:
            problems.append(
                f"DETNAS.SEARCH.PARAMS_MAX={self.params_max:g} is below the smallest params "
                f"(nearest feasible: DETNAS.SEARCH.PARAMS_MAX={cost_str(params_lo)})"
            )
        if self.latency_max_ms and self.latency_max_ms < self.latency.range_ms()[0]:
            problems.append(
                f"DETNAS.SEARCH.LATENCY_MAX_MS={self.latency_max_ms:g} is below the fastest arch "
                f"(nearest feasible: DETNAS.SEARCH.LATENCY_MAX_MS={cost_str(self.latency.range_ms()[0])})"
            )
        if not problems:
            problems = self._band_problems()
        if not problems:
            self.sample(random.Random(seed))  # with several limits, an arch found is the proof
            return
        raise ValueError("Impossible search constraints: " + "; ".join(problems) + f". {ranges}.")

    def _band_problems(self) -> List[str]:
        """Why the limits cannot be met together: a band no arch falls in, or (exact for one other limit,
        a necessary condition for two) another limit that no arch of the most selective band meets."""
        bands = self.bands()
        if not bands:
            return []
        (lo_key, hi_key), band = bands[0]
        name = f"{band.cost.name} in {band.describe()}"
        if not band.count:
            below, above = band.nearest()
            near = " and ".join(cost_str(v) for v in (below, above) if v is not None)
            fixes = [
                f"DETNAS.SEARCH.{key}={cost_str(v)}"
                for key, v in ((lo_key, below), (hi_key, above))
                if key and v is not None
            ]
            fix = f" (nearest feasible: {' or '.join(fixes)})" if fixes else ""
            return [f"no arch has {name}: the nearest achievable are {near}{fix}"]
        problems = []
        for (_, other_key), other in bands[1:]:
            least = band.least(other.cost)
            if least > other.hi:
                problems.append(
                    f"no arch with {name} has {other.cost.name} <= {cost_str(other.hi)}: the least there is "
                    f"{cost_str(least)} (nearest feasible: DETNAS.SEARCH.{other_key}={cost_str(least)})"
                )
        return problems
