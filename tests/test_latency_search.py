"""Latency in the search: the latency limit filters candidates before scoring, an impossible one fails
with the space's latency range, records and best_arch.yaml carry the prediction, arch_info prints it per
stage, and the latency-uniform path sampler bins over it."""

import json
import random

import detnas_d2  # noqa: F401  (compat shims before detectron2 imports)

import pytest

from detnas_d2.arch_info import describe
from detnas_d2.arch_info import main as arch_info_main
from detnas_d2.arch_io import save_arch
from detnas_d2.config import get_detnas_cfg
from detnas_d2.engine.sampling import build_path_sampler, path_rng
from detnas_d2.flops import get_flops_table
from detnas_d2.latency import LatencyTable, LatencyTableMismatch
from detnas_d2.latency.timing import build_table
from detnas_d2.search import ArchConstraints, EvolutionSearch, SearchSettings
from detnas_d2.search_space import get_space

SPACE = get_space("small", 0.25)


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    """A real table of the toy space whose entries are then set to known values (block id b of layer i
    costs (i % 3 + 1) * (b + 1) ms; stem 1 ms): predictions are exact and spread over blocks."""
    table = build_table(SPACE, "32x32", "cpu", warmup=1, repeats=1, validate=0)
    table.stem_ms = 1.0
    table.layers_ms = [
        [float((i % 3 + 1) * (b + 1)) for b in range(SPACE.max_choices)]
        for i in range(SPACE.num_layers)
    ]
    path = str(tmp_path_factory.mktemp("latency") / "table.json")
    table.save(path)
    return path


def _constraints(table_file, latency_max_ms, flops_max=0.0):
    table = LatencyTable.load(table_file)
    return ArchConstraints(
        get_flops_table(SPACE, 128),
        SPACE,
        128,
        flops_max=flops_max,
        latency=table,
        latency_max_ms=latency_max_ms,
    )


def test_latency_limit_filters_and_measures(table_file):
    constraints = _constraints(table_file, latency_max_ms=60.0)
    fast, slow = SPACE.default_arch(), (SPACE.max_choices - 1,) * SPACE.num_layers
    assert (
        constraints.measure(fast)["latency_ms"] == 1.0 + sum(i % 3 + 1 for i in range(20)) == 40.0
    )
    assert constraints.measure(slow)["latency_ms"] == 1.0 + 4 * 39.0
    assert constraints(fast) and not constraints(slow)
    assert "latency <= 60 ms" in constraints.describe()


def test_impossible_latency_limit_fails_with_the_range(table_file):
    with pytest.raises(
        ValueError,
        match=r"LATENCY_MAX_MS=30 is below the fastest arch.*latency 40\.000\.\.157\.000 ms",
    ):
        _constraints(table_file, latency_max_ms=30.0).check_feasible()
    with pytest.raises(ValueError, match="LATENCY_MAX_MS needs DETNAS.SEARCH.LATENCY_TABLE"):
        ArchConstraints(get_flops_table(SPACE, 128), SPACE, 128, latency_max_ms=50.0)


def test_search_keeps_to_the_latency_limit(table_file):
    constraints = _constraints(table_file, latency_max_ms=70.0)
    settings = SearchSettings(
        population=6, generations=2, topk=2, num_mutation=2, num_crossover=2, max_candidates=12
    )
    state = EvolutionSearch(settings, SPACE, constraints, None).run(
        lambda archs: [{"score": sum(a)} for a in archs]
    )
    assert len(state.history) == 12
    assert all(r["latency_ms"] <= 70.0 for r in state.history)
    assert all(
        r["latency_ms"] == LatencyTable.load(table_file).predict(r["arch"]) for r in state.history
    )


def test_config_loads_the_table_for_its_space_only(table_file):
    cfg = get_detnas_cfg(
        "",
        [
            "MODEL.DETNAS.WIDTH_MULT",
            "0.25",
            "DETNAS.SEARCH.INPUT_SIZE",
            "128",
            "DETNAS.SEARCH.LATENCY_TABLE",
            table_file,
            "DETNAS.SEARCH.LATENCY_MAX_MS",
            "80.0",
            "DETNAS.SEARCH.LATENCY_INPUT_SIZE",
            "32x32",
        ],
    )
    constraints = ArchConstraints.from_cfg(cfg, SPACE)
    assert constraints.latency_max_ms == 80.0 and constraints.latency.input_size == (32, 32)
    with pytest.raises(
        LatencyTableMismatch, match=r"space 'small' width 0.25, expected 'small' width 0.5"
    ):
        ArchConstraints.from_cfg(cfg, get_space("small", 0.5))
    cfg.DETNAS.SEARCH.LATENCY_DEVICE = "cuda"
    with pytest.raises(LatencyTableMismatch, match=r"device 'cpu'.*expected 'cuda'"):
        ArchConstraints.from_cfg(cfg, SPACE)


def test_arch_info_prints_latency_per_stage(table_file, tmp_path, capsys):
    arch = SPACE.random_arch(random.Random(3))
    path = str(tmp_path / "arch.yaml")
    save_arch(path, arch, SPACE, input_size=128)
    info = describe(path, latency_table=table_file)
    expected = LatencyTable.load(table_file).predict(arch)
    assert info["latency"]["ms"] == pytest.approx(expected)
    assert sum(s["latency_ms"] for s in info["stages"]) + info["latency"][
        "stem_ms"
    ] == pytest.approx(expected)
    assert arch_info_main([path, "--latency-table", table_file]) == 0
    out = capsys.readouterr().out
    assert f"predicted latency {expected:.3f} ms" in out and " ms\n" not in out.splitlines()[2]
    assert arch_info_main([path, "--latency-table", table_file, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latency"]["ms"] == pytest.approx(expected)


def test_latency_uniform_sampler_bins_over_latency(table_file):
    cfg = get_detnas_cfg(
        "",
        [
            "MODEL.DETNAS.WIDTH_MULT",
            "0.25",
            "DETNAS.SAMPLER.NAME",
            "latency_uniform",
            "DETNAS.SAMPLER.LATENCY_TABLE",
            table_file,
            "DETNAS.SAMPLER.NUM_BINS",
            "4",
        ],
    )
    sampler = build_path_sampler(cfg, SPACE)
    table = LatencyTable.load(table_file)
    latencies = [table.predict(sampler(path_rng(0, it))) for it in range(200)]
    lo, hi = table.range_ms()
    edges = [lo + (hi - lo) * b / 4 for b in range(5)]
    per_bin = [sum(edges[b] <= v <= edges[b + 1] for v in latencies) for b in range(4)]
    assert all(n >= 30 for n in per_bin), (
        per_bin
    )  # uniform over bins: ~50 each (uniform paths: few at the ends)
    cfg.DETNAS.SAMPLER.LATENCY_TABLE = ""
    with pytest.raises(ValueError, match="latency_uniform needs DETNAS.SAMPLER.LATENCY_TABLE"):
        build_path_sampler(cfg, SPACE)
