"""Zero-shot scores (detnas_d2/zero_shot): deterministic per seed and different across archs, their known
properties on constructed cases (a wider space scores higher; the stem's entropy is log sqrt(fan-in) +
log(channels)), the audit's `zeroshot` part (score lines compare reads, resumed), and a toy search that
scores with them and no supernet, resumed, and its refusals."""

import json
import math
import os

import detnas_d2  # noqa: F401  (compat shims, registrations)
from detnas_d2 import search_net

import pytest

from detnas_d2.arch_io import load_arch
from detnas_d2.audit.cli import main as rank_audit
from detnas_d2.config import get_detnas_cfg
from detnas_d2.search import run_search
from detnas_d2.search.runner import check_search
from detnas_d2.search_space import space_from_cfg
from detnas_d2.user_errors import UserError
from detnas_d2.zero_shot import ZeroShotScorer, ZeroShotSettings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEARCH_CONFIG = os.path.join(ROOT, "configs", "Toy", "search_det.yaml")
# Small enough for tests: 2 initialisations of 4 random 64x64 images each.
TINY = [
    "DETNAS.SEARCH.ZERO_SHOT.REPEATS",
    "2",
    "DETNAS.SEARCH.ZERO_SHOT.BATCH_SIZE",
    "4",
    "DETNAS.SEARCH.ZERO_SHOT.INPUT_SIZE",
    "64",
]
SMALL_SEARCH = [
    "DETNAS.SEARCH.POPULATION",
    "4",
    "DETNAS.SEARCH.GENERATIONS",
    "2",
    "DETNAS.SEARCH.TOPK",
    "2",
    "DETNAS.SEARCH.NUM_MUTATION",
    "1",
    "DETNAS.SEARCH.NUM_CROSSOVER",
    "1",
]
ALL_3X3, ALL_5X5, ALL_XCEPTION = (0,) * 20, (1,) * 20, (3,) * 20


def toy_cfg(*opts):
    return get_detnas_cfg(SEARCH_CONFIG, TINY + [str(o) for o in opts])


def scorer(method, *opts):
    cfg = toy_cfg(*opts)
    return ZeroShotScorer(cfg, ZeroShotSettings.from_cfg(cfg, method))


@pytest.mark.parametrize("method", ["entropy", "zen"])
def test_scores_are_deterministic_per_seed_and_differ_across_archs(method):
    first = scorer(method)
    results = [first.score(arch) for arch in (ALL_3X3, ALL_5X5, ALL_XCEPTION)]
    scores = [r["score"] for r in results]
    assert all(math.isfinite(s) for s in scores) and len(set(scores)) == 3
    again = scorer(method).score(ALL_5X5)
    assert again["score"] == scores[1] and again["seed_scores"] == results[1]["seed_scores"]
    r = results[0]
    assert len(r["seed_scores"]) == 2 and r["seed_scores"][0] != r["seed_scores"][1]
    assert r["score"] == pytest.approx(sum(r["seed_scores"]) / 2)
    assert r["images_recalib"] == 0 and r["images_eval"] == 2 * 4 * (2 if method == "zen" else 1)
    assert r["seconds_build"] > 0 and r["seconds_score"] > 0
    other_seed = scorer(method, "DETNAS.SEARCH.SEED", 1).score(ALL_5X5)["score"]
    assert other_seed != scores[1]


@pytest.mark.parametrize("method", ["entropy", "zen"])
def test_a_wider_space_scores_higher(method):
    """Both scores grow with width (log channels, and the gain of wider convs)."""
    for arch in (ALL_3X3, ALL_XCEPTION):
        narrow = scorer(method).score(arch)["score"]
        wide = scorer(method, "MODEL.DETNAS.WIDTH_MULT", 0.5).score(arch)["score"]
        assert wide > narrow + 10


