"""MMRazor / MMDetection / official checkpoints in detnas-d2 (detnas_d2/checkpoint/, DetNASCheckpointer,
tools/convert_checkpoint.py), and parity with MMRazor's, MMDetection's and the official code.

tests/fixtures/mmrazor_parity.pt was made by tools/make_parity_fixtures.py with MMRazor 1.0.0, mmcls
1.0.0rc6 and MMDetection 3.3.0, tests/fixtures/official_parity.pt by tools/make_official_fixtures.py with
Megvii's DetNAS network code (see those scripts): they hold the keys and shapes of their state dicts, the
seed of the weights (tests/fixtures/parity_weights.py) and their modules' outputs on seeded inputs.
"""

import os
import pickle
import sys

import detnas_d2  # noqa: F401  (first: compat shims, registrations)
from detnas_d2 import train_net

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.structures import Boxes
from fixtures.parity_weights import seeded_input, seeded_state_dict
from log_capture import captured_log

from detnas_d2.arch_io import load_arch
from detnas_d2.checkpoint import (
    ALLOW_PICKLE_ENV,
    DetNASCheckpointer,
    RefusedCheckpointError,
    arch_opts_from_weights,
    read_checkpoint,
    weights_arch,
)
from detnas_d2.checkpoint import cli as convert_cli
from detnas_d2.checkpoint.convert import to_detnas
from detnas_d2.checkpoint.layouts import detect_format
from detnas_d2.checkpoint.mmrazor import to_mmrazor
from detnas_d2.checkpoint.official import MegviiLayoutError
from detnas_d2.config import get_detnas_cfg
from detnas_d2.search_space import PAPER_BLOCKS, space_from_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")

FIXTURE = torch.load(os.path.join(FIXTURES, "mmrazor_parity.pt"), weights_only=True)
SEED = FIXTURE["seed"]
CASES = FIXTURE["cases"]
MMDET_CONFIG = "configs/COCO-Detection/mmdet_detnas_frcnn_subnet_1x.yaml"
RGB_MEAN = [
    "MODEL.PIXEL_MEAN",
    "[123.675, 116.28, 103.53]",
    "MODEL.PIXEL_STD",
    "[58.395, 57.12, 57.375]",
]
CPU_NORMS = ["MODEL.DETNAS.NORM", "BN", "MODEL.FPN.NORM", "BN", "MODEL.ROI_BOX_HEAD.NORM", "BN"]


def close(ours, theirs, name):
    assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
    diff = (ours - theirs).abs().max().item()
    assert diff <= 1e-5 * max(1.0, theirs.abs().max().item()), f"{name}: max difference {diff}"


def mmrazor_state(case):
    return seeded_state_dict(SEED, case["keys"], case["shapes"])


def mmengine_file(path, state):
    """As mmengine's CheckpointHook writes it: meta (with numpy values), state_dict, message_hub."""
    meta = {
        "epoch": 12,
        "iter": 87960,
        "seed": np.int64(SEED),
        "lr": np.float64(0.02),
        "dataset_meta": {"classes": ("person", "bicycle")},
        "mmengine_version": "0.10.7",
    }
    torch.save({"meta": meta, "state_dict": state}, path)
    return str(path)


def model(config, *opts):
    cfg = get_detnas_cfg(os.path.join(REPO, config), ["MODEL.DEVICE", "cpu", *opts])
    return build_model(cfg).eval()


def classifier(*opts):
    return model(
        "configs/ImageNet/subnet_small.yaml",
        "MODEL.CLASSIFIER.NUM_CLASSES",
        "10",
        "MODEL.DETNAS.OUT_FEATURES",
        "['res2', 'res3', 'res4', 'res5']",
        *opts,
    )


def classifier_outputs(net, image):
    with torch.no_grad():
        feats = net.backbone(image)
        last = net.head.conv(feats["res5"])
        logits = net.head(feats["res5"])
    out = {f"stage{i}": feats[f"res{i + 2}"] for i in range(4)}
    out.update(last_conv=last, logits=logits)
    return out


# ---- parity with MMRazor / MMDetection -------------------------------------------------------------


