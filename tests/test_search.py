"""Step 3, the search: algorithm and state (fake fitness), BN recalibration, scoring with one and two
processes, end to end runs on the toy supernet detector, and the errors a user can run into."""

import json
import logging
import math
import os
import random
import re

import detnas_d2  # noqa: F401  (compat shims, registrations)
from detnas_d2 import add_detnas_config

import pytest
import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from detnas_d2.arch_info import describe
from detnas_d2.arch_io import load_arch, load_arch_record
from detnas_d2.engine.launch import launch
from detnas_d2.flops import get_flops_table
from detnas_d2.modeling import bn_layers
from detnas_d2.recalibration import recalibration_batches
from detnas_d2.search import (
    DIST_MODES,
    ArchConstraints,
    CandidateScorer,
    DistributedScoring,
    EvolutionSearch,
    ScoringSettings,
    SearchOutputs,
    SearchSettings,
    SearchStateError,
    build_scorer,
    run_search,
)
from detnas_d2.search.outputs import BEST_ARCH_FILE
from detnas_d2.search.racing import SLICE_SCORES, promoted, rung_margin
from detnas_d2.search.scoring import scoring_cfg
from detnas_d2.search_space import get_space
from detnas_d2.tasks import get_task
from detnas_d2.user_errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DET_CONFIG = os.path.join(ROOT, "configs", "Toy", "search_det.yaml")
CLS_CONFIG = os.path.join(ROOT, "configs", "Toy", "search_cls.yaml")
SPACE = get_space("small", 0.25)
INPUT_SIZE = 128
FLOPS_MAX = 9.0e6


@pytest.fixture(scope="module")
def table():
    return get_flops_table(SPACE, INPUT_SIZE)


def make_cfg(config, out_dir, weights, opts=(), **search):
    cfg = get_cfg()
    add_detnas_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(list(opts))
    cfg.OUTPUT_DIR = str(out_dir)
    cfg.MODEL.WEIGHTS = str(weights)
    small = dict(
        POPULATION=4,
        GENERATIONS=2,
        TOPK=2,
        NUM_MUTATION=1,
        NUM_CROSSOVER=1,
        MAX_CANDIDATES=100,
        BN_RECALIB_IMAGES=18,
        BN_RECALIB_BATCH_SIZE=4,
        EVAL_IMAGES=18,
        EVAL_BATCH_SIZE=4,
    )
    small.update(search)
    recalib = {"BN_RECALIB_IMAGES": "IMAGES", "BN_RECALIB_BATCH_SIZE": "BATCH_SIZE"}
    for key, value in small.items():
        if key in recalib:
            setattr(cfg.DETNAS.BN_RECALIB, recalib[key], value)
        else:
            setattr(cfg.DETNAS.SEARCH, key, value)
    return cfg


def save_random_supernet(config, path, opts=()):
    """A randomly initialised supernet checkpoint: low but deterministic scores."""
    cfg = make_cfg(config, os.path.dirname(path), "", opts)
    torch.manual_seed(0)
    checkpointer = DetectionCheckpointer(build_model(cfg), save_dir=os.path.dirname(path))
    checkpointer.save(os.path.splitext(os.path.basename(path))[0])
    return path


@pytest.fixture(scope="module")
def det_weights(tmp_path_factory):
    return save_random_supernet(DET_CONFIG, str(tmp_path_factory.mktemp("ckpt") / "supernet.pth"))


# ---- the algorithm and its state, with a fake fitness ---------------------------------------------


def fake_fitness(arch):
    """Deterministic, prefers xception blocks late in the net."""
    return sum((i + 1) * (a == 3) for i, a in enumerate(arch)) + 0.01 * sum(arch)


def fake_score(archs):
    return [{"score": fake_fitness(a)} for a in archs]


def settings(**kw):
    base = dict(
        population=8,
        generations=4,
        topk=3,
        num_mutation=3,
        mutation_prob=0.2,
        num_crossover=3,
        max_candidates=1000,
        seed=3,
    )
    base.update(kw)
    return SearchSettings(**base)