def test_stem_entropy_is_log_sqrt_fan_in_plus_log_channels():
    """With all the weight on the stem level, the entropy is the stem conv's log gain on Gaussian images,
    log sqrt(3 x 3 x 3) for std-1 weights, plus log(its channels): the same for every arch."""
    stem_only = ("DETNAS.SEARCH.ZERO_SHOT.STAGE_WEIGHTS", (1.0, 0.0, 0.0, 0.0, 0.0))
    scores = {arch: scorer("entropy", *stem_only).score(arch) for arch in (ALL_3X3, ALL_XCEPTION)}
    channels = space_from_cfg(toy_cfg()).stem_out
    expected = 0.5 * math.log(27) + math.log(channels)
    for result in scores.values():
        assert result["score"] == pytest.approx(expected, abs=0.2)
    assert (
        scores[ALL_3X3]["score"] == scores[ALL_XCEPTION]["score"]
    )  # paired: the same stem weights


def test_bad_zero_shot_settings_are_one_line():
    with pytest.raises(UserError, match=r"unknown zero-shot scorer 'nope'; choose one of"):
        ZeroShotSettings.from_cfg(toy_cfg(), "nope")
    with pytest.raises(UserError, match=r"ZERO_SHOT.REPEATS must be >= 1, got 0"):
        ZeroShotSettings.from_cfg(toy_cfg("DETNAS.SEARCH.ZERO_SHOT.REPEATS", 0), "zen")
    three = ("DETNAS.SEARCH.ZERO_SHOT.STAGE_WEIGHTS", (0.0, 1.0, 6.0))
    with pytest.raises(ValueError, match=r"has 3 weights, but space 'small' has 5 feature levels"):
        scorer("entropy", *three).score(ALL_3X3)
    with pytest.raises(ValueError, match="no evaluation slices, supernets or bootstrap"):
        scorer("zen").score(ALL_3X3, 0.5)


# ---- the audit's zeroshot part ----------------------------------------------------------------------


def _without_timing(records):
    return [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in records]


def test_rank_audit_zeroshot_scores_resume_and_compare_reads_them(tmp_path, capsys):
    archs = [ALL_3X3, ALL_5X5, ALL_XCEPTION, (2,) * 20]
    archs_file = tmp_path / "archs.txt"
    archs_file.write_text("".join(",".join(map(str, a)) + "\n" for a in archs))

    def run(out, *extra):
        argv = ["zeroshot", "--archs", str(archs_file), "--scorer", "entropy", "--output", str(out)]
        return rank_audit(argv + list(extra) + TINY)

    whole, resumed = tmp_path / "whole.jsonl", tmp_path / "resumed.jsonl"
    assert run(whole) == 0
    assert run(resumed, "--limit", "1") == 0
    with open(resumed, "a") as f:  # a kill while the second line was written
        f.write(whole.read_text().splitlines()[1][:40])
    assert run(resumed) == 0
    assert "the last line was cut short" in capsys.readouterr().out
    lines = [json.loads(line) for line in whole.read_text().splitlines()]
    assert _without_timing(lines) == _without_timing(
        [json.loads(line) for line in resumed.read_text().splitlines()]
    )
    assert [tuple(r["arch"]) for r in lines] == archs
    r = lines[0]
    assert (r["kind"], r["metric"], r["protocol"]) == ("supernet",) + ("zero_shot_entropy",) * 2
    assert r["images_recalib"] == 0 and r["images_eval"] == 8 and r["seconds"] > 0
    assert r["settings"]["scorer"] == "zero_shot_entropy" and r["settings"]["input_size"] == 64
    before = resumed.read_text()
    assert run(resumed) == 0 and resumed.read_text() == before
    assert "4 already scored" in capsys.readouterr().out

    # compare reads them beside a stand-alone truth that ranks the archs as the scores do
    truth = tmp_path / "standalone.jsonl"
    order = sorted(lines, key=lambda r: r["score"])
    truth.write_text(
        "".join(
            json.dumps(
                {
                    "arch": r["arch"],
                    "flops": r["flops"],
                    "params": r["params"],
                    "score": float(rank + seed),
                    "seed": seed,
                    "kind": "standalone",
                    "arch_str": r["arch_str"],
                }
            )
            + "\n"
            for rank, r in enumerate(order)
            for seed in (0, 1)
        )
    )
    argv = ["compare", "--supernet", str(whole), "--standalone", str(truth)]
    assert rank_audit(argv + ["--output-dir", str(tmp_path), "--bootstrap", "50"]) == 0
    figures = json.loads((tmp_path / "compare.json").read_text())["subsets"]["all"]
    assert figures["n"] == 4 and figures["predictors"]["zero_shot_entropy"]["tau"] == 1.0


