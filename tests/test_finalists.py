"""Finalists and ensembles: the per-image basis of the bootstrap (COCO AP recomputed on resampled images
equals COCOeval on the resampled dataset), finalist selection and intervals on a synthetic fitness with
known per-image scores, exact resume of a search stopped among its finalists, the mean of several
supernets, and both on the toy supernet detector end to end."""

import contextlib
import copy
import io
import json
import os
import random

import detnas_d2  # noqa: F401  (compat shims, registrations)
from detnas_d2 import add_detnas_config

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data.datasets.coco import convert_to_coco_dict
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detnas_d2.arch_io import load_arch_record
from detnas_d2.engine.launch import launch
from detnas_d2.flops import get_flops_table
from detnas_d2.search import (
    ArchConstraints,
    EvolutionSearch,
    Finalists,
    FinalistSettings,
    ScoringSettings,
    SearchOutputs,
    SearchSettings,
    SearchStateError,
    build_scorer,
    choose_finalist,
    run_search,
    summarize_finalists,
)
from detnas_d2.search import scoring as scoring_module
from detnas_d2.search.per_image import DetectionImages, ImageMean, resample_counts
from detnas_d2.search_space import arch_to_str, get_space
from detnas_d2.user_errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DET_CONFIG = os.path.join(ROOT, "configs", "Toy", "search_det.yaml")
CLS_CONFIG = os.path.join(ROOT, "configs", "Toy", "search_cls.yaml")
SPACE = get_space("small", 0.25)


# ---- the per-image basis ---------------------------------------------------------------------------


def _coco(dataset):
    api = COCO()
    api.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def _cocoeval_ap(gt, detections, img_ids):
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(detections)), "bbox")
        evaluator.params.imgIds = img_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[0] * 100


def test_resampled_ap_is_cocoeval_on_the_resampled_images():
    """Detections near the toy ground truth, scores rounded so that many tie: AP on a resample (image i
    counts[i] times) equals COCOeval's on a dataset holding counts[i] copies of image i."""
    data = convert_to_coco_dict("toy_det_search")
    gt = _coco(copy.deepcopy(data))
    rng = random.Random(0)
    categories = [c["id"] for c in data["categories"]]
    detections = []
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        for _ in range(rng.randint(0, 3)):
            jitter = lambda v: v + rng.uniform(-0.3, 0.3) * max(w, h)  # noqa: E731
            detections.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": rng.choice([ann["category_id"]] * 3 + categories),
                    "bbox": [
                        jitter(x),
                        jitter(y),
                        w * rng.uniform(0.7, 1.3),
                        h * rng.uniform(0.7, 1.3),
                    ],
                    "score": round(rng.random(), 1),
                }
            )
    img_ids = sorted(im["id"] for im in data["images"])
    evaluation = DetectionImages(gt, copy.deepcopy(detections), img_ids)
    assert evaluation.score(np.ones(len(img_ids), dtype=int)) == _cocoeval_ap(
        gt, detections, img_ids
    )
    for counts in resample_counts(len(img_ids), 3, seed=0):
        assert counts.sum() == len(img_ids)
        copies = copy.deepcopy(data)
        copies["images"], copies["annotations"], copied = [], [], []
        for i, img_id in enumerate(
            img_ids
        ):  # copy k of image i gets id 100 i + k: COCOeval keeps the order
            image = next(im for im in data["images"] if im["id"] == img_id)
            for k in range(counts[i]):
                new_id = img_id * 100 + k
                copies["images"].append(dict(image, id=new_id))
                annotations = [a for a in data["annotations"] if a["image_id"] == img_id]
                copies["annotations"] += [
                    dict(a, image_id=new_id, id=len(copies["annotations"]) + j + 1)
                    for j, a in enumerate(annotations)
                ]
                copied += [dict(d, image_id=new_id) for d in detections if d["image_id"] == img_id]
        expected = _cocoeval_ap(_coco(copies), copied, [im["id"] for im in copies["images"]])
        assert evaluation.score(counts) == expected
    assert (resample_counts(10, 4, 1) == resample_counts(10, 4, 1)).all()
    assert (
        DetectionImages(gt, [], img_ids).score(np.ones(len(img_ids), dtype=int)) == 0.0
    )  # no detection: AP 0
    assert ImageMean([1, 0, 1, 1], scale=100.0).score(np.array([2, 1, 0, 1])) == 75.0


# ---- finalists on a synthetic fitness --------------------------------------------------------------

IMAGES = 200
BOOTSTRAP = 400


