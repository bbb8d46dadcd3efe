"""detnas_d2.audit (tools/rank_audit.py) and detnas_d2/rank_stats.py: the ranking statistics against
hand-computed values (ties included) and scipy, arch sets, JSON-lines files, the compare report, and both
scoring parts resuming after an interruption (supernet: a random-init toy supernet; stand-alone: two tiny
archs end to end, --quick)."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from detnas_d2 import rank_stats as rs

import numpy as np
import pytest
import torch

from detnas_d2.audit.archs import (
    DEFAULT_SEARCH_CONFIG,
    arch_str,
    flops_band,
    read_archs,
    sample_stratified,
    search_space_and_table,
)
from detnas_d2.audit.cli import main as rank_audit
from detnas_d2.audit.protocols import protocol_figures, read_protocol
from detnas_d2.file_io import read_json_lines

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "rank_audit.py"


# ---- statistics, by hand -----------------------------------------------------------------------------


def test_kendall_tau_b_by_hand():
    # no ties: pairs (1,2) and (3,4) of the 10 are discordant: (8 - 2) / 10
    assert rs.kendall_tau_b([1, 2, 3, 4, 5], [1, 3, 2, 5, 4]) == pytest.approx(0.6)
    # ties: x ties on pair (1,2), y on pair (2,3); pair (0,1) discordant, the other 7 concordant:
    # (7 - 1) / sqrt((10 - 1) * (10 - 1)) = 6 / 9 (tau-a would say 6 / 10)
    assert rs.kendall_tau_b([1, 2, 2, 3, 4], [2, 1, 3, 3, 5]) == pytest.approx(2 / 3)
    # 4 concordant, one tie in each: 4 / sqrt(5 * 5)
    assert rs.kendall_tau_b([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)
    # a tie in x only: (5 concordant - 0) / sqrt(5 * 6)
    assert rs.kendall_tau_b([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(30))
    assert rs.kendall_tau_b([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(rs.kendall_tau_b([1, 1, 1], [1, 2, 3]))  # a constant ranking: undefined
    assert math.isnan(rs.kendall_tau_b([1], [2]))


def test_spearman_rho_and_ranks_by_hand():
    # no ties: d = 0,1,1,1,1 -> 1 - 6 * 4 / (5 * 24)
    assert rs.spearman_rho([1, 2, 3, 4, 5], [1, 3, 2, 5, 4]) == pytest.approx(0.8)
    # ties share their mean rank: ranks (1, 2.5, 2.5, 4) and (1, 2, 3.5, 3.5); Pearson of those = 3.75 / 4.5
    assert list(rs.average_ranks([1, 2, 2, 3])) == [1, 2.5, 2.5, 4]
    assert list(rs.average_ranks([5, 1, 5, 5])) == [3, 1, 3, 3]
    assert rs.spearman_rho([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(5 / 6)
    assert math.isnan(rs.spearman_rho([2, 2, 2], [1, 2, 3]))


def test_statistics_match_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.integers(0, 5, size=15), rng.integers(0, 6, size=15)  # many ties
        assert rs.kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
        assert rs.spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_top_k_overlap_by_hand():
    truth = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]  # top 20% of 10: archs 0 and 1
    assert rs.top_k_overlap([1, 9, 8, 0, 0, 0, 0, 0, 0, 0], truth) == {
        "hits": 1,
        "k": 2,
        "precision": 0.5,
    }
    assert rs.top_k_overlap(truth, truth)["precision"] == 1.0
    assert rs.top_k([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]) == [11, 10, 9]  # ceil(2.4) = 3
    assert rs.top_k([5, 7, 7, 1, 1]) == [1]  # ties: input order
    assert rs.top_k([5, 7, 7, 1, 1], 0.4) == [1, 2]


def test_bootstrap_interval_is_seeded_and_sensible():
    x = np.arange(12.0)
    y = x + np.array([0, 3, -2, 1, 0, 4, -3, 2, 0, -1, 3, -4])
    a = rs.bootstrap_ci(rs.kendall_tau_b, x, y, samples=500, seed=3)
    assert a == rs.bootstrap_ci(rs.kendall_tau_b, x, y, samples=500, seed=3)
    assert a != rs.bootstrap_ci(rs.kendall_tau_b, x, y, samples=500, seed=4)
    assert a["low"] < rs.kendall_tau_b(x, y) < a["high"] and a["valid"] == 500
    perfect = rs.bootstrap_ci(rs.kendall_tau_b, x, 2 * x, samples=200, seed=0)
    assert perfect["low"] == perfect["high"] == 1.0
    # two archs: the resamples that draw one arch twice are undefined and left out (about half)
    two = rs.bootstrap_ci(rs.kendall_tau_b, [1, 2], [1, 2], samples=400, seed=0)
    assert 100 < two["valid"] < 300 and two["low"] == 1.0
    # a statistic of three columns, on the same resamples
    diff = rs.bootstrap_ci(
        lambda p, t, b: rs.kendall_tau_b(p, t) - rs.kendall_tau_b(b, t),
        y,
        y,
        x,
        samples=200,
        seed=0,
    )
    assert diff["low"] >= 0.0


def test_seed_noise_by_hand():
    scores = [{0: 20.0, 1: 22.0}, {0: 10.0, 1: 10.0}, {0: 15.0, 1: 13.0, 2: 14.0}, {0: 30.0}]
    noise = rs.seed_noise(scores, bootstrap_samples=100)
    assert noise["archs_with_2_seeds"] == 3
    assert noise["std_max"] == pytest.approx(math.sqrt(2.0))
    assert noise["std_mean"] == pytest.approx((math.sqrt(2) + 0 + 1) / 3)
    assert noise["between_arch_std"] == pytest.approx(np.std([21.0, 10.0, 14.0, 30.0], ddof=1))
    # seeds 0 and 1 (found in most archs), over the 3 archs with both: same order -> 1
    assert noise["seed_pair"] == [0, 1] and noise["archs_in_pair"] == 3
    assert noise["tau_between_seeds"] == pytest.approx(1.0)
    swapped = rs.seed_noise(
        [{0: 1.0, 1: 3.0}, {0: 2.0, 1: 2.0}, {0: 3.0, 1: 1.0}], bootstrap_samples=10
    )
    assert swapped["tau_between_seeds"] == pytest.approx(-1.0)


def test_arch_effect_by_hand():
    # group means 2, 6, 10 (grand 6): MSB = 2 * (16 + 0 + 16) / 2 = 32, MSW = 6 / 3 = 2, n0 = 2
    effect = rs.arch_effect(
        [{0: 1.0, 1: 3.0}, {0: 5.0, 1: 7.0}, {0: 9.0, 1: 11.0}, {0: 4.0}], samples=20000
    )
    assert effect["archs"] == 3 and effect["runs"] == 6 and effect["n0"] == pytest.approx(2.0)
    assert effect["seed_std"] == pytest.approx(math.sqrt(2.0)) and effect["f"] == pytest.approx(
        16.0
    )
    assert effect["arch_std"] == pytest.approx(math.sqrt((32 - 2) / 2))
    assert effect["icc"] == pytest.approx(30 / 34) and effect["reliability"] == pytest.approx(
        30 / 32
    )
    assert effect["tau_ceiling"] == pytest.approx(2 / math.pi * math.asin(math.sqrt(30 / 32)))
    assert effect["seeds_for_tau_07"] == pytest.approx(rs.seeds_needed(30 / 34))
    # 6 of the 90 ways to deal the six scores into three pairs keep {1, 3}, {5, 7}, {9, 11} together
    assert effect["p_value"] == pytest.approx(6 / 90, abs=0.01)
    # archs whose seeds spread more than the archs do: no arch effect
    none = rs.arch_effect([{0: 1.0, 1: 3.0}, {0: 3.0, 1: 1.0}, {0: 1.1, 1: 2.9}], samples=500)
    assert none["arch_std"] == 0.0 and none["icc"] < 0 and none["p_value"] > 0.5
    assert math.isnan(
        rs.arch_effect([{0: 1.0, 1: 3.0}, {0: 5.0}])["icc"]
    )  # one arch with 2 seeds: undefined


def test_seeds_needed_by_hand():
    r = math.sin(math.pi * 0.7 / 2) ** 2  # the reliability whose tau ceiling is 0.7: 0.794
    assert r == pytest.approx(0.7939, abs=1e-4)
    assert rs.tau_ceiling(r) == pytest.approx(0.7) and rs.tau_ceiling(1.0) == pytest.approx(1.0)
    assert (
        rs.tau_ceiling(0.0) == 0.0 and rs.tau_ceiling(-0.3) == 0.0
    )  # archs spread less than noise: no ranking
    assert rs.seeds_needed(0.5) == pytest.approx(
        r / (1 - r)
    )  # 3.85 seeds when half a run's variance is the arch's
    assert rs.seeds_needed(0.13) == pytest.approx(r / (1 - r) * 0.87 / 0.13)  # 25.8
    # the inverse of the tau ceiling: that many seeds give a mean of reliability r (Spearman-Brown), tau 0.7
    for icc in (0.05, 0.3, 0.9):
        n = rs.seeds_needed(icc, tau=0.7)
        reliability = n * icc / (1 + (n - 1) * icc)
        assert 2 / math.pi * math.asin(math.sqrt(reliability)) == pytest.approx(0.7)
    assert rs.seeds_needed(0.0) == math.inf and rs.seeds_needed(-0.1) == math.inf
    assert math.isnan(rs.seeds_needed(float("nan")))
    with pytest.raises(ValueError, match="tau"):
        rs.seeds_needed(0.5, tau=1.0)


def test_arch_effect_seed_blocks_by_hand():
    # arch means 2.5, 3, 7; seed means 3, 16/3 (grand 25/6): MS_arch = 2 * 73/6 = 73/6 (df 2),
    # MS_seed = 3 * 2 * (7/6)^2 = 49/6 (df 1), residuals +-1/3, +-1/6, +-1/6: MS_res = (1/3) / 2 = 1/6
    scores = [
        {0: 1.0, 1: 4.0},
        {0: 2.0, 1: 4.0},
        {0: 6.0, 1: 8.0},
        {1: 5.0},
    ]  # the last: one seed, left out
    effect = rs.arch_effect_seed_blocks(scores)
    assert effect["archs"] == 3 and effect["seeds"] == [0, 1] and effect["f"] == pytest.approx(73.0)
    assert effect["seed_std"] == pytest.approx(math.sqrt(1 / 6))
    assert effect["seed_block_std"] == pytest.approx(math.sqrt((49 / 6 - 1 / 6) / 3))
    assert effect["arch_std"] == pytest.approx(math.sqrt((73 / 6 - 1 / 6) / 2))
    assert effect["icc"] == pytest.approx(12 / (73 / 6 + 1 / 6)) and effect[
        "reliability"
    ] == pytest.approx(72 / 73)
    # seed 1's scores in each of its 3! orders against seed 0's: only the observed order and the one that swaps
    # the two 4.0s reach F = 73
    assert effect["p_value"] == pytest.approx(2 / 6)
    # every arch 10 higher with seed 1 (+- 0.1): noise to the one-way ANOVA, a block here
    shifted = [{0: float(i), 1: i + 10.0 + (0.1 if i % 2 else -0.1)} for i in range(6)]
    assert rs.arch_effect(shifted, samples=500)["reliability"] < 0.2
    blocked = rs.arch_effect_seed_blocks(shifted, samples=2000)
    assert (
        blocked["reliability"] > 0.99
        and blocked["seed_block_std"] > 6
        and blocked["p_value"] < 0.01
    )
    # no two seeds in common: undefined
    assert math.isnan(
        rs.arch_effect_seed_blocks([{0: 1.0, 1: 2.0}, {2: 1.0, 3: 5.0}])["reliability"]
    )


def test_permutation_test_by_hand():
    # pooled (3, 4, 1, 2), groups of 2: the 6 splits give mean differences 2, -1, 0, 0, 1, -2
    assert rs.permutation_test([3, 4], [1, 2]) == pytest.approx(1 / 6)
    assert rs.permutation_test([3, 4], [1, 2], alternative="less") == pytest.approx(1.0)
    assert rs.permutation_test([3, 4], [1, 2], alternative="two-sided") == pytest.approx(2 / 6)
    assert rs.permutation_test([1, 2], [3, 4]) == pytest.approx(1.0)
    # ties: three equal scores above two others is only reached by 1 of the C(5, 3) = 10 splits
    assert rs.permutation_test([5, 5, 5], [1, 2]) == pytest.approx(1 / 10)
    assert rs.permutation_test([1, 1], [1, 1]) == pytest.approx(1.0)  # equal scores: no evidence
    # past max_exact: random relabellings (plus the observed one) estimate the same p-value
    assert rs.permutation_test([3, 4], [1, 2], max_exact=1, samples=20000) == pytest.approx(
        1 / 6, abs=0.01
    )
    with pytest.raises(ValueError, match="alternative"):
        rs.permutation_test([1], [2], alternative="bigger")
    with pytest.raises(ValueError, match="non-empty"):
        rs.permutation_test([], [2])


def test_paired_permutation_test_by_hand():
    # differences (3, 1): the 4 sign flips give means 2, 1, -1, -2
    assert rs.paired_permutation_test([5, 2], [2, 1]) == pytest.approx(1 / 4)
    assert rs.paired_permutation_test([5, 2], [2, 1], alternative="less") == pytest.approx(1.0)
    assert rs.paired_permutation_test([5, 2], [2, 1], alternative="two-sided") == pytest.approx(
        2 / 4
    )
    # differences (2, -1, 1) -> flips' sums 4, 2, 0, 2, -2, 0, -2, -4 (of 8): >= 2 in 3 of them
    assert rs.paired_permutation_test([3, 0, 2], [1, 1, 1]) == pytest.approx(3 / 8)
    # a constant offset every seed shares: the unpaired test sees seed noise, the paired one does not
    a, b = [10.0, 20.0, 30.0, 40.0, 50.0], [9.0, 19.0, 29.0, 39.0, 49.0]
    assert rs.permutation_test(a, b) > 0.4
    assert rs.paired_permutation_test(a, b) == pytest.approx(1 / 32)
    assert rs.paired_permutation_test(a, b, max_exact=1, samples=20000) == pytest.approx(
        1 / 32, abs=0.005
    )
    with pytest.raises(ValueError, match="paired by seed"):
        rs.paired_permutation_test([1, 2], [1])
    with pytest.raises(ValueError, match="alternative"):
        rs.paired_permutation_test([1], [2], alternative="bigger")


# ---- bad input: one line, exit status 2 -------------------------------------------------------------


def assert_user_error(raised, capsys, message):
    """`raised` (pytest.raises' SystemExit) ended the command with exit status 2 and one line on
    stderr, `<program> <part>: error: ...`, matching `message`."""
    err = capsys.readouterr().err
    assert raised.value.code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(r"^\S+ \w+: error: .*" + message, err), err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "--num", "2", "--include", "0,9"], r"arch '0,9'.*unknown block id 9"),
        (["sample", "--num", "0"], "--num must be >= 1, got 0"),
        (["standalone", "--archs", "0", "--output", "s.jsonl", "--jobs", "0"], "--jobs 0: give"),
        (
            ["protocols", "--reference", "missing.jsonl", "--cheap", "missing.jsonl"],
            "missing.jsonl: no scores",
        ),
        (
            ["compare", "--supernet", "missing.jsonl", "--standalone", "missing.jsonl"],
            "missing.jsonl: no scores",
        ),
    ],
    ids=[
        "malformed arch",
        "no archs to sample",
        "no trainings at a time",
        "missing score file",
        "compare without scores",
    ],
)
def test_bad_input_ends_with_one_line_and_exit_status_2(
    argv, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as raised:
        rank_audit(argv)
    assert_user_error(raised, capsys, message)
    assert not list(tmp_path.iterdir())  # refused before anything is written


def test_protocols_without_common_archs_is_a_user_error(tmp_path, capsys):
    for name, arch in (("a.jsonl", [0] * 20), ("b.jsonl", [1] * 20)):
        _write_scores(tmp_path / name, [{"arch": arch, "score": 1.0}])
    with pytest.raises(SystemExit) as raised:
        rank_audit(
            [
                "protocols",
                "--reference",
                str(tmp_path / "a.jsonl"),
                "--cheap",
                str(tmp_path / "b.jsonl"),
            ]
        )
    assert_user_error(raised, capsys, "0 arch.* scored by both protocols: nothing to compare; give")


@pytest.mark.slow
@pytest.mark.parametrize(
    "tool, args, message",
    [
        ("rank_audit.py", ["sample", "--include", "0,9"], r"rank_audit\.py sample: error: .*id 9"),
        (
            "study.py",
            ["--pipeline-dir", "no_pipeline"],
            r"study\.py: error: .*no_pipeline/1_cls_supernet/model_final\.pth is missing: run "
            r"tools/run_pipeline\.py",
        ),
    ],
    ids=["rank_audit", "study"],
)
def test_tools_exit_2_with_one_line(tool, args, message, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / tool), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and re.search(message, proc.stderr), (
        proc.stderr
    )
    assert not list(tmp_path.iterdir())


# ---- arch sets ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy():
    cfg, space, table = search_space_and_table(DEFAULT_SEARCH_CONFIG)
    return cfg, space, table


def test_sample_is_stratified_in_the_band_and_seeded(toy, tmp_path):
    cfg, space, table = toy
    lo, hi = flops_band(cfg, table, None, None)
    assert (lo, hi) == (8.5e6, 9.0e6)  # the toy search's band
    archs = sample_stratified(space, table, 12, lo, hi, seed=0)
    assert len(set(archs)) == 12
    width = (hi - lo) / 12
    assert [int((table.flops(a) - lo) // width) for a in archs] == list(
        range(12)
    )  # one per stratum
    assert archs == sample_stratified(space, table, 12, lo, hi, seed=0)
    assert archs != sample_stratified(space, table, 12, lo, hi, seed=1)
    out = tmp_path / "archs.txt"
    assert (
        rank_audit(
            [
                "sample",
                "--num",
                "5",
                "--seed",
                "2",
                "--output",
                str(out),
                "--include",
                "0," * 19 + "0",
            ]
        )
        == 0
    )
    listed = read_archs([str(out)], space)
    assert len(listed) == 6 and listed[0] == (0,) * 20


def test_read_archs_formats(toy, tmp_path):
    _, space, table = toy
    a, b, c = (0,) * 20, (1, 2, 3, 0) * 5, (3,) * 20
    text = tmp_path / "list.txt"
    text.write_text(
        "# archs\n"
        + ",".join(map(str, a))
        + "  # all 3x3\n\n"
        + " ".join(["shuffle_5x5"] * 20)
        + "\n"
    )
    yaml_list = tmp_path / "list.yaml"
    yaml_list.write_text(f"- {list(b)}\n- arch: {list(c)}\n- '{','.join(map(str, a))}'\n")
    jsonl = tmp_path / "candidates.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"generation": 0, "arch": list(x), "score": 1.0}) + "\n" for x in (c, b))
    )
    from detnas_d2.arch_io import save_arch

    save_arch(str(tmp_path / "best_arch.yaml"), b, space)
    assert read_archs([str(text)], space) == [a, (1,) * 20]
    assert read_archs([str(yaml_list)], space) == [b, c, a]
    assert read_archs([str(jsonl), str(tmp_path / "best_arch.yaml"), "random:0"], space)[:2] == [
        c,
        b,
    ]
    assert (
        len(read_archs([str(jsonl), str(tmp_path / "best_arch.yaml"), "random:0"], space)) == 3
    )  # b once
    text.write_text("0,1,2\n")
    with pytest.raises(ValueError, match="line 1"):
        read_archs([str(text)], space)


# ---- JSON-lines files ------------------------------------------------------------------------------------


def test_json_lines_drop_only_a_cut_last_line(tmp_path):
    """A writer killed mid-line leaves a last line cut short: dropped (said), and with `repair` removed from
    the file; a bad line before others is an error; blank lines are skipped."""
    path = tmp_path / "scores.jsonl"
    assert read_json_lines(path) == []
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3, "b"')
    said = []
    assert read_json_lines(path, log=said.append) == [{"a": 1}, {"a": 2}]
    assert len(said) == 1 and "the last line was cut short" in said[0]
    assert path.read_text().endswith('"b"')  # read only
    assert read_json_lines(path, repair=True, log=said.append) == [{"a": 1}, {"a": 2}]
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
    path.write_text('{"a": 1}\n{"a"\n{"a": 3}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_json_lines(path)


# ---- compare ------------------------------------------------------------------------------------------


def _write_scores(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_compare_report(toy, tmp_path, capsys):
    """Twelve archs, three seeds: a supernet that ranks them perfectly, FLOPs (and a second supernet that
    follows FLOPs) that rank them backwards inside the band; the report's figures, band, files."""
    _, space, table = toy
    archs = sample_stratified(space, table, 12, table.min_flops, table.max_flops, seed=0)
    flops = [table.flops(a) for a in archs]
    truth = [-f / 1e6 for f in flops]  # smaller is better, so FLOPs rank backwards
    sn, st = [], []
    for a, f, t in zip(archs, flops, truth):
        base = {
            "arch": list(a),
            "arch_str": arch_str(a),
            "flops": f,
            "params": table.params(a),
            "settings": {},
        }
        sn.append(
            {
                **base,
                "kind": "supernet",
                "protocol": "recipe-a",
                "seed": 0,
                "score": t / 10,
                "seconds": 1.0,
            }
        )
        sn.append(
            {
                **base,
                "kind": "supernet",
                "protocol": "recipe-b",
                "seed": 0,
                "score": f,
                "seconds": 1.0,
            }
        )
        for seed, noise in enumerate((0.0, 0.01, -0.01)):
            st.append(
                {
                    **base,
                    "kind": "standalone",
                    "protocol": "standalone",
                    "seed": seed,
                    "score": t + noise,
                    "seconds": 1.0,
                }
            )
    _write_scores(tmp_path / "sn.jsonl", sn)
    _write_scores(tmp_path / "st.jsonl", st)
    hi = sorted(flops)[7] + 1  # 8 archs in the band
    assert (
        rank_audit(
            [
                "compare",
                "--supernet",
                str(tmp_path / "sn.jsonl"),
                "--standalone",
                str(tmp_path / "st.jsonl"),
                "--flops-min",
                "0",
                "--flops-max",
                str(hi),
                "--bootstrap",
                "200",
                "--baseline",
                "recipe-a",
                "--output-dir",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "out/compare.json").read_text())
    assert summary["seeds"] == [0, 1, 2] and summary["flops_band"] == [0.0, hi]
    for name, n in (("all", 12), ("band", 8)):
        sub = summary["subsets"][name]
        assert sub["n"] == n
        sup, by_flops = sub["predictors"]["recipe-a"], sub["predictors"]["rank by FLOPs"]
        assert sup["tau"] == pytest.approx(1.0) and sup["rho"] == pytest.approx(1.0)
        assert sup["tau_ci"]["low"] == pytest.approx(1.0)
        assert sup["top"]["hits"] == sup["top"]["k"] == math.ceil(0.2 * n)
        assert by_flops["tau"] == pytest.approx(-1.0) and by_flops["top"]["hits"] == 0
        assert (
            sup["tau_gain"]["FLOPs"]["value"] == pytest.approx(2.0)
            and "recipe-a" not in sup["tau_gain"]
        )
        # "fewer FLOPs is better" ranks perfectly here: recipe-a gains nothing over the best trivial ranking
        assert sub["best_trivial"] == "-FLOPs"
        assert sup["tau_gain"]["best trivial"]["value"] == pytest.approx(0.0)
        # --baseline recipe-a: the paired difference; recipe-b ranks as FLOPs do, so every resample gives -2
        gain_b = sub["predictors"]["recipe-b"]["tau_gain"]["recipe-a"]
        assert gain_b["value"] == pytest.approx(-2.0) and gain_b["ci"]["high"] == pytest.approx(
            -2.0
        )
        assert sub["noise"]["archs_with_2_seeds"] == n and sub["noise"]["std_max"] == pytest.approx(
            0.01
        )
        # the seed-0 vs seed-1 ranking: the +0.01 noise never reorders archs 0.05M FLOPs or more apart
        assert sub["noise"]["seed_pair"] == [0, 1]
        # archs 0.05M FLOPs and more apart, seed noise 0.01: the arch is nearly all of the variance
        assert (
            sub["noise"]["arch_effect"]["reliability"] > 0.99
            and sub["noise"]["arch_effect"]["p_value"] < 0.01
        )
        blocks = sub["noise"]["arch_effect_seed_blocks"]
        assert (
            blocks["seeds"] == [0, 1, 2]
            and blocks["reliability"] > 0.99
            and blocks["p_value"] < 0.01
        )
    assert len(summary["archs"]) == 12 and sum(a["in_band"] for a in summary["archs"]) == 8
    md = (tmp_path / "out/compare.md").read_text()
    assert re.search(r"\|\s*all archs\s*\|\s*recipe-a\s*\|\s*12\s*\|\s*1\.00 \[1\.00, 1\.00\]", md)
    assert f"FLOPs <= {hi / 1e6:.2f}M" in md and "tau - tau(recipe-a) [95% CI]" in md
    assert re.search(r"\|\s*all archs\s*\|\s*12\s*\|\s*0 1 2\s*\|", md)  # the seed-blocks table
    capsys.readouterr()
    with pytest.raises(SystemExit) as raised:
        rank_audit(
            [
                "compare",
                "--supernet",
                str(tmp_path / "sn.jsonl"),
                "--standalone",
                str(tmp_path / "st.jsonl"),
                "--baseline",
                "recipe-c",
                "--output-dir",
                str(tmp_path / "out"),
            ]
        )
    assert_user_error(raised, capsys, "--baseline 'recipe-c' is none of the supernet protocols")
    assert (tmp_path / "out/compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- supernet scores: resume ---------------------------------------------------------------------------

CLS_SEARCH = str(ROOT / "configs/Toy/search_cls.yaml")
TINY = [
    "DETNAS.BN_RECALIB.IMAGES",
    "16",
    "DETNAS.BN_RECALIB.BATCH_SIZE",
    "8",
    "DETNAS.SEARCH.EVAL_IMAGES",
    "24",
    "DETNAS.SEARCH.EVAL_BATCH_SIZE",
    "24",
]


def save_random_supernet(config, path):
    """A randomly initialised supernet checkpoint (as tests/test_search.py makes them): scores are low
    but differ from arch to arch, and are deterministic."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from detnas_d2.config import get_detnas_cfg

    torch.manual_seed(0)
    model = build_model(get_detnas_cfg(config))
    DetectionCheckpointer(model, save_dir=str(Path(path).parent)).save(Path(path).stem)
    return path


def _without_timing(records):
    return [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in records]


def test_supernet_scores_resume_after_an_interruption(tmp_path, capsys):
    weights = save_random_supernet(CLS_SEARCH, tmp_path / "supernet.pth")
    archs = tmp_path / "archs.txt"
    archs.write_text(
        "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0\n3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3\n"
        "1,2,3,0,1,2,3,0,1,2,3,0,1,2,3,0,1,2,3,0\n"
    )

    def run(out, *extra):
        return rank_audit(
            [
                "supernet",
                "--config-file",
                CLS_SEARCH,
                "--archs",
                str(archs),
                "--output",
                str(out),
                *extra,
                "MODEL.WEIGHTS",
                str(weights),
                *TINY,
            ]
        )

    whole, resumed = tmp_path / "whole.jsonl", tmp_path / "resumed.jsonl"
    assert run(whole) == 0
    # interrupted after one arch, while the second line was being written (what a kill can leave)
    assert run(resumed, "--limit", "1") == 0
    with open(resumed, "a") as f:
        f.write(whole.read_text().splitlines()[1][:57])
    assert run(resumed) == 0
    assert "the last line was cut short" in capsys.readouterr().out
    expected = [json.loads(line) for line in whole.read_text().splitlines()]
    assert _without_timing(
        [json.loads(line) for line in resumed.read_text().splitlines()]
    ) == _without_timing(expected)
    r = expected[0]
    assert (
        r["kind"] == "supernet"
        and r["metric"] == "top1"
        and r["protocol"] == "supernet"
        and r["seed"] == 0
    )
    assert r["settings"]["eval_images"] == 24 and r["settings"]["weights"] == str(weights)
    assert (
        len({e["score"] for e in expected} | {e["flops"] for e in expected}) > 3
    )  # not all one value
    # nothing left to score: the file stays as it is (and no supernet is loaded)
    before = resumed.read_text()
    assert run(resumed) == 0 and resumed.read_text() == before
    assert "3 already scored" in capsys.readouterr().out
    # other settings into the same file are refused: another batch size, a checkpoint written again
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        rank_audit(
            [
                "supernet",
                "--config-file",
                CLS_SEARCH,
                "--archs",
                str(archs),
                "--output",
                str(resumed),
                "MODEL.WEIGHTS",
                str(weights),
                *TINY[:-2],
                "DETNAS.SEARCH.EVAL_BATCH_SIZE",
                "12",
            ]
        )
    assert_user_error(refused, capsys, "other settings.*eval_batch_size")
    with open(weights, "ab") as f:
        f.write(b"\0")
    with pytest.raises(SystemExit) as refused:
        run(resumed)
    assert_user_error(refused, capsys, "differing: weights_sha1")


# ---- stand-alone scores: two tiny archs end to end, killed and resumed -----------------------------------


@pytest.mark.slow
def test_standalone_end_to_end_killed_and_resumed(tmp_path, monkeypatch, capsys):
    """Two archs, --quick, two trainings at a time. The run is killed (its whole process group, as a
    terminal's Ctrl-C or a job scheduler would) once the first (arch, seed) is written; the next start
    keeps that line, trains the other arch again (reusing its finished classification step) and writes
    the lines in the arch list's order; a third start has nothing to do."""
    archs = tmp_path / "archs.txt"
    archs.write_text(
        "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0\n3,3,3,3,1,1,1,1,2,2,2,2,0,0,0,0,1,1,1,1\n"
    )
    out = tmp_path / "standalone.jsonl"
    cmd = [
        sys.executable,
        str(TOOL),
        "standalone",
        "--archs",
        str(archs),
        "--seeds",
        "0",
        "--quick",
        "--jobs",
        "2",
        "--threads",
        "1",
        "--output",
        str(out),
        "--work-dir",
        str(tmp_path / "runs"),
    ]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.time() + 600
        while not (out.exists() and out.read_text().count("\n") >= 1):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no line after 600 s"
            time.sleep(0.2)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    first_lines = out.read_text().splitlines()
    first = json.loads(first_lines[0])
    other = "a" + "".join(
        c for c in archs.read_text().splitlines()[first["arch"] == [0] * 20] if c.isdigit()
    )
    other_step4_done = (tmp_path / "runs" / other / "seed0/cls_subnet/step_done.json").exists()

    # the next starts run in this process (quicker than a new interpreter); OMP_NUM_THREADS is restored after
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    assert rank_audit(cmd[2:]) == 0
    second = capsys.readouterr()
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["arch_str"] for r in records] == [
        line.split("#")[0].strip() for line in archs.read_text().splitlines()
    ]
    assert (
        first_lines[0] in lines
    )  # the finished (arch, seed) was kept as it was, not trained again
    assert f"{len(first_lines)} runs already in" in second.out
    if (
        len(first_lines) == 1
    ):  # the other arch was stopped halfway: started again, keeping a finished step 4
        assert "1 to train" in second.out and ("reusing" in second.out) == other_step4_done
    for r in records:
        assert r["kind"] == "standalone" and r["seed"] == 0 and r["metric"] == "bbox_AP"
        assert isinstance(r["score"], float)
        assert 0 <= r["top1"] <= 100 and r["flops"] > 0 and r["seconds"] > 0
        assert r["settings"]["det_opts"][:2] == ["SOLVER.MAX_ITER", "4"]
        run_dir = Path(r["run_dir"])
        det_cmd = (run_dir / "det_subnet/command.txt").read_text()
        assert (
            "cls_subnet/model_final.pth" in det_cmd
            and "SEED 0" in det_cmd
            and "arch.yaml" in det_cmd
        )

    assert rank_audit(cmd[2:]) == 0
    assert "0 to train" in capsys.readouterr().out and out.read_text().splitlines() == lines


# ---- protocol against protocol ---------------------------------------------------------------------------


def test_protocols_report_by_hand(tmp_path, capsys):
    """A reference score file (archs a..e scored 5..1, 9000 images and 10 s each) against a cheap search's
    candidates.jsonl that swaps b and c, races e out on a slice, and spends 1000 images and 1 s a candidate."""
    archs = [[i] * 20 for i in range(5)]
    reference = [
        {"arch": a, "score": 5.0 - i, "seconds": 10.0, "images_recalib": 4000, "images_eval": 5000}
        for i, a in enumerate(archs)
    ]
    cheap_scores = [5.0, 3.0, 4.0, 2.0, 0.5]
    cheap = [
        {
            "arch": a,
            "score": s,
            "full": i < 4,
            "images_recalib": 200,
            "images_eval": 800,
            "seconds_wall": 1.0,
            "seconds_inference": 0.7,
        }
        for i, (a, s) in enumerate(zip(archs, cheap_scores))
    ]
    _write_scores(tmp_path / "reference.jsonl", reference)
    _write_scores(tmp_path / "candidates.jsonl", cheap)
    out = tmp_path / "protocols.json"
    assert (
        rank_audit(
            [
                "protocols",
                "--reference",
                str(tmp_path / "reference.jsonl"),
                "--cheap",
                str(tmp_path / "candidates.jsonl"),
                "--topk",
                "2",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    f = json.loads(out.read_text())
    # 4 archs with both full scores, ranked 1 2 3 4 vs 1 3 2 4: one discordant pair of 6, sum d^2 = 2
    assert (f["archs_common"], f["archs_compared"], f["raced_out"]) == (5, 4, 1)
    assert f["tau"] == pytest.approx((5 - 1) / 6) and f["rho"] == pytest.approx(
        1 - 6 * 2 / (4 * 15)
    )
    assert f["topk"] == {"k": 2, "hits": 1, "reference_top_raced_out": 0}  # {a, b} against {a, c}
    assert f["best_agrees"] and f["best_cheap"] == archs[0]
    assert f["images"] == {"reference": 45000.0, "cheap": 5000.0, "ratio": pytest.approx(1 / 9)}
    assert f["seconds"] == {"reference": 50.0, "cheap": 5.0, "ratio": pytest.approx(0.1)}
    assert "| Kendall tau-b" in capsys.readouterr().out

    # a reference that prefers b: the cheap best (a) disagrees, 1.0 below the reference best
    swapped = [dict(r, score=[4.0, 5.0, 3.0, 2.0, 1.0][i]) for i, r in enumerate(reference)]
    _write_scores(tmp_path / "swapped.jsonl", swapped)
    f = protocol_figures(
        read_protocol(str(tmp_path / "swapped.jsonl")),
        read_protocol(str(tmp_path / "candidates.jsonl")),
        2,
    )
    assert (
        not f["best_agrees"] and f["best_reference_score"] - f["best_cheap_reference_score"] == 1.0
    )
    _write_scores(tmp_path / "twice.jsonl", reference + reference[:1])
    with pytest.raises(ValueError, match="scored twice"):
        read_protocol(str(tmp_path / "twice.jsonl"))