def test_mmrazor_subnet_classifier_matches_mmrazor(tmp_path):
    case = CASES["classifier_subnet"]
    path = mmengine_file(tmp_path / "detnas_subnet_in1k.pth", mmrazor_state(case))
    arch = ",".join(str(PAPER_BLOCKS.index(n)) for n in case["arch"])
    assert weights_arch(path) == tuple(
        PAPER_BLOCKS.index(n) for n in case["arch"]
    )  # read from '_candidates.<name>'
    net = classifier("MODEL.DETNAS.ARCH", arch, *RGB_MEAN)
    DetNASCheckpointer(net).load(path)
    image = seeded_input(SEED, case["input"], case["input_shape"])
    ours = classifier_outputs(net, image)
    for name, theirs in case["outputs"].items():
        close(ours[name], theirs, name)


def test_mmrazor_supernet_classifier_matches_mmrazor(tmp_path):
    case = CASES["classifier_supernet"]
    path = mmengine_file(tmp_path / "spos_supernet.pth", mmrazor_state(case))
    net = model(
        "configs/ImageNet/supernet_small.yaml",
        "MODEL.CLASSIFIER.NUM_CLASSES",
        "10",
        "MODEL.DETNAS.OUT_FEATURES",
        "['res2', 'res3', 'res4', 'res5']",
        *RGB_MEAN,
    )
    DetNASCheckpointer(net).load(path)
    net.backbone.set_arch([PAPER_BLOCKS.index(n) for n in case["arch"]])
    ours = classifier_outputs(net, seeded_input(SEED, case["input"], case["input_shape"]))
    for name, theirs in case["outputs"].items():
        close(ours[name], theirs, name)


def test_mmdet_detector_matches_mmdetection(tmp_path):
    case = CASES["detector_subnet"]
    out = case["outputs"]
    path = mmengine_file(tmp_path / "detnas_frcnn.pth", mmrazor_state(case))
    opts = arch_opts_from_weights(
        os.path.join(REPO, MMDET_CONFIG), ["MODEL.WEIGHTS", path, *CPU_NORMS]
    )
    assert opts[-2:] == [
        "MODEL.DETNAS.ARCH",
        ",".join(str(PAPER_BLOCKS.index(n)) for n in case["arch"]),
    ]
    net = model(MMDET_CONFIG, *opts, "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96")
    checkpointer = DetNASCheckpointer(net)
    incompatible = checkpointer._load_model(checkpointer._load_file(path))
    assert (
        not incompatible.missing_keys and not incompatible.unexpected_keys
    )  # every tensor, both ways
    with torch.no_grad():  # the whole Detectron2 detector runs on the converted weights
        (result,) = net([{"image": torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)}])
    assert result["instances"].pred_boxes.tensor.shape[1] == 4
    image = seeded_input(SEED, case["input"], case["input_shape"])
    with torch.no_grad():
        feats = net.backbone(image)
        levels = [feats[f] for f in net.proposal_generator.in_features]
        objectness, deltas = net.proposal_generator.rpn_head(levels)
        box_feats = net.roi_heads.box_head(seeded_input(SEED, "roi_feats", case["roi_feats_shape"]))
        scores, box_deltas = net.roi_heads.box_predictor(box_feats)
    for i, name in enumerate(["p2", "p3", "p4", "p5", "p6"]):
        close(feats[name], out[f"fpn{i}"], name)
        close(objectness[i], out[f"rpn_cls{i}"], f"objectness {name}")
        close(deltas[i], out[f"rpn_reg{i}"], f"anchor deltas {name}")
    close(scores, out["box_cls"], "box class scores (background last)")
    close(box_deltas, out["box_reg"], "box deltas (80 x 4)")

    # Anchors, box coding and RoI levels of the generated config against MMDetection's own classes.
    anchors = net.proposal_generator.anchor_generator(
        [feats[f] for f in net.proposal_generator.in_features]
    )
    for i, a in enumerate(anchors):
        close(a.tensor, out[f"anchors{i}"], f"anchors level {i}")
    boxes, targets = out["boxes"], out["targets"]
    raw = seeded_input(SEED, "deltas", (32, 4))
    h, w = case["max_shape"]
    for name, transform in (
        ("rpn", net.proposal_generator.box2box_transform),
        ("rcnn", net.roi_heads.box_predictor.box2box_transform),
    ):
        decoded = transform.apply_deltas(raw, boxes)
        close(decoded, out[f"decoded_{name}"], f"decoded {name}")
        clipped = Boxes(decoded.clone())
        clipped.clip((h, w))
        close(clipped.tensor, out[f"decoded_clipped_{name}"], f"decoded and clipped {name}")
        close(transform.get_deltas(boxes, targets), out[f"encoded_{name}"], f"encoded {name}")
    pooler = net.roi_heads.box_pooler
    levels = assign_boxes_to_levels(
        [Boxes(boxes)],
        pooler.min_level,
        pooler.max_level,
        pooler.canonical_box_size,
        pooler.canonical_level,
    )
    assert torch.equal(levels, out["roi_levels"])