def fake_score(archs):
    return [{"score": float(sum((i + 1) * (a == 3) for i, a in enumerate(arch)))} for arch in archs]


def search_settings(**kw):
    base = dict(
        population=8,
        generations=3,
        topk=3,
        num_mutation=3,
        mutation_prob=0.2,
        num_crossover=3,
        seed=3,
    )
    base.update(kw)
    return SearchSettings(**base)


class SyntheticFinalists:
    """Known per-image scores of the finalists: image difficulty shared by every arch and supernet (large),
    the arch's quality, a supernet offset and a small arch-and-supernet noise. `quality`: arch -> value."""

    def __init__(self, quality, supernet_offsets=(0.0,), difficulty=5.0, noise=0.3):
        rng = np.random.default_rng(0)
        self.difficulty = rng.normal(0, difficulty, IMAGES)
        self.quality, self.offsets, self.noise = quality, supernet_offsets, noise
        self.calls = []

    def per_image(self, arch, supernet):
        rng = np.random.default_rng([*arch, supernet])
        return (
            self.quality[tuple(arch)]
            + self.offsets[supernet]
            + self.difficulty
            + rng.normal(0, self.noise, IMAGES)
        )

    def __call__(self, archs, fraction, supernets, bootstrap):
        assert fraction == 1.0
        out = []
        for arch, supernet in zip(archs, supernets):
            self.calls.append((tuple(arch), supernet))
            values = ImageMean(self.per_image(arch, supernet))
            out.append(
                {
                    "score": values.score(np.ones(IMAGES)),
                    "images_eval": IMAGES,
                    "replicates": [values.score(c) for c in resample_counts(IMAGES, *bootstrap)],
                }
            )
        return out


def run_synthetic(tmp_path, gaps, offsets=(0.0,), name="state.json", **finalists):
    """A search with a fake fitness, then finalists whose qualities are the best's less `gaps`."""
    table = get_flops_table(SPACE, 128)
    constraints = ArchConstraints(table, SPACE, 128, flops_max=9.0e6)
    weights = tuple(str(tmp_path / f"w{i}.pth") for i in range(len(offsets)))
    for i, path in enumerate(weights):  # the fingerprint holds the supernets' contents
        open(path, "w").write(f"supernet {i}")
    settings = FinalistSettings(
        **dict(dict(topk=len(gaps), weights=weights, bootstrap=BOOTSTRAP, seed=3), **finalists)
    )
    search = EvolutionSearch(
        search_settings(), SPACE, constraints, str(tmp_path / name), finalists=settings
    )
    search.run(fake_score)
    top = [
        tuple(search.history[i]["arch"])
        for i in sorted(range(len(search.history)), key=lambda i: (-search.history[i]["score"], i))
    ]
    fitness = SyntheticFinalists({arch: 20.0 - gap for arch, gap in zip(top, gaps)}, offsets)
    return search, settings, fitness


def test_finalist_selection_and_intervals_on_a_synthetic_fitness(tmp_path):
    # the search's 2nd best is truly best; its 1st equal to it; its 3rd 0.5 below; its 4th 3 below
    search, settings, fitness = run_synthetic(tmp_path, gaps=(0.0, -0.0001, 0.5, 3.0))
    finalists = Finalists(search, settings)
    assert (
        finalists.indices
        == sorted(range(len(search.history)), key=lambda i: (-search.history[i]["score"], i))[:4]
    )
    rows = finalists.run(fitness)
    assert len(search.state.finalists) == 4 and [r["finalist"] for r in rows] == [0, 1, 2, 3]
    for row in rows:
        values = fitness.per_image(row["arch"], 0)
        assert row["mean"] == pytest.approx(values.mean(), abs=1e-12) and row["scores"] == [
            row["mean"]
        ]
        # the interval of a mean of 200 images: about +-1.96 sd / sqrt(200)
        half = 1.96 * values.std() / IMAGES**0.5
        assert row["interval"][0] < row["mean"] < row["interval"][1]
        assert 0.7 * half < (row["interval"][1] - row["interval"][0]) / 2 < 1.3 * half
    assert [r["best"] for r in rows] == [False, True, False, False]
    assert [r["tied"] for r in rows] == [True, False, False, False]
    # paired: finalist 3's interval overlaps the best's (the shared image difficulty), yet it is told apart
    assert rows[2]["interval"][1] > rows[1]["interval"][0] and rows[2]["difference_interval"][0] > 0
    assert rows[3]["difference"] == pytest.approx(3.0, abs=0.1)