def test_evolution_rules(table, tmp_path):
    constraints = ArchConstraints(table, SPACE, INPUT_SIZE, flops_max=FLOPS_MAX)
    search = EvolutionSearch(settings(), SPACE, constraints, str(tmp_path / "state.json"))
    state = search.run(fake_score)
    history = state.history
    assert len(history) == 32 and state.finished and state.generation == 4
    archs = [tuple(r["arch"]) for r in history]
    assert len(set(archs)) == len(archs), "an arch was scored twice"
    assert all(
        table.flops(a) <= FLOPS_MAX and r["flops"] == table.flops(a) for a, r in zip(archs, history)
    )
    assert {r["origin"] for r in history if r["generation"] == 0} == {"random"}
    for g in range(1, 4):
        origins = [r["origin"] for r in history if r["generation"] == g]
        assert (
            origins.count("mutation") == 3 and origins.count("crossover") == 3 and len(origins) == 8
        )
        # parents: the top-3 of all earlier generations; every child comes from them
        earlier = sorted(
            (r for r in history if r["generation"] < g), key=lambda r: (-r["score"], r["index"])
        )
        parents = [r["arch"] for r in earlier[:3]]
        for r in history:
            if r["generation"] == g and r["origin"] == "crossover":
                assert all(any(gene == p[i] for p in parents) for i, gene in enumerate(r["arch"]))
    # selection works: later generations beat the random first one on average
    mean = lambda g: sum(r["score"] for r in history if r["generation"] == g) / 8  # noqa: E731
    assert mean(3) > mean(0)
    assert search.best()["score"] == max(r["score"] for r in history)

    random_search = EvolutionSearch(settings(mode="random"), SPACE, constraints, None)
    random_history = random_search.run(fake_score).history
    assert len(random_history) == 32 and {r["origin"] for r in random_history} == {"random"}
    assert len({tuple(r["arch"]) for r in random_history}) == 32

    budget = EvolutionSearch(settings(max_candidates=13), SPACE, constraints, None).run(fake_score)
    assert len(budget.history) == 13 and budget.generation == 1  # stopped inside generation 1


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_a_search_that_ranks_nothing_says_so(table, tmp_path):
    constraints = ArchConstraints(table, SPACE, INPUT_SIZE, flops_max=FLOPS_MAX)
    search = EvolutionSearch(settings(generations=1), SPACE, constraints, None)
    search.run(lambda archs: [{"score": 0.0} for _ in archs])
    # on the module's own logger: Detectron2's setup_logger stops "detnas_d2" records reaching the root
    records, logger = _Records(), logging.getLogger("detnas_d2.search.outputs")
    logger.addHandler(records)
    try:
        with EventStorage():
            SearchOutputs(str(tmp_path), SPACE, "bbox_AP", 8, []).finish(search)
    finally:
        logger.removeHandler(records)
    best = load_arch_record(str(tmp_path / BEST_ARCH_FILE))
    assert best.metadata["ranking"] == "none: all 8 candidates scored 0.000"
    assert any("the supernet does not tell these archs apart" in m for m in records.messages)
    # a search that ranks says nothing of the kind
    search = EvolutionSearch(settings(generations=1), SPACE, constraints, None)
    search.run(fake_score)
    with EventStorage():
        SearchOutputs(str(tmp_path / "ranked"), SPACE, "bbox_AP", 8, []).finish(search)
    assert "ranking" not in load_arch_record(str(tmp_path / "ranked" / BEST_ARCH_FILE)).metadata


class Crash(Exception):
    pass


def without_timings(history):
    return [{k: v for k, v in r.items() if not k.startswith("seconds_")} for r in history]