def test_mmrazor_0x_layout_converts_to_the_same_weights():
    case = CASES["classifier_subnet"]
    state = mmrazor_state(case)
    v0 = {
        k.replace("architecture.", "architecture.model.").replace("._candidates.", ".choices."): v
        for k, v in state.items()
    }
    one, zero = to_detnas(state), to_detnas(v0)
    assert (one.format, zero.format) == ("mmrazor-1.x", "mmrazor-0.x")
    assert zero.prefix == "architecture.model." and zero.arch == one.arch
    assert zero.state.keys() == one.state.keys() and all(
        torch.equal(zero.state[k], one.state[k]) for k in one.state
    )
    assert to_mmrazor(one.state, version="0.x", prefix="architecture.model.").keys() == v0.keys()


def test_bgr_model_gets_the_stem_flipped(tmp_path):
    case = CASES["classifier_subnet"]
    path = mmengine_file(tmp_path / "detnas_subnet_in1k.pth", mmrazor_state(case))
    net = classifier(
        "MODEL.DETNAS.ARCH", ",".join(str(PAPER_BLOCKS.index(n)) for n in case["arch"])
    )  # BGR config
    DetNASCheckpointer(net).load(path)
    rgb = seeded_input(SEED, case["input"], case["input_shape"])
    ours = classifier_outputs(net, rgb.flip(1))  # the same image, normalised in BGR order
    close(ours["logits"], case["outputs"]["logits"], "logits with a BGR model")


# ---- conversions and the tool ----------------------------------------------------------------------


def convert_tool():
    return convert_cli


def test_convert_tool_round_trips_exactly(tmp_path):
    tool = convert_tool()
    for name in ("detector_subnet", "classifier_supernet"):
        state = mmrazor_state(CASES[name])
        src = mmengine_file(tmp_path / f"{name}.pth", state)
        ours, back = str(tmp_path / f"{name}_d2.pth"), str(tmp_path / f"{name}_back.pth")
        assert tool.main([src, ours]) == 0
        assert tool.main([ours, back, "--to", "mmrazor"]) == 0
        again = read_checkpoint(back)["state_dict"]
        assert list(again) == list(state), name  # same keys in MMRazor's order
        assert all(torch.equal(again[k], state[k]) for k in state), name
    # ours -> MMRazor -> ours, from a model of ours
    net = classifier("MODEL.DETNAS.ARCH", "random:3")
    torch.save({"model": net.state_dict()}, tmp_path / "ours.pth")
    assert tool.main([str(tmp_path / "ours.pth"), str(tmp_path / "mm.pth"), "--to", "mmrazor"]) == 0
    assert (
        tool.main([str(tmp_path / "mm.pth"), str(tmp_path / "ours2.pth"), "--to", "detectron2"])
        == 0
    )
    again = torch.load(tmp_path / "ours2.pth", weights_only=True)["model"]
    ref = net.state_dict()
    assert again.keys() == ref.keys() and all(torch.equal(again[k], ref[k]) for k in ref)


def test_convert_tool_extracts_a_subnet_and_checks_the_arch(tmp_path, capsys):
    tool = convert_tool()
    case = CASES["classifier_supernet"]
    src = mmengine_file(tmp_path / "supernet.pth", mmrazor_state(case))
    arch = ",".join(["2"] * 20)
    assert tool.main([src, str(tmp_path / "sub.pth"), "--arch", arch]) == 0
    assert weights_arch(str(tmp_path / "sub.pth")) == (2,) * 20
    other = "0," + ",".join(["2"] * 19)
    assert tool.main([str(tmp_path / "sub.pth"), str(tmp_path / "sub2.pth"), "--arch", other]) == 2
    assert (
        "layer 0 (stage 0 block 0) is shuffle_7x7 in the file and shuffle_3x3"
        in capsys.readouterr().err
    )