def test_tie_break_chooses_the_cheapest_of_the_finalists_the_scores_cannot_separate(tmp_path):
    # the search's 2nd best is truly best, its 1st and 3rd within the noise, its 4th 3 below
    search, settings, fitness = run_synthetic(tmp_path, gaps=(0.0, -0.0001, 0.05, 3.0))
    rows = Finalists(search, settings).run(fitness)
    for row in rows:  # each finalist carries its candidate's costs
        candidate = search.history[row["candidate"]]
        assert (row["flops"], row["params"]) == (candidate["flops"], candidate["params"])
    group = [r["finalist"] for r in rows if r["best"] or r["tied"]]
    assert group == [0, 1, 2] and not rows[3]["tied"]
    for r, params in zip(
        rows, (300, 200, 100, 50)
    ):  # the cheapest of all is told apart: never chosen
        r["params"] = params
    assert choose_finalist(rows)["finalist"] == 1
    assert choose_finalist(rows, "params")["finalist"] == 2
    assert [r["chosen"] for r in rows] == [False, False, True, False]
    rows[0]["params"] = rows[2]["params"]  # equal cost: the better mean
    assert (
        choose_finalist(rows, "params")["finalist"]
        == max((rows[0], rows[2]), key=lambda r: r["mean"])["finalist"]
    )


def test_best_arch_yaml_names_the_tie_break_choice_and_the_rest_of_its_group(tmp_path):
    search, settings, fitness = run_synthetic(
        tmp_path, gaps=(0.0, -0.0001, 0.05, 3.0), tie_break="params"
    )
    finalists = Finalists(search, settings)
    rows = finalists.run(fitness)
    group = [r for r in rows if r["best"] or r["tied"]]
    cheapest = min(group, key=lambda r: (r["params"], -r["mean"]))
    outputs = SearchOutputs(str(tmp_path / "out"), SPACE, "bbox_AP", 24, search.history)
    with EventStorage(len(search.history)):
        best = outputs.finish(search, finalists=finalists)
    record = load_arch_record(str(tmp_path / "out/best_arch.yaml"))
    assert tuple(record.arch) == tuple(cheapest["arch"]) == tuple(best["arch"])
    assert record.metadata["score"] == cheapest["mean"] and record.metadata["tie_break"] == "params"
    assert record.metadata["indistinguishable"] == [
        arch_to_str(r["arch"]) for r in group if r is not cheapest
    ]
    assert [f["params"] for f in record.metadata["finalists"]] == [r["params"] for r in rows]


def test_tie_break_settings_are_checked(tmp_path):
    cfg = make_cfg(DET_CONFIG, tmp_path, "")
    scoring = ScoringSettings.from_cfg(cfg)
    cfg.DETNAS.SEARCH.FINALISTS.TIE_BREAK = "size"
    with pytest.raises(UserError, match="TIE_BREAK must be one of .*'params'.* got 'size'"):
        FinalistSettings.from_cfg(cfg, scoring)
    cfg.DETNAS.SEARCH.FINALISTS.TIE_BREAK = "latency_ms"
    with pytest.raises(UserError, match="latency_ms needs DETNAS.SEARCH.LATENCY_TABLE"):
        FinalistSettings.from_cfg(cfg, scoring)


def test_intervals_over_images_and_supernets():
    """Two supernets: the mean is over supernets; the replicates resample supernets too, so a finalist
    whose supernets disagree gets a wider interval than the images alone give."""

    def records(scores, replicates):
        return [
            {"candidate": 0, "arch": [0] * 20, "search_score": 1.0, "score": s, "replicates": r}
            for s, r in zip(scores, replicates)
        ]

    flat = np.linspace(-0.1, 0.1, 200)
    agree = records([10.0, 10.0], [10.0 + flat, 10.0 + flat])
    disagree = records([8.0, 12.0], [8.0 + flat, 12.0 + flat])
    rows = summarize_finalists([agree, disagree], 0.95, seed=0)
    assert [r["mean"] for r in rows] == [10.0, 10.0] and rows[1]["scores"] == [8.0, 12.0]
    assert rows[0]["interval"][1] - rows[0]["interval"][0] < 0.25
    assert rows[1]["interval"][0] < 8.5 and rows[1]["interval"][1] > 11.5
    assert rows[0]["best"] and rows[1]["tied"]


