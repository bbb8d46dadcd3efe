"""Checkpoint hand-off between pipeline steps (DetNASCheckpointer) and train_net.py's use of it."""

import json
import os
import re

import detnas_d2  # noqa: F401  (first: compat shims, registrations)
from detnas_d2 import add_detnas_config, train_net

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from log_capture import captured_log

from detnas_d2.checkpoint import DetNASCheckpointer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = "shuffle_xception,shuffle_7x7," + "shuffle_5x5," * 17 + "shuffle_3x3"
ARCH_IDS = (3, 2) + (1,) * 17 + (0,)


def toy_model(config, *opts):
    cfg = get_cfg()
    add_detnas_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", config))
    cfg.merge_from_list(list(opts))
    return build_model(cfg)


def save(model, folder):
    DetectionCheckpointer(model, str(folder)).save("model_final")  # as the trainer writes it
    return str(folder / "model_final.pth")


def load(model, path):
    with captured_log("fvcore.common.checkpoint") as log:
        DetNASCheckpointer(model).resume_or_load(path, resume=False)
    return log.getvalue()


def has_row(log, source, target):
    """Whether the hand-off table in `log` maps `source` to `target`."""
    return (
        re.search(rf"\| {re.escape(source)}\s+\| {re.escape(target)}\s+\|\s+\d+ \|", log)
        is not None
    )


def test_classifier_backbone_goes_to_fpn_and_retinanet_detectors(tmp_path, toy_retinanet_opts):
    classifier = toy_model("Toy/cls_supernet.yaml")
    path = save(classifier, tmp_path)
    source = classifier.state_dict()
    for detector in (
        toy_model("Toy/det_supernet.yaml"),
        toy_model(
            "Base-DetNAS-RetinaNet.yaml",
            *toy_retinanet_opts,
            "MODEL.BACKBONE.NAME",
            "build_detnas_supernet_retinanet_fpn_backbone",
        ),
    ):
        log = load(detector, path)
        target = detector.state_dict()
        backbone = {
            k[len("backbone.bottom_up.") :]: v
            for k, v in target.items()
            if k.startswith("backbone.bottom_up.")
        }
        assert backbone and set(backbone) == {
            k[len("backbone.") :] for k in source if k.startswith("backbone.")
        }
        assert all(torch.equal(v, source["backbone." + k]) for k, v in backbone.items())
        assert has_row(log, "backbone.layers.*", "backbone.bottom_up.layers.*")
        assert (
            has_row(log, "head.*", "(dropped: not in the model)")
            and "Dropped 8 checkpoint tensors" in log
        )


def test_subnet_classifier_to_subnet_detector(tmp_path):
    classifier = toy_model("Toy/cls_subnet.yaml", "MODEL.DETNAS.ARCH", ARCH)
    path = save(classifier, tmp_path)
    detector = toy_model("Toy/det_subnet.yaml", "MODEL.DETNAS.ARCH", ARCH)
    load(detector, path)
    source, target = classifier.state_dict(), detector.state_dict()
    keys = [k for k in source if k.startswith("backbone.")]
    assert all(
        torch.equal(target["backbone.bottom_up." + k[len("backbone.") :]], source[k]) for k in keys
    )


def test_supernet_checkpoint_gives_subnet_the_chosen_path(tmp_path):
    supernet = toy_model("Toy/det_supernet.yaml")
    path = save(supernet, tmp_path)
    subnet = toy_model("Toy/det_subnet.yaml", "MODEL.DETNAS.ARCH", ARCH)
    log = load(subnet, path)
    source, target = supernet.state_dict(), subnet.state_dict()
    prefix = "backbone.bottom_up."
    for key, value in target.items():
        if key.startswith(prefix + "layers."):
            layer, rest = key[len(prefix + "layers.") :].split(".", 1)
            expected = source[f"{prefix}layers.{layer}.choices.{ARCH_IDS[int(layer)]}.{rest}"]
        else:  # stem, FPN, RPN and box head: same names in both detectors
            expected = source[key]
        assert torch.equal(value, expected), key
    assert "supernet, path 3,2,1" in log