def test_convert_tool_output_paths(tmp_path, capsys):
    tool = convert_tool()
    src = mmengine_file(tmp_path / "supernet.pth", mmrazor_state(CASES["classifier_supernet"]))
    (tmp_path / "a_file").write_text("x")
    for dst, problem in (
        (tmp_path / "a_file" / "sub" / "out.pth", f"{tmp_path / 'a_file'} is a file, not a folder"),
        (tmp_path, "is a folder: give the output file's path"),
    ):
        assert tool.main([src, str(dst)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"convert_checkpoint: cannot write {dst}: ") and problem in err
        assert len(err.splitlines()) == 1
    new = tmp_path / "new" / "folders" / "out.pth"  # missing folders are made
    assert tool.main([src, str(new)]) == 0 and new.is_file()


# ---- arch from the file, mismatches, refusals ------------------------------------------------------


def test_arch_mismatch_names_the_first_layer(tmp_path):
    case = CASES["classifier_subnet"]
    path = mmengine_file(tmp_path / "subnet.pth", mmrazor_state(case))
    ids = [PAPER_BLOCKS.index(n) for n in case["arch"]]
    wrong = list(ids)
    wrong[5] = (wrong[5] + 1) % 4
    arch = ",".join(map(str, wrong))
    with pytest.raises(
        ValueError, match=r"layer 5 \(stage 1 block 1\) is shuffle_3x3 in the file and shuffle_5x5"
    ):
        arch_opts_from_weights(
            os.path.join(REPO, "configs/ImageNet/subnet_small.yaml"),
            ["MODEL.WEIGHTS", path, "MODEL.DETNAS.ARCH", arch],
        )
    net = classifier("MODEL.DETNAS.ARCH", arch)
    with pytest.raises(
        ValueError, match=r"do not fit .* layer 5 \(stage 1 block 1\) is shuffle_3x3 in the file"
    ):
        DetNASCheckpointer(net).load(path)


def test_unknown_layout_names_the_layouts_tried(tmp_path):
    torch.save(
        {"state_dict": {"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.weight": torch.zeros(10, 4)}},
        tmp_path / "resnet.pth",
    )
    net = classifier("MODEL.DETNAS.ARCH", "random:0")
    tried = r"layouts tried: detnas-d2 .*MMRazor 1\.x / 0\.x.*official DetNAS"
    with pytest.raises(ValueError, match=r"resnet\.pth: .*" + tried):
        DetNASCheckpointer(net).load(str(tmp_path / "resnet.pth"))


def test_official_oneshot_checkpoint_is_refused_naming_its_channels():
    """ShuffleNet-Series OneShot (SPOS with searched mid channels): first_conv.0, features.<i>.branch_main."""
    state = {
        "module.first_conv.0.weight": torch.zeros(16, 3, 3, 3),
        "module.features.0.branch_main.0.weight": torch.zeros(38, 16, 1, 1),
        "module.features.1.branch_main.0.weight": torch.zeros(19, 32, 1, 1),
        "module.classifier.0.weight": torch.zeros(1000, 1024),
    }
    assert detect_format(state) == "official-oneshot"
    with pytest.raises(
        MegviiLayoutError, match=r"One-Shot .* mid channels .* by layer: \[38, 19\]"
    ):
        to_detnas(state)


def test_pickle_needs_opt_in_and_zero_matches_is_an_error(tmp_path, monkeypatch):
    path = tmp_path / "R-50.pkl"
    data = {
        "model": {"res2.0.conv1.weight": np.zeros((64, 64, 1, 1), np.float32)},
        "__author__": "Detectron2 Model Zoo",
        "matching_heuristics": True,
    }
    path.write_bytes(pickle.dumps(data))
    net = classifier("MODEL.DETNAS.ARCH", "random:0")
    monkeypatch.delenv(ALLOW_PICKLE_ENV, raising=False)
    with pytest.raises(
        RefusedCheckpointError, match=rf"pickle file .* can run any code .* {ALLOW_PICKLE_ENV}=1"
    ):
        DetNASCheckpointer(net).load(str(path))
    monkeypatch.setenv(ALLOW_PICKLE_ENV, "1")
    with pytest.raises(
        ValueError, match=r"none of its 1 tensors fits the model's .* Layouts tried"
    ):
        DetNASCheckpointer(net).load(str(path))


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo never",))


def test_files_asking_for_code_are_refused_naming_the_type(tmp_path, monkeypatch):
    monkeypatch.setenv(ALLOW_PICKLE_ENV, "1")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"model": {"a": _Payload()}}))
    with pytest.raises(RefusedCheckpointError, match=r"asks for '(posix|os|nt)\.system'"):
        read_checkpoint(str(tmp_path / "evil.pkl"))
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(
        RefusedCheckpointError, match=r"evil\.pth: refused: .* asks for '(posix|os|nt)\.system'"
    ):
        read_checkpoint(str(tmp_path / "evil.pth"))