@pytest.mark.parametrize("chunk_size", [1, 3])
def test_resume_after_crash_matches_uninterrupted(table, tmp_path, chunk_size):
    constraints = ArchConstraints(table, SPACE, INPUT_SIZE, flops_max=FLOPS_MAX)
    full = EvolutionSearch(settings(), SPACE, constraints, str(tmp_path / "full.json")).run(
        fake_score, chunk_size
    )

    path = str(tmp_path / "crashed.json")
    calls = []

    def crash_in_generation_2(archs):  # dies on the 2nd chunk of generation 2
        calls.append(archs)
        if len(calls) == -(-8 // chunk_size) * 2 + 2:
            raise Crash()
        return fake_score(archs)

    with pytest.raises(Crash):
        EvolutionSearch(settings(), SPACE, constraints, path).run(crash_in_generation_2, chunk_size)
    with open(path) as f:
        saved = json.load(f)
    assert saved["generation"] == 2 and 16 < len(saved["history"]) < 24
    rescored = []
    resumed = EvolutionSearch(settings(), SPACE, constraints, path, resume=True)
    state = resumed.run(lambda archs: rescored.extend(archs) or fake_score(archs), chunk_size)
    assert without_timings(state.history) == without_timings(full.history)
    assert resumed.best()["arch"] == full.history[full.topk[0]]["arch"]
    done = {tuple(r["arch"]) for r in saved["history"]}
    assert len(rescored) == 32 - len(done) and not done & set(rescored), (
        "a scored candidate was scored again"
    )

    # A larger budget continues a finished search exactly like a search run with it from the start.
    more = EvolutionSearch(settings(generations=5), SPACE, constraints, path, resume=True).run(
        fake_score, chunk_size
    )
    reference = EvolutionSearch(settings(generations=5), SPACE, constraints, None).run(
        fake_score, chunk_size
    )
    assert (
        without_timings(more.history) == without_timings(reference.history)
        and len(more.history) == 40
    )


def test_state_errors(table, tmp_path):
    constraints = ArchConstraints(table, SPACE, INPUT_SIZE, flops_max=FLOPS_MAX)
    path = str(tmp_path / "state.json")
    EvolutionSearch(settings(generations=1), SPACE, constraints, path).run(fake_score)
    assert os.path.exists(path + ".bak")
    with pytest.raises(SearchStateError, match="--resume"):
        EvolutionSearch(settings(), SPACE, constraints, path)
    with pytest.raises(SearchStateError, match=r"population: 8 -> 6"):
        EvolutionSearch(settings(population=6), SPACE, constraints, path, resume=True)

    with open(path) as f:
        text = f.read()
    corrupt = text[: len(text) // 2]
    with open(path, "w") as f:
        f.write(corrupt)
    with pytest.raises(SearchStateError, match=r"state\.json is corrupt.*state\.json\.bak"):
        EvolutionSearch(settings(), SPACE, constraints, path, resume=True)
    with open(path) as f:
        assert f.read() == corrupt, "a corrupt state file must be left as it is"


def test_impossible_constraints(table, tmp_path):
    lo, hi = table.min_flops, table.max_flops
    expected_range = (
        rf"FLOPs {lo / 1e6:.2f}M\.\.{hi / 1e6:.2f}M, params {table.min_params / 1e6:.3f}M"
    )
    # MODEL.WEIGHTS does not exist: the constraints fail first, before anything is loaded.
    for limits, problem in [
        (dict(FLOPS_MAX=lo - 1), "below the smallest FLOPs"),
        (dict(FLOPS_MIN=hi + 1, FLOPS_MAX=0.0), "above the largest FLOPs"),
        (dict(FLOPS_MAX=0.0, PARAMS_MAX=table.min_params - 1), "below the smallest params"),
        (dict(FLOPS_MIN=9e6, FLOPS_MAX=8e6), "FLOPS_MIN=9e\\+06 > DETNAS.SEARCH.FLOPS_MAX=8e\\+06"),
    ]:
        cfg = make_cfg(DET_CONFIG, tmp_path, tmp_path / "missing.pth", **limits)
        with pytest.raises(ValueError, match=problem) as info:
            run_search(cfg)
        assert "Impossible search constraints" in str(info.value)
        assert re.search(expected_range, str(info.value))
    assert not os.path.exists(tmp_path / "search_state.json")


# ---- scoring -----------------------------------------------------------------------------------


def test_bn_recalibration_touches_only_the_active_path(det_weights, tmp_path):
    cfg = make_cfg(DET_CONFIG, tmp_path, det_weights)
    scorer = build_scorer(cfg)
    supernet, model = scorer.supernets[0], scorer.models[0]
    arch = SPACE.random_arch(random.Random(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = scorer.score(arch)
    assert result["score"] >= 0 and result["seconds_recalib"] > 0
    after = model.state_dict()

    active = {id(m) for block in supernet.active_modules() for m in block.modules()}
    names = {id(m): n for n, m in model.named_modules()}
    for layer in bn_layers(model):
        name = names[id(layer)]
        changed = not torch.equal(before[name + ".running_mean"], after[name + ".running_mean"])
        assert changed == (id(layer) in active), (
            f"{name}: changed={changed}, on the path={id(layer) in active}"
        )
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k), (
        "weights changed"
    )

    # The stem's BN sees conv(image) of every recalibration image: its statistics are exact.
    conv = supernet.stem.conv  # detectron2 Conv2d: conv, then its norm, then ReLU
    stem_bn = conv.norm
    inputs = [
        F.conv2d(
            model.preprocess_image(b).tensor, conv.weight, conv.bias, conv.stride, conv.padding
        )
        for b in scorer.recalib_batches
    ]
    x = torch.cat([i.transpose(0, 1).reshape(i.shape[1], -1) for i in inputs], dim=1).double()
    torch.testing.assert_close(stem_bn.running_mean.double(), x.mean(dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stem_bn.running_var.double(), x.var(dim=1), rtol=1e-5, atol=1e-6)

    # Recalibrating the same path again gives the same statistics and score.
    again = scorer.score(arch)
    assert again["score"] == result["score"]
    assert all(torch.equal(after[k], v) for k, v in model.state_dict().items())


def test_bn_recalibration_covers_fpn_and_box_head(tmp_path):
    """SyncBN in FPN and the box head (the COCO recipe) run on every path: recalibrated too, with the
    whole model running, and without synchronising (here: no process group, CPU)."""
    opts = [
        "MODEL.FPN.NORM",
        "SyncBN",
        "MODEL.ROI_BOX_HEAD.NUM_CONV",
        1,
        "MODEL.ROI_BOX_HEAD.CONV_DIM",
        16,
        "MODEL.ROI_BOX_HEAD.NORM",
        "SyncBN",
    ]
    weights = save_random_supernet(DET_CONFIG, str(tmp_path / "syncbn.pth"), opts)
    scorer = build_scorer(
        make_cfg(DET_CONFIG, tmp_path, weights, opts, BN_RECALIB_IMAGES=8, EVAL_IMAGES=4)
    )
    model = scorer.models[0]
    heads = bn_layers(model.roi_heads) + [
        m for m in bn_layers(model.backbone) if m not in set(model.backbone.bottom_up.modules())
    ]
    assert len(heads) == 1 + 4 + 4 and all(isinstance(m, torch.nn.SyncBatchNorm) for m in heads)
    before = [m.running_var.clone() for m in heads]
    scorer.score(SPACE.default_arch())
    assert all(not torch.equal(b, m.running_var) for b, m in zip(before, heads))


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def _score_in_two_processes(cfg_text, archs, out_file):
    cfg = get_cfg()
    add_detnas_config(cfg)
    cfg.merge_from_other_cfg(CfgNode.load_cfg(cfg_text))
    results = {}
    for mode in DIST_MODES:
        cfg.DETNAS.SEARCH.DIST_MODE = mode
        scorer = build_scorer(cfg)
        pool = DistributedScoring(scorer, mode)
        if not comm.is_main_process():
            pool.serve()
            continue
        scores = []
        for start in range(0, len(archs), pool.chunk_size):
            scores += [r["score"] for r in pool.score(archs[start : start + pool.chunk_size])]
        pool.stop()
        results[mode] = scores
        if mode == "split_images":  # every process recalibrated the last arch together
            torch.save(_bn_state(scorer.models[0]), out_file + ".bn")
    if comm.is_main_process():
        with open(out_file, "w") as f:
            json.dump(results, f)


@pytest.mark.slow
def test_one_and_two_processes_give_the_same_scores(det_weights, tmp_path):
    # All 64 images of toy_det_search (8 batches): enough for the random supernet to score above 0.
    archs = [SPACE.random_arch(random.Random(s)) for s in (2, 3, 4)]
    cfg = make_cfg(DET_CONFIG, tmp_path, det_weights, EVAL_IMAGES=0, EVAL_BATCH_SIZE=8)
    scorer = build_scorer(cfg)
    single = [scorer.score(a)["score"] for a in archs]
    assert len(set(single)) > 1, f"the archs should score differently: {single}"
    single_bn = _bn_state(scorer.models[0])

    out_file = str(tmp_path / "two.json")
    launch(_score_in_two_processes, 2, dist_url="auto", args=(cfg.dump(), archs, out_file))
    with open(out_file) as f:
        two = json.load(f)
    for mode in DIST_MODES:
        assert two[mode] == pytest.approx(single, rel=1e-4, abs=1e-9), mode
    two_bn = torch.load(out_file + ".bn")
    for key, value in single_bn.items():
        torch.testing.assert_close(two_bn[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_top1_fitness_scores_a_classifier(tmp_path):
    weights = save_random_supernet(CLS_CONFIG, str(tmp_path / "cls_supernet.pth"))
    cfg = make_cfg(
        CLS_CONFIG,
        tmp_path,
        weights,
        BN_RECALIB_IMAGES=40,
        BN_RECALIB_BATCH_SIZE=20,
        EVAL_IMAGES=0,
        EVAL_BATCH_SIZE=50,
    )
    scorer = build_scorer(cfg)
    head_bn = bn_layers(scorer.models[0].head)[0]
    before = head_bn.running_mean.clone()
    result = scorer.score(SPACE.default_arch())
    assert 0.0 <= result["score"] <= 100.0
    assert sum(b.num_images for b in scorer.eval_segments) == len(
        DatasetCatalog.get("toy_cls_search")
    )  # 0: all
    # the head's BN runs on every path and is recalibrated with it
    assert not torch.equal(before, head_bn.running_mean)


# ---- end to end --------------------------------------------------------------------------------


@pytest.mark.slow
def test_search_end_to_end_and_resume(det_weights, tmp_path):
    out = tmp_path / "full"
    best = run_search(make_cfg(DET_CONFIG, out, det_weights))
    names = sorted(os.listdir(out))
    for expected in (
        "best_arch.yaml",
        "candidates.jsonl",
        "search_scores.png",
        "search_state.json",
    ):
        assert expected in names
    assert any(n.startswith("events.out.tfevents") for n in names)
    with open(out / "search_scores.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(out / "candidates.jsonl") as f:
        lines = [json.loads(line) for line in f]
    assert len(lines) == 8 and [r["generation"] for r in lines] == [0] * 4 + [1] * 4
    assert len({tuple(r["arch"]) for r in lines}) == 8
    assert all(r["flops"] <= FLOPS_MAX for r in lines)
    assert all(
        r["arch_names"][0].startswith("shuffle") and r["seconds_inference"] > 0 for r in lines
    )
    assert best["score"] == max(r["score"] for r in lines)
    assert load_arch(str(out / "best_arch.yaml"), SPACE) == tuple(best["arch"])
    # The file says at which input size its FLOPs were measured, and arch_info reports the same FLOPs.
    info = describe(str(out / "best_arch.yaml"))
    assert info["input_size"] == [INPUT_SIZE, INPUT_SIZE] and info["flops"] == best["flops"]

    # Stopped after 5 candidates (inside generation 1), then resumed with the full budget.
    out2 = tmp_path / "resumed"
    run_search(make_cfg(DET_CONFIG, out2, det_weights, MAX_CANDIDATES=5))
    with open(out2 / "candidates.jsonl") as f:
        first_part = [json.loads(line) for line in f]
    assert len(first_part) == 5
    resumed_best = run_search(
        make_cfg(DET_CONFIG, out2, det_weights, DIST_MODE="split_candidates"), resume=True
    )
    with open(out2 / "candidates.jsonl") as f:
        resumed = [json.loads(line) for line in f]
    assert resumed[:5] == first_part, "scored candidates are kept as they were (not scored again)"
    key = lambda r: (r["arch"], r["generation"], r["origin"], r["score"])  # noqa: E731
    assert [key(r) for r in resumed] == [key(r) for r in lines]
    assert resumed_best["arch"] == best["arch"]


def test_checkpoint_errors(tmp_path):
    with pytest.raises(UserError, match=r"MODEL.WEIGHTS .*nothing\.pth: no such file"):
        run_search(make_cfg(DET_CONFIG, tmp_path, tmp_path / "nothing.pth"))
    large = save_random_supernet(
        DET_CONFIG, str(tmp_path / "large.pth"), ["MODEL.DETNAS.SPACE", "large"]
    )
    with pytest.raises(
        ValueError, match=r"large\.pth.*do not fit.*space 'small'.*MODEL.DETNAS.SPACE"
    ):
        build_scorer(make_cfg(DET_CONFIG, tmp_path, large))


def test_recalibration_image_count_must_be_positive():
    with pytest.raises(ValueError, match="DETNAS.BN_RECALIB.IMAGES must be positive, got 0"):
        recalibration_batches("toy_det_train", 0, 4, 0, None, False)


# ---- racing (DETNAS.SEARCH.RACING) --------------------------------------------------------------

RACE_IMAGES = 200
RACE_NOISE = 1.0  # every per-image score lies within this of the arch's quality


def per_image_scores(arch):
    rng = random.Random(",".join(map(str, arch)))
    return [fake_fitness(arch) + rng.uniform(-RACE_NOISE, RACE_NOISE) for _ in range(RACE_IMAGES)]


def race_score(archs, fraction=1.0):
    """A synthetic fitness with known per-image scores: the mean over the first `fraction` of the images."""
    n = math.ceil(fraction * RACE_IMAGES)
    return [{"score": sum(per_image_scores(a)[:n]) / n, "images_eval": n} for a in archs]


def test_racing_rule_never_drops_a_top_k_candidate():
    rng = random.Random(0)
    dropped_without_margin = 0
    for _ in range(300):
        k, d = rng.randint(1, 5), rng.uniform(0.1, 2.0)
        truth = [rng.gauss(0, 2) for _ in range(rng.randint(2, 30))]
        slices = [t + rng.uniform(-d, d) for t in truth]  # slice scores within d of the full ones
        earlier_truth = [rng.gauss(0, 2) for _ in range(rng.randint(0, 20))]
        history = [{"score": t, SLICE_SCORES: [t + rng.uniform(-d, d)]} for t in earlier_truth]
        ranked = sorted(truth + earlier_truth, reverse=True)
        in_topk = [t >= ranked[min(k, len(ranked)) - 1] for t in truth]
        go = promoted(slices, history, 0, k, 2 * d)
        assert all(g for g, top in zip(go, in_topk) if top), "a top-k candidate was raced out"
        go = promoted(slices, history, 0, k, 0.0)
        dropped_without_margin += any(top and not g for g, top in zip(go, in_topk))
    assert dropped_without_margin > 0, "without a margin the rule should lose some top-k candidates"
    # The margin grows to twice the largest slice error measured on fully scored candidates.
    history = [
        {"score": 10.0, SLICE_SCORES: [9.0, 10.5]},
        {"score": 5.0, SLICE_SCORES: [7.5], "full": False},
        {"score": 3.0},
    ]
    assert (
        rung_margin(history, 0, 0.5, "absolute") == 2.0
        and rung_margin(history, 1, 0.5, "absolute") == 1.0
    )
    assert rung_margin(history, 2, 0.5, "absolute") == 0.5
    # "offset": the spread of the slice errors about their common offset (one error: no spread)
    assert rung_margin(history, 0, 0.5) == 0.5
    history.append({"score": 4.0, SLICE_SCORES: [1.5]})  # errors -1.0 and -2.5
    assert rung_margin(history, 0, 0.5) == 1.5 and rung_margin(history, 0, 0.5, "absolute") == 5.0


def test_offset_margin_never_drops_a_top_k_candidate():
    """Slice scores are the full ones plus an offset common to all candidates plus an error within d: the
    "offset" margin (the spread of the candidates' slice errors) keeps every top-k candidate, like the
    "absolute" one, which is larger by about twice the offset and races fewer out."""
    rng = random.Random(1)
    raced_out = {"offset": 0, "absolute": 0}
    for _ in range(300):
        k, d, offset = rng.randint(1, 5), rng.uniform(0.1, 2.0), rng.uniform(-5.0, 5.0)
        truth = [rng.gauss(0, 2) for _ in range(rng.randint(2, 30))]
        slices = [t + offset + rng.uniform(-d, d) for t in truth]
        earlier_truth = [rng.gauss(0, 2) for _ in range(rng.randint(0, 20))]
        history = [
            {"score": t, SLICE_SCORES: [t + offset + rng.uniform(-d, d)]} for t in earlier_truth
        ]
        # the margin measured on every candidate's slice error (the guarantee's premise)
        measured = history + [{"score": t, SLICE_SCORES: [s]} for t, s in zip(truth, slices)]
        ranked = sorted(truth + earlier_truth, reverse=True)
        in_topk = [t >= ranked[min(k, len(ranked)) - 1] for t in truth]
        for mode in raced_out:
            go = promoted(slices, history, 0, k, rung_margin(measured, 0, 0.0, mode))
            assert all(g for g, top in zip(go, in_topk) if top), (
                f"{mode}: a top-k candidate was raced out"
            )
            raced_out[mode] += go.count(False)
        assert rung_margin(measured, 0, 0.0) <= min(
            2 * d, rung_margin(measured, 0, 0.0, "absolute")
        )
    assert raced_out["offset"] > 2 * raced_out["absolute"]


def offset_race_score(archs, fraction=1.0):
    """race_score with qualities 10x closer, on images of which the first tenth is 3 points easier for every
    arch: the slices' scores are offset from the full ones alike."""
    n = math.ceil(fraction * RACE_IMAGES)
    out = []
    for a in archs:
        quality = fake_fitness(a)
        values = [
            quality / 10 + v - quality + 3.0 * (j < RACE_IMAGES // 10)
            for j, v in enumerate(per_image_scores(a))
        ]
        out.append({"score": sum(values[:n]) / n, "images_eval": n})
    return out


def test_offset_margin_races_on_fewer_candidates_under_a_common_offset(table):
    constraints = ArchConstraints(table, SPACE, INPUT_SIZE, flops_max=FLOPS_MAX)
    full = EvolutionSearch(settings(), SPACE, constraints, None).run(offset_race_score)
    images = {}
    for mode in ("offset", "absolute"):
        raced = EvolutionSearch(
            settings(racing_slices=(0.1, 0.3), racing_margin=RACE_NOISE, racing_margin_mode=mode),
            SPACE,
            constraints,
            None,
        ).run(offset_race_score)
        assert raced.topk == full.topk, f"{mode}: racing changed the top-k"
        images[mode] = sum(r["images_eval"] for r in raced.history)
    assert images["offset"] < 0.85 * images["absolute"], images
    with pytest.raises(ValueError, match="RACING.MARGIN_MODE must be one of"):
        settings(racing_margin_mode="relative").validate()


def test_racing_search_keeps_the_full_protocols_top_k_at_a_fraction_of_the_images(table):
    constraints = ArchConstraints(table, SPACE, INPUT_SIZE, flops_max=FLOPS_MAX)
    full = EvolutionSearch(settings(), SPACE, constraints, None).run(race_score)
    # Per-image scores within RACE_NOISE of the quality: slice and full means differ by at most 2 x RACE_NOISE.
    raced = EvolutionSearch(
        settings(racing_slices=(0.1, 0.3), racing_margin=4 * RACE_NOISE), SPACE, constraints, None
    ).run(race_score)
    assert [r["arch"] for r in raced.history] == [r["arch"] for r in full.history]
    assert raced.topk == full.topk, "racing changed the top-k, hence the search"
    by_arch = {tuple(r["arch"]): r for r in full.history}
    for r in raced.history:
        assert len(r[SLICE_SCORES]) == (2 if r["full"] else len(r[SLICE_SCORES]))
        if r["full"]:
            assert r["score"] == by_arch[tuple(r["arch"])]["score"]
        else:
            assert r["score"] == r[SLICE_SCORES][-1] and r["images_eval"] < 2 * RACE_IMAGES
    assert any(not r["full"] for r in raced.history)
    images = lambda search: sum(r["images_eval"] for r in search.history)  # noqa: E731
    assert images(raced) < 0.6 * images(full)

    with pytest.raises(ValueError, match=r"RACING.SLICES must be increasing fractions in \(0, 1\)"):
        settings(racing_slices=(0.5, 0.2)).validate()


def test_racing_search_resumes_exactly_after_a_crash(table, tmp_path):
    constraints = ArchConstraints(table, SPACE, INPUT_SIZE, flops_max=FLOPS_MAX)
    raced = settings(racing_slices=(0.1, 0.3), racing_margin=4 * RACE_NOISE)
    full = EvolutionSearch(raced, SPACE, constraints, None).run(race_score, 3)
    path = str(tmp_path / "state.json")
    calls = []

    def crash_in_generation_2(archs, fraction):  # dies in the last rung of generation 2
        calls.append(fraction)
        if calls.count(1.0) == 4:
            raise Crash()
        return race_score(archs, fraction)

    with pytest.raises(Crash):
        EvolutionSearch(raced, SPACE, constraints, path).run(crash_in_generation_2, 3)
    with open(path) as f:
        saved = json.load(f)
    assert saved["generation"] == 2 and saved["race"], (
        "the slice results of the crashed generation are kept"
    )
    rescored = []
    resumed = EvolutionSearch(raced, SPACE, constraints, path, resume=True)
    state = resumed.run(
        lambda archs, f: rescored.extend((tuple(a), f) for a in archs) or race_score(archs, f), 3
    )
    assert without_timings(state.history) == without_timings(full.history)
    done = {
        (tuple(map(int, a.split(","))), f)
        for a, results in saved["race"].items()
        for f, _ in zip((0.1, 0.3, 1.0), results)
    }
    assert rescored and not done & set(rescored), "a slice already scored was scored again"
    with pytest.raises(SearchStateError, match="racing_margin"):
        EvolutionSearch(settings(racing_slices=(0.1, 0.3)), SPACE, constraints, path, resume=True)


@pytest.mark.slow
def test_racing_scorer_slices_give_the_unsliced_scores(det_weights, tmp_path):
    archs = [SPACE.random_arch(random.Random(s)) for s in (2, 3)]
    cfg = make_cfg(DET_CONFIG, tmp_path, det_weights, EVAL_IMAGES=0, EVAL_BATCH_SIZE=8)
    whole = build_scorer(cfg)
    first_half = build_scorer(
        make_cfg(DET_CONFIG, tmp_path, det_weights, EVAL_IMAGES=32, EVAL_BATCH_SIZE=8)
    )
    racing = build_scorer(cfg, search=SearchSettings(population=4, racing_slices=(0.5, 0.99)))
    for arch in archs:
        half, rest, last = (
            racing.score(arch, 0.5),
            racing.score(arch, 0.99),
            racing.score(arch, 1.0),
        )
        assert half["score"] == first_half.score(arch)["score"]
        assert rest["score"] == last["score"] == whole.score(arch)["score"]
        # a larger slice reuses the BN statistics and outputs of the smaller one (0.99 rounds up to all 64)
        assert [(r["images_recalib"], r["images_eval"]) for r in (half, rest, last)] == [
            (18, 32),
            (0, 32),
            (0, 0),
        ]
    assert racing.score(archs[0], 1.0)["images_eval"] == 64, "a fully scored candidate is not held"
    with pytest.raises(
        ValueError, match=r"No evaluation slice 0.3: the scorer has \[0.5, 0.99, 1.0\]"
    ):
        racing.score(archs[0], 0.3)


RACING_OPTS = dict(EVAL_IMAGES=0, EVAL_BATCH_SIZE=8, TOPK=1)
RACE_KEY = ("arch", "generation", "origin", "full", SLICE_SCORES)


def racing_cfg(out_dir, weights, **kw):
    cfg = make_cfg(DET_CONFIG, out_dir, weights, **dict(RACING_OPTS, **kw))
    cfg.DETNAS.SEARCH.RACING.SLICES = (0.5,)
    cfg.DETNAS.SEARCH.RACING.MARGIN = 0.0
    return cfg


def read_candidates(out_dir):
    with open(os.path.join(out_dir, "candidates.jsonl")) as f:
        return [json.loads(line) for line in f]


def _race_in_two_processes(cfg_text, out_root):
    cfg = get_cfg()
    add_detnas_config(cfg)
    cfg.merge_from_other_cfg(CfgNode.load_cfg(cfg_text))
    for mode in DIST_MODES:
        cfg.DETNAS.SEARCH.DIST_MODE = mode
        cfg.OUTPUT_DIR = os.path.join(out_root, mode)
        run_search(cfg)


@pytest.mark.slow
def test_racing_search_end_to_end_two_processes_and_resume(det_weights, tmp_path, monkeypatch):
    run_search(racing_cfg(tmp_path, det_weights))
    single = read_candidates(tmp_path)
    assert [r["generation"] for r in single] == [0] * 4 + [1] * 4 and any(
        not r["full"] for r in single
    )
    assert all(
        len(r[SLICE_SCORES]) == 1 and r["images_eval"] == (64 if r["full"] else 32) for r in single
    )

    launch(
        _race_in_two_processes,
        2,
        dist_url="auto",
        args=(racing_cfg(tmp_path, det_weights).dump(), str(tmp_path / "two")),
    )
    for mode in DIST_MODES:
        two = read_candidates(tmp_path / "two" / mode)
        assert [[r[k] for k in RACE_KEY] for r in two] == [
            [r[k] for k in RACE_KEY] for r in single
        ], mode
        assert [r["score"] for r in two] == pytest.approx(
            [r["score"] for r in single], rel=1e-4, abs=1e-9
        ), mode

    # Killed in the second generation's full rung, then resumed: the same candidates, nothing scored again.
    calls, score = [], CandidateScorer.score

    def crashing(scorer, arch, fraction=1.0, *rest):
        calls.append((tuple(arch), fraction))
        if fraction == 1.0 and len([c for c in calls if c[1] == 1.0]) > sum(
            r["full"] for r in single[:4]
        ):
            raise Crash()
        return score(scorer, arch, fraction, *rest)

    out = tmp_path / "crashed"
    monkeypatch.setattr(CandidateScorer, "score", crashing)
    with pytest.raises(Crash):
        run_search(racing_cfg(out, det_weights))
    monkeypatch.setattr(CandidateScorer, "score", score)
    done = set(calls[:-1])
    calls.clear()
    monkeypatch.setattr(
        CandidateScorer, "score", lambda *a, **k: calls.append(a[1:3]) or score(*a, **k)
    )
    resumed_best = run_search(racing_cfg(out, det_weights), resume=True)
    resumed = read_candidates(out)
    assert [[r[k] for k in RACE_KEY + ("score",)] for r in resumed] == [
        [r[k] for k in RACE_KEY + ("score",)] for r in single
    ]
    assert not done & {(tuple(a), f) for a, f in calls}, "a slice already scored was scored again"
    assert (
        resumed_best["arch"]
        == max((r for r in single if r["full"]), key=lambda r: r["score"])["arch"]
    )


def test_cheaper_scoring_knobs_are_part_of_the_protocol(table, tmp_path):
    """EVAL_MIN_SIZE (a lower test resolution while scoring) and BN_RECALIB.IMAGES fix the scores: a search
    resumes only with the same; EVAL_MIN_SIZE resizes the scorer's inputs and is refused for a classifier."""
    constraints = ArchConstraints(table, SPACE, INPUT_SIZE, flops_max=FLOPS_MAX)
    path = str(tmp_path / "state.json")
    (tmp_path / "w.pth").write_bytes(b"supernet")  # the fingerprint holds its contents

    def scoring(**kw):
        return ScoringSettings.from_cfg(make_cfg(DET_CONFIG, tmp_path, tmp_path / "w.pth", **kw))

    EvolutionSearch(settings(generations=1), SPACE, constraints, path, scoring=scoring()).run(
        fake_score
    )
    for change, message in [
        (dict(EVAL_MIN_SIZE=64), "eval_min_size: None -> 64"),
        (dict(BN_RECALIB_IMAGES=8), "recalib_images: 18 -> 8"),
    ]:
        with pytest.raises(SearchStateError, match=message):
            EvolutionSearch(
                settings(), SPACE, constraints, path, scoring=scoring(**change), resume=True
            )

    cfg = make_cfg(DET_CONFIG, tmp_path, "w.pth", EVAL_MIN_SIZE=64)
    small = scoring_cfg(cfg, 64)
    assert (small.INPUT.MIN_SIZE_TEST, small.INPUT.MAX_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST) == (
        64,
        64,
        128,
    )
    image = get_task(cfg).mapper(small, False)(DatasetCatalog.get("toy_det_search")[0])["image"]
    assert max(image.shape[1:]) == 64
    with pytest.raises(ValueError, match="EVAL_MIN_SIZE=64: a detector's .*INPUT.CLS.TEST_RESIZE"):
        ScoringSettings.from_cfg(make_cfg(CLS_CONFIG, tmp_path, "w.pth", EVAL_MIN_SIZE=64))
