"""FLOPs/params limits of a search, checked from the FLOPs table before anything is scored."""
import random
from typing import Sequence, Tuple

from detnas_d2.flops import get_flops_table
from detnas_d2.search_space import SearchSpace

__all__ = ["ArchConstraints"]

FEASIBILITY_DRAWS = 20000


class ArchConstraints:
    """FLOPs/params limits of the backbone, read from a FLOPs table (0 disables a bound)."""

    def __init__(
        self, table, space: SearchSpace, input_size: int, flops_min=0.0, flops_max=0.0, params_max=0.0
    ):
        self.table = table
        self.space = space
        self.input_size = input_size
        self.flops_min = float(flops_min)
        self.flops_max = float(flops_max)
        self.params_max = float(params_max)

    @classmethod
    def from_cfg(cls, cfg, space: SearchSpace):
        s = cfg.DETNAS.SEARCH
        table = get_flops_table(space, s.INPUT_SIZE, head="none")
        return cls(table, space, s.INPUT_SIZE, s.FLOPS_MIN, s.FLOPS_MAX, s.PARAMS_MAX)

    def measure(self, arch: Sequence[int]) -> Tuple[float, float]:
        return float(self.table.flops(arch)), float(self.table.params(arch))

    def __call__(self, arch: Sequence[int]) -> bool:
        flops, params = self.measure(arch)
        if self.flops_min and flops < self.flops_min:
            return False
        if self.flops_max and flops > self.flops_max:
            return False
        return not (self.params_max and params > self.params_max)

    def describe(self) -> str:
        lo = f"{self.flops_min / 1e6:.1f}M" if self.flops_min else "-"
        hi = f"{self.flops_max / 1e6:.1f}M" if self.flops_max else "-"
        params = f"{self.params_max / 1e6:.3f}M" if self.params_max else "-"
        return f"FLOPs in [{lo}, {hi}], params <= {params}"

    def check_feasible(self, seed: int = 0):
        """Raise ValueError, giving the space's ranges, if no arch can meet the limits."""
        flops_lo, flops_hi = float(self.table.min_flops), float(self.table.max_flops)
        params_lo, params_hi = float(self.table.min_params), float(self.table.max_params)
        ranges = (
            f"space '{self.space.name}' (width {self.space.width_mult}) at input "
            f"{self.input_size}: backbone FLOPs {flops_lo / 1e6:.2f}M..{flops_hi / 1e6:.2f}M, "
            f"params {params_lo / 1e6:.3f}M..{params_hi / 1e6:.3f}M"
        )
        problems = []
        if self.flops_min and self.flops_max and self.flops_min > self.flops_max:
            problems.append(f"DETNAS.SEARCH.FLOPS_MIN={self.flops_min:g} > DETNAS.SEARCH.FLOPS_MAX={self.flops_max:g}")
        if self.flops_max and self.flops_max < flops_lo:
            problems.append(f"DETNAS.SEARCH.FLOPS_MAX={self.flops_max:g} is below the smallest FLOPs")
        if self.flops_min and self.flops_min > flops_hi:
            problems.append(f"DETNAS.SEARCH.FLOPS_MIN={self.flops_min:g} is above the largest FLOPs")
        if self.params_max and self.params_max < params_lo:
            problems.append(f"DETNAS.SEARCH.PARAMS_MAX={self.params_max:g} is below the smallest params")
        if not problems:
            rng = random.Random(seed)
            if not any(self(self.space.random_arch(rng)) for _ in range(FEASIBILITY_DRAWS)):
                problems.append(
                    f"no arch out of {FEASIBILITY_DRAWS} random draws meets {self.describe()}"
                )
        if problems:
            raise ValueError("Impossible search constraints: " + "; ".join(problems) + f". {ranges}.")