def test_mmengine_bookkeeping_reads_as_data(tmp_path, monkeypatch):
    """A training checkpoint of mmengine: numpy scalars/arrays and HistoryBuffer objects in message_hub."""
    history = type("HistoryBuffer", (), {})
    history.__module__, history.__qualname__ = "mmengine.logging.history_buffer", "HistoryBuffer"
    for name in (
        "mmengine",
        "mmengine.logging",
        "mmengine.logging.history_buffer",
    ):  # pickling needs the
        monkeypatch.setitem(sys.modules, name, type(sys)(name))  # class under its real name
    sys.modules["mmengine.logging.history_buffer"].HistoryBuffer = history
    buffer = history()
    buffer._log_history = np.array([0.5, 0.25])
    state = mmrazor_state(CASES["classifier_subnet"])
    torch.save(
        {
            "meta": {"seed": np.int64(1)},
            "state_dict": state,
            "message_hub": {"log_scalars": {"loss": buffer}},
        },
        tmp_path / "epoch_1.pth",
    )
    loaded = read_checkpoint(str(tmp_path / "epoch_1.pth"))
    assert loaded["meta"]["seed"] == 1 and loaded["state_dict"].keys() == state.keys()


def test_train_net_fills_an_empty_arch_from_the_weights(tmp_path, monkeypatch):
    case = CASES["detector_subnet"]
    path = mmengine_file(tmp_path / "detnas_frcnn.pth", mmrazor_state(case))
    seen = {}

    def frozen_cfg(args):
        seen["opts"] = list(args.opts)
        raise SystemExit(0)

    monkeypatch.setattr(train_net, "frozen_cfg", frozen_cfg)
    args = type(
        "Args",
        (),
        {"config_file": os.path.join(REPO, MMDET_CONFIG), "opts": ["MODEL.WEIGHTS", path]},
    )()
    with pytest.raises(SystemExit):
        train_net.main(args)
    assert seen["opts"][-2:] == [
        "MODEL.DETNAS.ARCH",
        ",".join(str(PAPER_BLOCKS.index(n)) for n in case["arch"]),
    ]


def test_mmrazor_supernet_into_a_subnet_model_takes_the_path(tmp_path):
    case = CASES["classifier_supernet"]
    path = mmengine_file(tmp_path / "spos_supernet.pth", mmrazor_state(case))
    net = classifier(
        "MODEL.DETNAS.ARCH", ",".join(str(PAPER_BLOCKS.index(n)) for n in case["arch"]), *RGB_MEAN
    )
    with captured_log("fvcore.common.checkpoint") as log:
        DetNASCheckpointer(net).load(path)
    ours = classifier_outputs(net, seeded_input(SEED, case["input"], case["input_shape"]))
    for name, theirs in case["outputs"].items():
        close(ours[name], theirs, name)
    text = log.getvalue()
    assert "from mmrazor-1.x (classifier, supernet, prefix 'architecture.')" in text
    assert "| backbone.layers.4.*" in text and "| head.conv.*" in text  # the conversion table
    assert "Backbone hand-off" in text and "supernet, path 0,1,2,3" in text