def test_search_stopped_among_its_finalists_resumes_exactly(tmp_path):
    gaps, offsets = (0.0, 0.2, 1.0), (0.0, -1.0)
    search, settings, fitness = run_synthetic(tmp_path, gaps, offsets, name="whole.json")
    whole = Finalists(search, settings).run(fitness)
    assert len(fitness.calls) == 6

    class Stop(Exception):
        pass

    search, settings, fitness = run_synthetic(tmp_path, gaps, offsets, name="stopped.json")

    def stopping(archs, *args):
        if len(fitness.calls) == 4:
            raise Stop()
        return fitness(archs, *args)

    with pytest.raises(Stop):
        Finalists(search, settings).run(stopping)
    with open(tmp_path / "stopped.json") as f:
        assert len(json.load(f)["finalists"]) == 4
    done = list(fitness.calls)
    resumed = EvolutionSearch(
        search_settings(),
        SPACE,
        search.constraints,
        str(tmp_path / "stopped.json"),
        resume=True,
        finalists=settings,
    )
    resumed.run(fake_score)  # finished: nothing to score
    fitness.calls.clear()
    rows = Finalists(resumed, settings).run(fitness)
    assert rows == whole
    assert len(fitness.calls) == 2 and not set(fitness.calls) & set(done), (
        "a finalist record was scored again"
    )
    (tmp_path / "other.pth").write_text("another supernet")

    def resume(change):
        return EvolutionSearch(
            search_settings(),
            SPACE,
            search.constraints,
            str(tmp_path / "stopped.json"),
            resume=True,
            finalists=FinalistSettings(**{**settings.__dict__, **change}),
        )

    for change in (
        dict(topk=2),
        dict(bootstrap=100),
        dict(weights=(settings.weights[0], str(tmp_path / "other.pth"))),
    ):
        with pytest.raises(SearchStateError, match="finalists"):
            resume(change)
    for change in (dict(confidence=0.9), dict(tie_break="params")):  # how the records are summed up
        assert len(resume(change).state.finalists) == 6


# ---- on the toy supernet detector ------------------------------------------------------------------


def make_cfg(config, out_dir, weights, **search):
    cfg = get_cfg()
    add_detnas_config(cfg)
    cfg.merge_from_file(config)
    cfg.OUTPUT_DIR = str(out_dir)
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.DETNAS.BN_RECALIB.IMAGES, cfg.DETNAS.BN_RECALIB.BATCH_SIZE = 16, 4
    small = dict(
        POPULATION=3,
        GENERATIONS=1,
        TOPK=2,
        NUM_MUTATION=1,
        NUM_CROSSOVER=1,
        EVAL_IMAGES=16,
        EVAL_BATCH_SIZE=8,
    )
    for key, value in dict(small, **search).items():
        node, *rest = key.split(".")
        target = cfg.DETNAS.SEARCH if not rest else getattr(cfg.DETNAS.SEARCH, node)
        setattr(target, rest[0] if rest else node, value)
    return cfg


def save_supernet(config, path, seed):
    cfg = make_cfg(config, os.path.dirname(path), "")
    torch.manual_seed(seed)
    DetectionCheckpointer(build_model(cfg), save_dir=os.path.dirname(path)).save(
        os.path.basename(path)[:-4]
    )
    return path


@pytest.fixture(scope="module")
def supernets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("supernets")
    return [save_supernet(DET_CONFIG, str(folder / f"supernet{seed}.pth"), seed) for seed in (0, 1)]


def test_ensemble_score_is_the_mean_of_the_single_supernet_scores(supernets, tmp_path):
    arch = SPACE.random_arch(random.Random(2))
    singles = [build_scorer(make_cfg(DET_CONFIG, tmp_path, w, EVAL_IMAGES=0)) for w in supernets]
    scores = [s.score(arch)["score"] for s in singles]
    assert len(set(scores)) == 2, "the two supernets should score differently"
    ensemble = build_scorer(
        make_cfg(DET_CONFIG, tmp_path, "", EVAL_IMAGES=0, ENSEMBLE_WEIGHTS=supernets)
    )
    result = ensemble.score(arch)
    assert result["supernet_scores"] == scores and result["score"] == (scores[0] + scores[1]) / 2
    assert result["images_recalib"] == 32 and result["images_eval"] == 128