def test_detector_checkpoint_to_plain_backbone_and_same_form(tmp_path):
    detector = toy_model("Toy/det_supernet.yaml")
    path = save(detector, tmp_path)
    classifier = toy_model("Toy/cls_supernet.yaml")  # plain backbone: backbone.*
    log = load(classifier, path)
    source = detector.state_dict()
    assert all(
        torch.equal(v, source["backbone.bottom_up." + k[len("backbone.") :]])
        for k, v in classifier.state_dict().items()
        if k.startswith("backbone.")
    )
    assert has_row(log, "backbone.fpn_lateral2.*", "(dropped: not in the model)")
    assert has_row(log, "proposal_generator.*", "(dropped: not in the model)")

    same = toy_model("Toy/det_supernet.yaml")
    log = load(same, path)  # same model form (e.g. --eval-only): a plain load, no hand-off
    assert "hand-off" not in log
    assert all(torch.equal(v, source[k]) for k, v in same.state_dict().items())


@pytest.mark.parametrize(
    "source_opts,target,message",
    [
        (
            ("MODEL.DETNAS.WIDTH_MULT", "0.5"),
            "Toy/det_supernet.yaml",
            r"do not fit the model's space 'small' \(width 0.25, 20 layers\), supernet: \d+ tensors differ in shape",
        ),
        (
            ("MODEL.DETNAS.SPACE", "large"),
            "Toy/det_supernet.yaml",
            r"space 'small' .* \d+ checkpoint keys unknown to the model \(first 'layers.20",
        ),
        (
            ("MODEL.DETNAS.SPACE", "large"),
            "Toy/det_subnet.yaml",
            r"supernet weights do not fit .* has 40 layers .* space 'small' has 20",
        ),
        (
            ("MODEL.BACKBONE.NAME", "build_detnas_subnet_backbone", "MODEL.DETNAS.ARCH", ARCH),
            "Toy/det_supernet.yaml",
            "holds a subnet backbone .* a subnet cannot initialize a supernet",
        ),
        (
            (
                "MODEL.BACKBONE.NAME",
                "build_detnas_subnet_backbone",
                "MODEL.DETNAS.ARCH",
                "random:1",
            ),
            "Toy/det_subnet.yaml",
            r"do not fit the model's space 'small' .* subnet 3,2,1",
        ),
    ],
    ids=["width", "space", "space-to-subnet", "subnet-to-supernet", "other-arch"],
)
def test_mismatched_checkpoint_fails_clearly(tmp_path, source_opts, target, message):
    path = save(toy_model("Toy/cls_supernet.yaml", *source_opts), tmp_path)
    model = toy_model(
        target, *(("MODEL.DETNAS.ARCH", ARCH) if "subnet" in target else ())
    )  # supernets take none
    with pytest.raises(ValueError, match=message) as error:
        load(model, path)
    assert path in str(error.value)


@pytest.mark.slow
def test_train_net_step1_weights_then_eval_only(tmp_path):
    weights = save(toy_model("Toy/cls_supernet.yaml"), tmp_path)
    config = os.path.join(REPO, "configs", "Toy", "det_supernet.yaml")
    out = tmp_path / "det"
    common = [
        "DATASETS.TEST",
        "('toy_det_val',)",
        "INPUT.MIN_SIZE_TEST",
        "64",
        "INPUT.MAX_SIZE_TEST",
        "64",
    ]
    train_net.main(
        train_net.parse_args(
            [
                "--config-file",
                config,
                "MODEL.WEIGHTS",
                weights,
                "OUTPUT_DIR",
                str(out),
                "SOLVER.MAX_ITER",
                "2",
                "SOLVER.IMS_PER_BATCH",
                "2",
                *common,
            ],
            env={},
        )
    )
    log = (out / "log.txt").read_text()
    assert "Backbone hand-off from " + weights in log and has_row(
        log, "head.*", "(dropped: not in the model)"
    )
    assert (out / "model_final.pth").is_file() and "bbox" in json.loads(
        (out / "eval_results.json").read_text()
    )

    evaluation = tmp_path / "eval"
    results = train_net.main(
        train_net.parse_args(
            [
                "--eval-only",
                "--config-file",
                config,
                "MODEL.WEIGHTS",
                str(out / "model_final.pth"),
                "OUTPUT_DIR",
                str(evaluation),
                *common,
            ],
            env={},
        )
    )
    assert (
        "Evaluating the supernet with the reference arch 0,0,0"
        in (evaluation / "log.txt").read_text()
    )
    written = json.loads((evaluation / "eval_results.json").read_text())
    assert results["bbox"]["AP"] == written["bbox"]["AP"] and results.keys() == written.keys()