def test_mmdet_retinanet_gives_its_backbone_only():
    """MMRazor's DetNAS RetinaNet supernet: its neck starts at another level and its head has no Faster R-CNN
    counterpart, so only the backbone converts; the rest is listed as dropped."""
    state = {
        k: v for k, v in mmrazor_state(CASES["detector_subnet"]).items() if ".roi_head." not in k
    }
    state = {k.replace(".rpn_head.rpn_", ".bbox_head.retina_"): v for k, v in state.items()}
    conversion = to_detnas(state)
    assert conversion.form == "detector" and conversion.arch is not None
    assert all(k.startswith("backbone.bottom_up.") for k in conversion.state)
    assert {"neck.lateral_convs.*", "neck.fpn_convs.*", "bbox_head.retina_conv.*"} <= set(
        conversion.dropped
    )


# ---- official (Megvii) DetNAS checkpoints ----------------------------------------------------------

OFFICIAL = torch.load(os.path.join(FIXTURES, "official_parity.pt"), weights_only=True)
OFFICIAL_CONFIGS = {
    "subnet_300M": "configs/ImageNet/official_subnet_small.yaml",
    "subnet_1.3G": "configs/ImageNet/official_subnet_large.yaml",
    "subnet_3.8G": "configs/ImageNet/official_subnet_large_wide.yaml",
}
OFFICIAL_ARCHS = {
    "subnet_300M": "COCO_FPN_300M",
    "subnet_1.3G": "COCO_FPN_1.3G",
    "subnet_3.8G": "COCO_FPN_3.8G",
}


def official_state(name, prefix="module."):
    case = OFFICIAL["cases"][name]
    return {
        prefix + k: v
        for k, v in seeded_state_dict(OFFICIAL["seed"], case["keys"], case["shapes"]).items()
    }


def official_classifier(config, *opts):
    return model(config, "MODEL.DETNAS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']", *opts)


def official_outputs(net, name):
    """Stage outputs on the fixture's 32x32 input and logits on its 224x224 input."""
    seed = OFFICIAL["seed"]
    with torch.no_grad():
        feats = net.backbone(seeded_input(seed, name + ":stages", OFFICIAL["stages_input"]))
        logits = net.head(
            net.backbone(seeded_input(seed, name + ":logits", OFFICIAL["logits_input"]))["res5"]
        )
    return {"logits": logits, **{f"stage{i}": feats[f"res{i + 2}"] for i in range(4)}}


def assert_official_outputs(net, name):
    ours = official_outputs(net, name)
    for key, theirs in OFFICIAL["cases"][name]["outputs"].items():
        close(ours[key], theirs, f"{name} {key}")


@pytest.mark.parametrize("name", sorted(OFFICIAL_CONFIGS))
def test_official_subnet_matches_the_official_code(tmp_path, name):
    """ShuffleNet-Series DetNAS/network.py at its published sizes: as train.py saves it (DataParallel keys
    under 'state_dict') and as the DetNAS repository ships ImageNet models (a bare state dict in a .pkl
    written by torch.save, read without DETNAS_ALLOW_PICKLE); the arch comes from the module names."""
    saved = tmp_path / f"{name}.pth.tar"
    torch.save({"state_dict": official_state(name)}, saved)
    shipped = tmp_path / f"{OFFICIAL_ARCHS[name]}.pkl"
    torch.save(official_state(name, prefix=""), shipped)
    published = os.path.join(REPO, "configs", "archs", "official", OFFICIAL_ARCHS[name] + ".yaml")
    for path in (str(saved), str(shipped)):
        opts = arch_opts_from_weights(
            os.path.join(REPO, OFFICIAL_CONFIGS[name]), ["MODEL.WEIGHTS", path]
        )
        assert opts[-2] == "MODEL.DETNAS.ARCH"
        space = get_detnas_cfg(os.path.join(REPO, OFFICIAL_CONFIGS[name]), [])
        assert opts[-1] == ",".join(map(str, load_arch(published, space_from_cfg(space))))
        net = official_classifier(OFFICIAL_CONFIGS[name], *opts)
        with captured_log("fvcore.common.checkpoint") as log:
            DetNASCheckpointer(net).load(path)
        assert f"from official-detnas (classifier, subnet {opts[-1]}" in log.getvalue()
        assert "normalisation" not in log.getvalue()  # the config feeds their raw BGR input
        assert_official_outputs(net, name)