@pytest.mark.parametrize(
    "config, weights_index",
    [(DET_CONFIG, 0), (CLS_CONFIG, None)],
    ids=["detection", "classification"],
)
def test_per_image_evaluation_of_a_real_candidate_gives_its_score(
    supernets, tmp_path, monkeypatch, config, weights_index
):
    """With every image counted once, the per-image evaluation of the scorer's outputs is the headline
    score itself (COCOEvaluator's AP; ClassificationEvaluator's top-1)."""
    if weights_index is None:
        weights = save_supernet(config, str(tmp_path / "c.pth"), 0)
    else:
        weights = supernets[weights_index]
    cfg = make_cfg(
        config, tmp_path, weights, EVAL_IMAGES=0, EVAL_BATCH_SIZE=8 if config == DET_CONFIG else 50
    )
    scorer = build_scorer(cfg)
    monkeypatch.setattr(
        scoring_module, "resample_counts", lambda n, samples, seed: np.ones((samples, n), dtype=int)
    )
    for arch in (SPACE.default_arch(), SPACE.random_arch(random.Random(4))):
        result = scorer.score(arch, bootstrap=(2, 0))
        assert result["replicates"] == [result["score"]] * 2 and result["score"] > 0


FINALIST_OPTS = {"FINALISTS.TOPK": 2, "FINALISTS.EVAL_IMAGES": 0, "FINALISTS.BOOTSTRAP": 50}


def _finalists_in_two_processes(cfg_text, out_root):
    cfg = get_cfg()
    add_detnas_config(cfg)
    cfg.merge_from_other_cfg(CfgNode.load_cfg(cfg_text))
    for mode in ("split_images", "split_candidates"):
        cfg.DETNAS.SEARCH.DIST_MODE = mode
        cfg.OUTPUT_DIR = os.path.join(out_root, mode)
        run_search(cfg)


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_search_with_finalists_end_to_end_resumed_and_in_two_processes(
    supernets, tmp_path, monkeypatch
):
    cfg = make_cfg(
        DET_CONFIG,
        tmp_path / "one",
        supernets[0],
        **FINALIST_OPTS,
        **{"FINALISTS.WEIGHTS": supernets},
    )
    best = run_search(cfg)
    records = _read(tmp_path / "one/finalists.jsonl")
    assert [(r["finalist"], r["supernet"]) for r in records] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(r["images_eval"] == 64 and len(r["replicates"]) == 50 for r in records)
    record = load_arch_record(str(tmp_path / "one/best_arch.yaml"))
    rows = best["finalist"]
    assert tuple(record.arch) == tuple(best["arch"]) and record.metadata["score"] == rows["mean"]
    means = {
        r["candidate"]: np.mean([x["score"] for x in records if x["candidate"] == r["candidate"]])
        for r in records
    }
    assert rows["mean"] == pytest.approx(max(means.values()))
    assert {f["arch"] for f in record.metadata["finalists"]} == {
        arch_to_str(r["arch"]) for r in records
    }

    # stopped after the first finalist record, resumed: the same records, none scored again
    calls, stop_at, score = [], [2], scoring_module.CandidateScorer.score

    class Stop(Exception):
        pass

    def stopping(scorer, arch, fraction=1.0, supernet=None, bootstrap=None):
        if bootstrap is not None:
            calls.append((tuple(arch), supernet))
            if len(calls) in stop_at:
                raise Stop()
        return score(scorer, arch, fraction, supernet, bootstrap)

    monkeypatch.setattr(scoring_module.CandidateScorer, "score", stopping)
    cfg.OUTPUT_DIR = str(tmp_path / "stopped")
    with pytest.raises(Stop):
        run_search(cfg)
    assert len(_read(tmp_path / "stopped/finalists.jsonl")) == 1
    calls.clear()
    stop_at.clear()
    run_search(cfg, resume=True)
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in rs]  # noqa: E731
    assert strip(_read(tmp_path / "stopped/finalists.jsonl")) == strip(records)
    assert len(calls) == 3 and (tuple(records[0]["arch"]), 0) not in calls
    monkeypatch.setattr(scoring_module.CandidateScorer, "score", score)

    launch(
        _finalists_in_two_processes, 2, dist_url="auto", args=(cfg.dump(), str(tmp_path / "two"))
    )
    for mode in ("split_images", "split_candidates"):
        two = _read(tmp_path / "two" / mode / "finalists.jsonl")
        assert [(r["arch"], r["supernet"]) for r in two] == [
            (r["arch"], r["supernet"]) for r in records
        ], mode
        for a, b in zip(two, records):
            assert a["score"] == pytest.approx(b["score"], rel=1e-4, abs=1e-9), mode
            assert a["replicates"] == pytest.approx(b["replicates"], rel=1e-4, abs=1e-9), mode
