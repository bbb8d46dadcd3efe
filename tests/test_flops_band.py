"""Exact FLOPs/params/latency bands: the dynamic programme over layers against brute force on a tiny space,
the toy space's limits decided exactly (refusals name the achievable range and the nearest setting), and
uniform sampling inside a narrow band in bounded time."""

import itertools
import random
import time
from collections import Counter

import detnas_d2  # noqa: F401  (compat shims before detectron2 imports)

import pytest

from detnas_d2.flops import AdditiveCost, CostBand, get_flops_table
from detnas_d2.search import ArchConstraints, EvolutionSearch, SearchSettings
from detnas_d2.search_space import get_space

SPACE = get_space("small", 0.25)
INPUT_SIZE = 128


@pytest.fixture(scope="module")
def table():
    return get_flops_table(SPACE, INPUT_SIZE)


def tiny_cost(seed, layers=5, floats=False):
    """A random additive cost over `layers` layers of 4 blocks (4**layers archs): small enough to enumerate."""
    rng = random.Random(seed)
    rows = tuple(
        tuple(rng.uniform(0, 10) if floats else rng.randrange(0, 40) * 8 for _ in range(4))
        for _ in range(layers)
    )
    return AdditiveCost("cost", 100 if not floats else 1.5, rows)


def enumerate_archs(layers):
    return list(itertools.product(range(4), repeat=layers))


@pytest.mark.parametrize("seed", range(6))
def test_band_equals_brute_force_on_a_tiny_space(seed):
    cost = tiny_cost(seed)
    archs = enumerate_archs(len(cost.rows))
    values = sorted(cost.of(a) for a in archs)
    assert (cost.min, cost.max) == (values[0], values[-1])
    rng = random.Random(seed)
    for _ in range(20):
        lo, hi = sorted(rng.uniform(values[0] - 20, values[-1] + 20) for _ in range(2))
        band = CostBand(cost, lo, hi)
        inside = [a for a in archs if lo <= cost.of(a) <= hi]
        assert band.exact and band.count == len(inside)
        below, above = band.nearest()
        assert below == max((v for v in values if v < lo), default=None)
        assert above == min((v for v in values if v > hi), default=None)
        other = tiny_cost(seed + 100)
        assert band.least(other) == min((other.of(a) for a in inside), default=float("inf"))
    # one-sided bands
    assert CostBand(cost, None, values[10]).count == sum(v <= values[10] for v in values)
    assert CostBand(cost, values[10], None).count == sum(v >= values[10] for v in values)


def test_sampling_is_uniform_over_the_band():
    cost = tiny_cost(7)
    archs = enumerate_archs(len(cost.rows))
    values = sorted(cost.of(a) for a in archs)
    lo, hi = values[300], values[330]  # a narrow band: about 30 of 1024 archs
    inside = {a for a in archs if lo <= cost.of(a) <= hi}
    band = CostBand(cost, lo, hi)
    rng = random.Random(0)
    draws = 300 * len(inside)
    counts = Counter(band.sample(rng) for _ in range(draws))
    assert set(counts) == inside, "every arch of the band, and only those, is drawn"
    chi2 = sum((c - 300) ** 2 / 300 for c in counts.values())
    assert chi2 < len(inside) + 6 * (2 * len(inside)) ** 0.5, f"not uniform: chi2 {chi2:.1f}"


def test_inexact_grid_is_conservative():
    """A float cost on a coarse grid: the counted band holds every arch of the band (and some at its edges)."""
    cost = tiny_cost(3, floats=True)
    archs = enumerate_archs(len(cost.rows))
    values = sorted(cost.of(a) for a in archs)
    band = CostBand(cost, values[100], values[200], grid_buckets=16)
    assert not band.exact and band.count >= 101
    rng = random.Random(0)
    drawn = {band.sample(rng) for _ in range(5000)}
    assert {a for a in archs if values[100] <= cost.of(a) <= values[200]} <= drawn


def test_toy_flops_max_7m_is_feasible(table):
    all_3x3 = (0,) * SPACE.num_layers
    assert table.min_flops == 6550272 and table.flops(all_3x3) == 6953216 <= 7.0e6
    constraints = ArchConstraints(table, SPACE, INPUT_SIZE, flops_max=7.0e6)
    constraints.check_feasible()
    rng = random.Random(0)
    assert all(table.flops(constraints.sample(rng)) <= 7.0e6 for _ in range(200))
    assert CostBand(table.flops_cost(), None, 7.0e6).count == 866400


def test_impossible_band_is_refused_with_the_range_and_the_nearest_setting(table):
    constraints = ArchConstraints(table, SPACE, INPUT_SIZE, flops_min=7.0e6, flops_max=7.0003e6)
    with pytest.raises(ValueError) as info:
        constraints.check_feasible()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        "Impossible search constraints: no arch has FLOPs in [7000000, 7000300]: the "
        "nearest achievable are 6999808 and 7000320 (nearest feasible: "
        "DETNAS.SEARCH.FLOPS_MIN=6999808 or DETNAS.SEARCH.FLOPS_MAX=7000320)"
    )
    assert "backbone FLOPs 6.55M..11.33M" in message
    ArchConstraints(table, SPACE, INPUT_SIZE, flops_min=7.0e6, flops_max=7000320).check_feasible()

    # a params limit no arch of the FLOPs band meets: the least params there is named
    band = CostBand(table.flops_cost(), 11.0e6, 11.3e6)
    least = band.least(table.params_cost())
    constraints = ArchConstraints(
        table, SPACE, INPUT_SIZE, flops_min=11.0e6, flops_max=11.3e6, params_max=least - 1
    )
    with pytest.raises(
        ValueError,
        match=rf"has params <= {int(least) - 1}: the least there is {int(least)} "
        rf"\(nearest feasible: DETNAS.SEARCH.PARAMS_MAX={int(least)}\)",
    ):
        constraints.check_feasible()
    ArchConstraints(
        table, SPACE, INPUT_SIZE, flops_min=11.0e6, flops_max=11.3e6, params_max=least
    ).check_feasible()


def test_narrow_band_near_the_max_is_sampled_in_bounded_time(table):
    hi = table.max_flops
    lo = 0.99 * hi  # a band 1% wide at the top, where fewer than 1 in 1e9 random archs fall
    assert CostBand(table.flops_cost(), lo, hi).count == 101
    constraints = ArchConstraints(table, SPACE, INPUT_SIZE, flops_min=lo, flops_max=hi)
    constraints.check_feasible()
    rng = random.Random(0)
    start = time.perf_counter()
    archs = [constraints.sample(rng) for _ in range(500)]
    assert time.perf_counter() - start < 5.0
    assert all(lo <= table.flops(a) <= hi for a in archs) and len(set(archs)) > 20
    # the search fills its populations from the band
    settings = SearchSettings(
        population=6, generations=2, topk=2, num_mutation=2, num_crossover=2, max_candidates=12
    )
    state = EvolutionSearch(settings, SPACE, constraints, None).run(
        lambda archs: [{"score": sum(a)} for a in archs]
    )
    assert len(state.history) == 12 and all(lo <= r["flops"] <= hi for r in state.history)