def test_official_supernet_matches_the_official_code(tmp_path):
    """DetNAS Supernet-ImageNet/detnasnet.py on one path: into the supernet (block style official-shuffle1),
    and into the subnet of that path; the other channel split computes something else."""
    case = OFFICIAL["cases"]["supernet_300M"]
    path = str(tmp_path / "supernet.pth")
    torch.save({"state_dict": official_state("supernet_300M")}, path)
    supernet = official_classifier("configs/ImageNet/official_supernet_small.yaml")
    DetNASCheckpointer(supernet).load(path)
    supernet.backbone.set_arch(case["path"])
    assert_official_outputs(supernet, "supernet_300M")
    arch = ",".join(map(str, case["path"]))
    subnet = official_classifier(
        "configs/ImageNet/official_subnet_small.yaml",
        "MODEL.DETNAS.BLOCK_STYLE",
        "official-shuffle1",
        "MODEL.DETNAS.ARCH",
        arch,
    )
    with captured_log("fvcore.common.checkpoint") as log:
        DetNASCheckpointer(subnet).load(path)
    assert "Backbone hand-off" in log.getvalue() and f"supernet, path {arch}" in log.getvalue()
    assert_official_outputs(subnet, "supernet_300M")
    split2 = official_classifier(
        "configs/ImageNet/official_subnet_small.yaml", "MODEL.DETNAS.ARCH", arch
    )
    with captured_log("fvcore.common.checkpoint") as log:
        DetNASCheckpointer(split2).load(path)
    assert (
        "block style 'official-shuffle1'" in log.getvalue()
        and "the model 'official'" in log.getvalue()
    )
    theirs = case["outputs"]["stage3"]
    assert (official_outputs(split2, "supernet_300M")["stage3"] - theirs).abs().max() > 1e-2


def test_official_detector_gives_its_backbone(tmp_path):
    """maskrcnn_benchmark's DetNAS detector (module.backbone.body.*): the backbone converts, its FPN and heads
    are listed as dropped."""
    state = {
        k.replace("module.", "module.backbone.body."): v
        for k, v in official_state("subnet_300M").items()
        if not k.startswith(("module.last_conv.", "module.fc."))
    }
    state["module.backbone.fpn.fpn_inner1.weight"] = torch.zeros(256, 64, 1, 1)
    state["module.rpn.head.conv.weight"] = torch.zeros(256, 256, 3, 3)
    conversion = to_detnas(state)
    assert (conversion.format, conversion.form, conversion.prefix) == (
        "official-detnas",
        "detector",
        "module.backbone.body.",
    )
    assert set(conversion.dropped) == {"module.backbone.fpn.*", "module.rpn.head.*"}
    path = str(tmp_path / "model_final.pth")
    torch.save({"model": state, "iteration": 90000}, path)
    net = model(
        "configs/COCO-Detection/official_subnet_small_FPN_1x.yaml",
        *CPU_NORMS,
        "MODEL.DETNAS.ARCH",
        ",".join(map(str, conversion.arch)),
    )
    DetNASCheckpointer(net).load(path)
    with torch.no_grad():
        feats = net.backbone.bottom_up(
            seeded_input(OFFICIAL["seed"], "subnet_300M:stages", OFFICIAL["stages_input"])
        )
    for i in range(4):
        close(
            feats[f"res{i + 2}"],
            OFFICIAL["cases"]["subnet_300M"]["outputs"][f"stage{i}"],
            f"stage{i}",
        )
    # step 5 from the official ImageNet model: its backbone goes to backbone.bottom_up, its classifier is dropped
    torch.save(official_state("subnet_300M", prefix=""), tmp_path / "COCO_FPN_300M.pkl")
    net = model(
        "configs/COCO-Detection/official_subnet_small_FPN_1x.yaml",
        *CPU_NORMS,
        *arch_opts_from_weights(
            os.path.join(REPO, "configs/COCO-Detection/official_subnet_small_FPN_1x.yaml"),
            ["MODEL.WEIGHTS", str(tmp_path / "COCO_FPN_300M.pkl")],
        ),
    )
    with captured_log("fvcore.common.checkpoint") as log:
        DetNASCheckpointer(net).load(str(tmp_path / "COCO_FPN_300M.pkl"))
    assert (
        "| backbone.layers.* | backbone.bottom_up.layers.* |" in log.getvalue()
        and "no place for: head.*" in log.getvalue()
    )
    with torch.no_grad():
        feats = net.backbone.bottom_up(
            seeded_input(OFFICIAL["seed"], "subnet_300M:stages", OFFICIAL["stages_input"])
        )
    close(
        feats["res5"],
        OFFICIAL["cases"]["subnet_300M"]["outputs"]["stage3"],
        "stage3 after the hand-off",
    )


