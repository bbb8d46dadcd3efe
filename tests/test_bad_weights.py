"""Bad weights are refused when they are loaded, each with one line naming the file and the fix: files
that are no checkpoint (read_checkpoint, DetNASCheckpointer, tools/convert_checkpoint.py), NaN or Inf
weights (the checkpointer, --eval-only, the search's supernets), a detector evaluation or detection
search whose heads would come from nowhere (MODEL.DETNAS.ALLOW_RANDOM_HEADS), and an evaluation whose
results are NaN."""

import os
import random

import detnas_d2  # noqa: F401  (first: compat shims, registrations)
from detnas_d2 import train_net

import pytest
import torch
from detectron2.modeling import build_model

from detnas_d2.checkpoint import (
    DetNASCheckpointer,
    IncompleteWeightsError,
    NonFiniteWeightsError,
    UnreadableCheckpointError,
    read_checkpoint,
)
from detnas_d2.checkpoint import cli as convert_cli
from detnas_d2.config import get_detnas_cfg
from detnas_d2.evaluation import NonFiniteResultsError, require_finite_results
from detnas_d2.search import run_search

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs", "Toy")
SMALL_EVAL = [
    "INPUT.MIN_SIZE_TEST",
    "64",
    "INPUT.MAX_SIZE_TEST",
    "64",
    "DATASETS.TEST",
    "('toy_det_search',)",
]


def convert_tool():
    return convert_cli


def toy_model(config):
    return build_model(get_detnas_cfg(os.path.join(CONFIGS, config)))


def save_state(state, path):
    torch.save({"model": state}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Checkpoints of the toy models: detector and classifier subnets, detection and classification
    supernets, a detector with NaN and Inf weights, and one with finite weights whose outputs are NaN (a
    BN running variance of -1)."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    paths = {
        name: save_state(toy_model(f"{name}.yaml").state_dict(), folder / f"{name}.pth")
        for name in ("det_subnet", "cls_subnet", "det_supernet", "cls_supernet")
    }
    state = toy_model("det_subnet.yaml").state_dict()
    state["roi_heads.box_predictor.cls_score.weight"][0, :3] = float("nan")
    state["backbone.bottom_up.stem.conv.weight"][0, 0, 0, 0] = float("inf")
    paths["det_subnet_nan"] = save_state(state, folder / "det_subnet_nan.pth")
    state = toy_model("det_supernet.yaml").state_dict()
    state["backbone.fpn_output2.bias"][:] = float("nan")
    paths["det_supernet_nan"] = save_state(state, folder / "det_supernet_nan.pth")
    state = toy_model("det_subnet.yaml").state_dict()
    state["backbone.bottom_up.stem.conv.norm.running_var"].fill_(-1.0)
    paths["det_subnet_nan_outputs"] = save_state(state, folder / "det_subnet_nan_outputs.pth")
    return paths


# ---- files that are no checkpoint -------------------------------------------------------------------


def _real_checkpoint_start(tmp_path):
    path = save_state({"w": torch.zeros(1000)}, tmp_path / "real.pth")
    with open(path, "rb") as f:
        return f.read(300)


BAD_FILES = {
    "missing": (None, "no such checkpoint file"),
    "folder": ("folder", "it is a folder; give a checkpoint file in it"),
    "empty": (b"", r"it is empty \(0 bytes"),
    "text": (
        b"hello, not a checkpoint\n",
        "it is a text file \\(it starts with 'hello, not a checkpoint'\\)",
    ),
    "random bytes": (
        bytes(random.Random(0).randrange(256) for _ in range(4096)),
        "neither a torch.save file",
    ),
    "truncated": (
        "truncated",
        r"a damaged torch.save file \(300 bytes: truncated\?\) \(RuntimeError: ",
    ),
    "git lfs pointer": (
        b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n",
        "git lfs pull",
    ),
    "html page": (b"<!DOCTYPE html><html>404</html>", "an HTML page"),
}


def _bad_file(tmp_path, case):
    content = BAD_FILES[case][0]
    path = tmp_path / f"{case.replace(' ', '_')}.pth"
    if content == "folder":
        path.mkdir()
    elif content == "truncated":
        path.write_bytes(_real_checkpoint_start(tmp_path))
    elif content is not None:
        path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_file_that_is_no_checkpoint_says_what_it_is(tmp_path, case):
    path = _bad_file(tmp_path, case)
    with pytest.raises(UnreadableCheckpointError, match=BAD_FILES[case][1]) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert message.startswith(path) and "\n" not in message and "weights_only" not in message
    with pytest.raises(
        UnreadableCheckpointError, match=BAD_FILES[case][1]
    ):  # not fvcore's AssertionError
        DetNASCheckpointer(toy_model("cls_subnet.yaml")).load(path)


@pytest.mark.parametrize("case", ["missing", "empty", "text", "random bytes", "truncated"])
def test_convert_tool_prints_one_line_and_exits_2(tmp_path, capsys, case):
    path = _bad_file(tmp_path, case)
    assert convert_tool().main([path, str(tmp_path / "out.pth")]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"convert_checkpoint: {path}") and captured.err.count("\n") == 1
    assert not (tmp_path / "out.pth").exists()


# ---- NaN and Inf weights ------------------------------------------------------------------------------


