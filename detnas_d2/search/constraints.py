"""FLOPs/params/latency limits of a search, checked from lookup tables before anything is scored."""
import random
from typing import Dict, Optional, Sequence

from detnas_d2.flops import get_flops_table
from detnas_d2.latency import LatencyTable
from detnas_d2.search_space import SearchSpace

__all__ = ["ArchConstraints"]

FEASIBILITY_DRAWS = 20000


class ArchConstraints:
    """Limits of the backbone (0 disables a bound): FLOPs and params from a FLOPs table, and latency
    (ms) predicted by a latency table measured on the target device (`latency`, optional)."""

    def __init__(
        self, table, space: SearchSpace, input_size: int, flops_min=0.0, flops_max=0.0, params_max=0.0,
        latency: Optional[LatencyTable] = None, latency_max_ms=0.0,
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
            raise ValueError("DETNAS.SEARCH.LATENCY_MAX_MS needs DETNAS.SEARCH.LATENCY_TABLE (python -m detnas_d2.latency)")

    @classmethod
    def from_cfg(cls, cfg, space: SearchSpace):
        s = cfg.DETNAS.SEARCH
        table = get_flops_table(space, s.INPUT_SIZE, head="none")
        latency = None
        if s.LATENCY_TABLE:
            latency = LatencyTable.load(s.LATENCY_TABLE, expect_device=s.LATENCY_DEVICE or None, expect_space=space)
        return cls(table, space, s.INPUT_SIZE, s.FLOPS_MIN, s.FLOPS_MAX, s.PARAMS_MAX, latency, s.LATENCY_MAX_MS)

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

    def check_feasible(self, seed: int = 0):
        """Raise ValueError, giving the space's ranges, if no arch can meet the limits."""
        flops_lo, flops_hi = float(self.table.min_flops), float(self.table.max_flops)
        params_lo, params_hi = float(self.table.min_params), float(self.table.max_params)
        ranges = (
            f"space '{self.space.name}' (width {self.space.width_mult}) at input "
            f"{self.input_size}: backbone FLOPs {flops_lo / 1e6:.2f}M..{flops_hi / 1e6:.2f}M, "
            f"params {params_lo / 1e6:.3f}M..{params_hi / 1e6:.3f}M"
        )
        if self.latency is not None:
            lat_lo, lat_hi = self.latency.range_ms()
            ranges += f", predicted latency {lat_lo:.3f}..{lat_hi:.3f} ms ({self.latency.describe()})"
        problems = []
        if self.flops_min and self.flops_max and self.flops_min > self.flops_max:
            problems.append(f"DETNAS.SEARCH.FLOPS_MIN={self.flops_min:g} > DETNAS.SEARCH.FLOPS_MAX={self.flops_max:g}")
        if self.flops_max and self.flops_max < flops_lo:
            problems.append(f"DETNAS.SEARCH.FLOPS_MAX={self.flops_max:g} is below the smallest FLOPs")
        if self.flops_min and self.flops_min > flops_hi:
            problems.append(f"DETNAS.SEARCH.FLOPS_MIN={self.flops_min:g} is above the largest FLOPs")
        if self.params_max and self.params_max < params_lo:
            problems.append(f"DETNAS.SEARCH.PARAMS_MAX={self.params_max:g} is below the smallest params")
        if self.latency_max_ms and self.latency_max_ms < self.latency.range_ms()[0]:
            problems.append(f"DETNAS.SEARCH.LATENCY_MAX_MS={self.latency_max_ms:g} is below the fastest arch")
        if not problems:
            rng = random.Random(seed)
            if not any(self(self.space.random_arch(rng)) for _ in range(FEASIBILITY_DRAWS)):
                problems.append(
                    f"no arch out of {FEASIBILITY_DRAWS} random draws meets {self.describe()}"
                )
        if problems:
            raise ValueError("Impossible search constraints: " + "; ".join(problems) + f". {ranges}.")