def test_official_wrong_arch_or_style_is_an_error(tmp_path):
    path = str(tmp_path / "official_300M.pth")
    torch.save({"state_dict": official_state("subnet_300M")}, path)
    arch = list(to_detnas(official_state("subnet_300M")).arch)  # 2,1,2,0,2,...
    arch[6] = 0  # shuffle_5x5 in the file
    wrong = ",".join(map(str, arch))
    config = os.path.join(REPO, OFFICIAL_CONFIGS["subnet_300M"])
    with pytest.raises(
        ValueError, match=r"layer 6 \(stage 1 block 2\) is shuffle_5x5 in the file and shuffle_3x3"
    ):
        arch_opts_from_weights(config, ["MODEL.WEIGHTS", path, "MODEL.DETNAS.ARCH", wrong])
    with pytest.raises(
        ValueError, match=r"layer 6 \(stage 1 block 2\) is shuffle_5x5 in the file and shuffle_3x3"
    ):
        DetNASCheckpointer(
            official_classifier(OFFICIAL_CONFIGS["subnet_300M"], "MODEL.DETNAS.ARCH", wrong)
        ).load(path)
    mmrazor_style = classifier("MODEL.DETNAS.ARCH", wrong)  # this project's network
    with pytest.raises(
        ValueError,
        match=r"block style 'official', the model is .* 'mmrazor'.*Set MODEL.DETNAS.BLOCK_STYLE official",
    ):
        DetNASCheckpointer(mmrazor_style).load(path)


def test_official_weights_warn_a_normalising_model(tmp_path):
    path = str(tmp_path / "official_300M.pth")
    torch.save({"state_dict": official_state("subnet_300M")}, path)
    arch = ",".join(map(str, to_detnas(official_state("subnet_300M")).arch))
    net = classifier(
        "MODEL.DETNAS.BLOCK_STYLE", "official", "MODEL.DETNAS.ARCH", arch
    )  # ImageNet mean/std
    with captured_log("fvcore.common.checkpoint") as log:
        DetNASCheckpointer(net).load(path)
    assert "BGR pixels in 0-255 without normalisation" in log.getvalue()


def test_convert_tool_round_trips_official_files(tmp_path, capsys):
    tool = convert_tool()
    for name in ("subnet_300M", "supernet_300M"):
        state = official_state(name)
        src, ours, back = (str(tmp_path / f"{name}{s}.pth") for s in ("", "_d2", "_back"))
        torch.save({"state_dict": state}, src)
        assert tool.main([src, ours]) == 0
        assert tool.main([ours, back, "--to", "official"]) == 0
        again = read_checkpoint(back)["state_dict"]
        assert list(again) == list(state), name  # the official keys, in their module order
        assert all(torch.equal(again[k], state[k]) for k in state), name
    # a subnet out of the official supernet, as official keys
    path = ",".join(map(str, OFFICIAL["cases"]["supernet_300M"]["path"]))
    sub = str(tmp_path / "sub_d2.pth")
    assert tool.main([str(tmp_path / "supernet_300M.pth"), sub, "--arch", path]) == 0
    assert weights_arch(sub) == tuple(OFFICIAL["cases"]["supernet_300M"]["path"])
    # this project's network has no official layout
    net = classifier("MODEL.DETNAS.ARCH", "random:3")
    torch.save({"model": net.state_dict()}, tmp_path / "ours.pth")
    capsys.readouterr()
    assert tool.main([str(tmp_path / "ours.pth"), str(tmp_path / "x.pth"), "--to", "official"]) == 2
    assert "MODEL.DETNAS.BLOCK_STYLE official" in capsys.readouterr().err