@pytest.mark.parametrize("allow_random_heads", [True, False], ids=["training", "evaluation"])
def test_non_finite_weights_are_refused_naming_the_tensors(weights, allow_random_heads):
    model = toy_model("det_subnet.yaml")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    message = (
        r"det_subnet_nan\.pth: 2 of its \d+ tensors hold NaN or Inf values \(first "
        r"'backbone\.bottom_up\.stem\.conv\.weight' \(1 of \d+\), 'roi_heads\.box_predictor\.cls_score\.weight' "
        r"\(3 of 768\)\).*SOLVER\.BASE_LR"
    )
    with pytest.raises(NonFiniteWeightsError, match=message):
        DetNASCheckpointer(model, allow_random_heads=allow_random_heads).load(
            weights["det_subnet_nan"]
        )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing loaded


def test_eval_only_refuses_nan_weights(weights, tmp_path):
    args = [
        "--eval-only",
        "--config-file",
        os.path.join(CONFIGS, "det_subnet.yaml"),
        "OUTPUT_DIR",
        str(tmp_path),
    ]
    with pytest.raises(NonFiniteWeightsError, match="det_subnet_nan.pth: 2 of its"):
        train_net.main(
            train_net.parse_args(args + ["MODEL.WEIGHTS", weights["det_subnet_nan"]], env={})
        )
    assert not (tmp_path / "inference").exists()  # nothing was evaluated


def test_eval_only_refuses_nan_results(weights, tmp_path):
    """Finite weights whose outputs are NaN: no detection at all, which COCOEvaluator reports as AP NaN."""
    args = [
        "--eval-only",
        "--config-file",
        os.path.join(CONFIGS, "det_subnet.yaml"),
        "OUTPUT_DIR",
        str(tmp_path),
        "MODEL.WEIGHTS",
        weights["det_subnet_nan_outputs"],
        *SMALL_EVAL,
    ]
    with pytest.raises(
        NonFiniteResultsError,
        match=r"the evaluation gave bbox/AP nan, bbox/AP50 nan.*MODEL\.WEIGHTS",
    ):
        train_net.main(train_net.parse_args(args, env={}))


def test_headline_metrics_must_be_finite_others_may_be_nan():
    require_finite_results(
        {"bbox": {"AP": 1.5, "APs": float("nan"), "AP-circle": float("nan")}}, "w.pth"
    )
    with pytest.raises(NonFiniteResultsError, match=r"toy/classification/top1 inf"):
        require_finite_results(
            {"toy": {"classification": {"top1": float("inf"), "top5": 90.0}}}, "w.pth"
        )


# ---- heads from nowhere ---------------------------------------------------------------------------------


def test_detector_heads_from_nowhere_refused_unless_allowed(weights):
    classifier = weights["cls_subnet"]
    message = (
        r"cls_subnet\.pth holds no weights for the model's FPN, RPN, ROI heads \(\d+ tensors missing, first "
        r"'backbone\.fpn_lateral2\.weight'\).*step-2 detection supernet.*MODEL\.DETNAS\.ALLOW_RANDOM_HEADS True"
    )
    with pytest.raises(IncompleteWeightsError, match=message):
        DetNASCheckpointer(toy_model("det_subnet.yaml"), allow_random_heads=False).load(classifier)
    # training from a classifier's backbone (steps 2 and 5) and a detector's own checkpoint load
    DetNASCheckpointer(toy_model("det_subnet.yaml")).load(classifier)
    DetNASCheckpointer(toy_model("det_subnet.yaml"), allow_random_heads=False).load(
        weights["det_subnet"]
    )
    # a supernet detector's path goes to a subnet detector whole
    DetNASCheckpointer(toy_model("det_subnet.yaml"), allow_random_heads=False).load(
        weights["det_supernet"]
    )


def test_eval_only_refuses_a_classifier_checkpoint_unless_allowed(weights, tmp_path):
    args = [
        "--eval-only",
        "--config-file",
        os.path.join(CONFIGS, "det_subnet.yaml"),
        "OUTPUT_DIR",
        str(tmp_path),
        "MODEL.WEIGHTS",
        weights["cls_subnet"],
        *SMALL_EVAL,
    ]
    with pytest.raises(IncompleteWeightsError, match="MODEL.DETNAS.ALLOW_RANDOM_HEADS True"):
        train_net.main(train_net.parse_args(args, env={}))
    results = train_net.main(
        train_net.parse_args(args + ["MODEL.DETNAS.ALLOW_RANDOM_HEADS", "True"], env={})
    )
    assert "bbox" in results


def _search_cfg(tmp_path, weights):
    return get_detnas_cfg(
        os.path.join(CONFIGS, "search_det.yaml"),
        [
            "MODEL.WEIGHTS",
            weights,
            "OUTPUT_DIR",
            str(tmp_path),
            "DETNAS.SEARCH.MAX_CANDIDATES",
            "2",
            "DETNAS.SEARCH.POPULATION",
            "2",
            "DETNAS.SEARCH.TOPK",
            "1",
            "DETNAS.SEARCH.EVAL_IMAGES",
            "4",
            "DETNAS.BN_RECALIB.IMAGES",
            "4",
            "DETNAS.BN_RECALIB.BATCH_SIZE",
            "4",
        ],
    )


def test_detection_search_refuses_the_classifier_supernet_and_nan_weights(weights, tmp_path):
    with pytest.raises(
        IncompleteWeightsError, match=r"cls_supernet\.pth holds no weights for the model's FPN"
    ):
        run_search(_search_cfg(tmp_path / "cls", weights["cls_supernet"]))
    with pytest.raises(
        NonFiniteWeightsError, match=r"det_supernet_nan\.pth: 1 of its .*'backbone\.fpn_output2"
    ):
        run_search(_search_cfg(tmp_path / "nan", weights["det_supernet_nan"]))
    assert not any(f.name == "best_arch.yaml" for f in tmp_path.rglob("*"))