# ---- a search scored zero-shot, without a supernet ----------------------------------------------------


def search_opts(out, *opts):
    return (
        ["DETNAS.SEARCH.SCORER", "zero_shot_zen", "OUTPUT_DIR", str(out)]
        + SMALL_SEARCH
        + list(opts)
    )


def search_argv(out, *opts, resume=False):
    """search_net.py's command line: no MODEL.WEIGHTS."""
    resume = ["--resume"] if resume else []
    return ["--config-file", SEARCH_CONFIG] + resume + TINY + search_opts(out, *opts)


def _candidates(out):
    with open(out / "candidates.jsonl") as f:
        return [json.loads(line) for line in f]


def test_zero_shot_search_needs_no_supernet_and_resumes(tmp_path):
    whole = tmp_path / "whole"
    search_net.run(search_argv(whole))
    lines = _candidates(whole)
    assert len(lines) == 8 and len({tuple(r["arch"]) for r in lines}) == 8
    assert all(8.5e6 <= r["flops"] <= 9.0e6 for r in lines)
    assert all(r["images_recalib"] == 0 and len(r["seed_scores"]) == 2 for r in lines)
    best = max(lines, key=lambda r: r["score"])
    space = space_from_cfg(toy_cfg())
    assert load_arch(str(whole / "best_arch.yaml"), space) == tuple(best["arch"])
    best_arch = (whole / "best_arch.yaml").read_text()
    assert "fitness: zero_shot_zen" in best_arch and "scorer: zero_shot_zen" in best_arch
    assert "supernet" not in best_arch

    # stopped after 5 candidates, then resumed with the full budget: the same search
    resumed = tmp_path / "resumed"
    search_net.run(search_argv(resumed, "DETNAS.SEARCH.MAX_CANDIDATES", "5"))
    first_part = _candidates(resumed)
    assert len(first_part) == 5
    search_net.run(search_argv(resumed, resume=True))
    again = _candidates(resumed)
    assert again[:5] == first_part, "scored candidates are kept as they were"

    def key(r):
        return r["arch"], r["generation"], r["origin"], r["score"]

    assert [key(r) for r in again] == [key(r) for r in lines]
    # another zero-shot setting does not resume it
    other = toy_cfg(*search_opts(resumed, "DETNAS.SEARCH.ZERO_SHOT.REPEATS", "3"))
    with pytest.raises(UserError, match=r"other settings.*zero_shot.*'repeats': 2.*'repeats': 3"):
        check_search(other, resume=True)


def test_unknown_scorer_and_supernet_only_options_are_refused(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(
        UserError,
        match=r"DETNAS.SEARCH.SCORER must be one of \['supernet', 'zero_shot_entropy', "
        r"'zero_shot_zen'\], got 'zero_shot_nope'",
    ):
        run_search(toy_cfg(*search_opts(out, "DETNAS.SEARCH.SCORER", "zero_shot_nope")))
    for key, value in (
        ("DETNAS.SEARCH.FINALISTS.TOPK", "2"),
        ("DETNAS.SEARCH.RACING.SLICES", "(0.5,)"),
        ("DETNAS.SEARCH.ENSEMBLE_WEIGHTS", "['a.pth', 'b.pth']"),
    ):
        with pytest.raises(UserError, match=f"{key} only apply to supernet scores: unset them"):
            check_search(toy_cfg(*search_opts(out, key, value)))
    assert not os.path.exists(tmp_path / "out")
