"""Deployment export (tools/export_model.py, detnas_d2/export/, detnas_d2/modeling/bn_fold.py): BN
folding, TorchScript/ONNX export of the toy subnet detectors (Faster R-CNN FPN, RetinaNet), classifier
and backbone, parity against PyTorch on toy images (onnxruntime on CPU), and clear errors for bad
inputs (NaN weights or outputs, heads a checkpoint does not hold, a sample image that is no image)."""

import json
import os
import re

import detnas_d2  # noqa: F401  (compat shims, registrations)

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from torch import nn

from detnas_d2.config import get_detnas_cfg
from detnas_d2.export import cli as export_cli
from detnas_d2.export import compare_outputs
from detnas_d2.modeling import ClassifierHead, ShuffleNetV2Subnet
from detnas_d2.modeling.bn_fold import count_batchnorms, fold_batchnorm
from detnas_d2.search_space import get_space

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = "0,1,2,3,3,2,1,0,0,1,2,3,3,2,1,0,0,1,2,3"
DET_CFG = os.path.join(ROOT, "configs/Toy/det_subnet.yaml")
CLS_CFG = os.path.join(ROOT, "configs/Toy/cls_subnet.yaml")
RETINA_CFG = os.path.join(ROOT, "configs/COCO-Detection/subnet_small_RetinaNet_1x.yaml")


def _tool():
    return export_cli


@pytest.fixture(scope="module")
def tool():
    return _tool()


def _randomize(model: nn.Module, seed: int, head_std: float = 0.05):
    """Non-trivial BN statistics everywhere and random head weights: untrained heads give tied scores
    (every anchor the same), which would make NMS and top-k order arbitrary."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("backbone"):
                p.copy_(torch.randn(p.shape, generator=g) * head_std)
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)):
                n = m.running_mean.shape[0]
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)


def _weights(tmp_path, config, opts, seed=0):
    """A checkpoint of the config's model with randomized weights (loaded through MODEL.WEIGHTS)."""
    cfg = get_detnas_cfg(config, opts)
    torch.manual_seed(seed)
    model = build_model(cfg)
    _randomize(model, seed)
    path = str(tmp_path / "weights.pth")
    torch.save({"model": model.state_dict()}, path)
    return path


def _run(tool, tmp_path, config, fmt, opts=(), extra=(), name="out"):
    out = str(tmp_path / name)
    rc = tool.main(
        [
            "--config-file",
            config,
            "--format",
            fmt,
            "--output",
            out,
            "--num-samples",
            "3",
            *extra,
            *opts,
        ]
    )
    info_path = os.path.join(out, "export_info.json")
    info = json.load(open(info_path)) if os.path.exists(info_path) else None
    return rc, out, info


# ---- BN folding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["BN", "SyncBN", "FrozenBN"])
def test_fold_batchnorm_equals_unfolded_and_removes_every_bn(norm):
    space = get_space("small", 0.25)
    torch.manual_seed(0)
    arch = [int(a) for a in ARCH.split(",")]
    model = nn.Sequential(ShuffleNetV2Subnet(space, arch, norm=norm, out_features=["res5"]))
    head = ClassifierHead(space.stage_out[-1], 5, 64, norm=norm)
    _randomize(model, 1, head_std=0)
    _randomize(head, 2, head_std=0)
    full = nn.Sequential(model[0], _Res5(), head).eval()
    n_bn = count_batchnorms(full)
    folded, n = fold_batchnorm(full)
    assert n == n_bn > 80 and count_batchnorms(folded) == 0
    assert count_batchnorms(full) == n_bn  # not in place by default
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ref, got = full(x), folded(x)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


class _Res5(nn.Module):
    def forward(self, features):
        return features["res5"]


def test_fold_batchnorm_sequential_and_frozen_bn():
    torch.manual_seed(0)
    seq = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1, bias=False),
        FrozenBatchNorm2d(4),
    )
    _randomize(seq, 3, head_std=0)
    seq.eval()
    folded, n = fold_batchnorm(seq)
    assert n == 2 and count_batchnorms(folded) == 0
    x = torch.randn(1, 3, 10, 10)
    with torch.no_grad():
        assert torch.allclose(folded(x), seq(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="eval-mode"):
        fold_batchnorm(seq.train())


# ---- export and parity --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_faster_rcnn(tool, tmp_path, fmt):
    weights = _weights(tmp_path, DET_CFG, [])
    rc, out, info = _run(tool, tmp_path, DET_CFG, fmt, ["MODEL.WEIGHTS", weights])
    assert rc == 0, info
    assert (
        info["ok"] and info["model"] == "rcnn" and info["outputs"] == ["boxes", "scores", "classes"]
    )
    assert info["bn_folded"] == 84 and info["bn_left"] == 0
    assert len(info["parity"]) == 3 and all(r["detections"] > 0 for r in info["parity"])
    assert max(r["outputs"]["scores"]["rel"] for r in info["parity"]) <= 1e-4
    assert all(r["ok"] for r in info["fold_check"])
    assert os.path.isfile(os.path.join(out, "model.ts" if fmt == "torchscript" else "model.onnx"))


def test_export_retinanet_onnx(tool, tmp_path, toy_retinanet_opts):
    # the COCO RetinaNet config narrowed to the toy shapes, on the toy data at 128 px
    test_data = ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128"]
    test_data += ["DATASETS.TEST", "('toy_det_val',)"]
    opts = toy_retinanet_opts + test_data + ["MODEL.DETNAS.ARCH", ARCH]
    weights = _weights(tmp_path, RETINA_CFG, opts)
    rc, out, info = _run(tool, tmp_path, RETINA_CFG, "onnx", opts + ["MODEL.WEIGHTS", weights])
    assert rc == 0, info
    assert info["ok"] and info["model"] == "retinanet"
    assert all(r["detections"] > 0 for r in info["parity"])

    # The exported file alone: onnxruntime, named inputs and outputs, another input size.
    import onnxruntime as ort

    session = ort.InferenceSession(
        os.path.join(out, "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in session.get_inputs()] == ["image"]
    boxes, scores, classes = session.run(None, {"image": torch.rand(3, 96, 160).mul(255).numpy()})
    assert boxes.shape[1] == 4 and scores.shape == classes.shape == boxes.shape[:1]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_classifier(tool, tmp_path, fmt):
    weights = _weights(tmp_path, CLS_CFG, [])
    rc, out, info = _run(tool, tmp_path, CLS_CFG, fmt, ["MODEL.WEIGHTS", weights])
    assert rc == 0, info
    assert info["ok"] and info["model"] == "classifier" and info["outputs"] == ["logits"]
    assert info["bn_left"] == 0
    cases = [r["case"] for r in info["parity"]]
    assert cases[-1] == "batch of 3"  # the dynamic batch size is checked too
    assert all(r["outputs"]["logits"]["rel"] <= 1e-4 for r in info["parity"])


def test_export_backbone_only_onnx(tool, tmp_path):
    weights = _weights(tmp_path, DET_CFG, [])
    rc, out, info = _run(
        tool, tmp_path, DET_CFG, "onnx", ["MODEL.WEIGHTS", weights], extra=["--backbone-only"]
    )
    assert rc == 0, info
    assert info["model"] == "backbone" and info["outputs"] == ["res2", "res3", "res4", "res5"]
    assert info["arch"] == [0, 1, 2, 3] * 5  # det_subnet.yaml's MODEL.DETNAS.ARCH
    assert info["bn_folded"] == count_batchnorms(
        ShuffleNetV2Subnet(get_space("small", 0.25), info["arch"])
    )


def test_scripting_a_detector_is_refused(tool, tmp_path, capsys):
    rc, _, _ = _run(tool, tmp_path, DET_CFG, "torchscript", extra=["--export-method", "scripting"])
    assert rc == 2 and "use tracing" in capsys.readouterr().err


# ---- parity failures and bad inputs -------------------------------------------------------------


def test_compare_outputs_flags_mismatches():
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 4, 4]])
    scores, classes = torch.tensor([0.9, 0.8, 0.8]), torch.tensor([1, 2, 2])
    ref = (boxes, scores, classes)
    names = ["boxes", "scores", "classes"]
    # Same detections, tied scores in another order: matched, passes.
    perm = torch.tensor([0, 2, 1])
    assert compare_outputs(ref, tuple(t[perm] for t in ref), names, detections=True)["ok"]
    off = compare_outputs(ref, (boxes + 0.01, scores, classes), names, detections=True)
    assert not off["ok"] and "boxes" in off["problem"] and "tolerance" in off["problem"]
    fewer = compare_outputs(ref, tuple(t[:2] for t in ref), names, detections=True)
    assert not fewer["ok"] and "2 detections, PyTorch 3" in fewer["problem"]
    logits = torch.tensor([[1.0, -2.0]])
    assert compare_outputs([logits], [logits * (1 + 5e-5)], ["logits"])["ok"]
    assert not compare_outputs([logits], [logits * (1 + 5e-4)], ["logits"])["ok"]


def test_mismatch_beyond_tolerance_exits_1(tool, tmp_path, capsys):
    # ONNX Runtime differs from PyTorch by ~1e-7 relative: a zero tolerance must fail with status 1.
    rc, out, info = _run(tool, tmp_path, CLS_CFG, "onnx", extra=["--rtol", "0", "--backbone-only"])
    assert rc == 1 and not info["ok"]
    assert "differs from PyTorch beyond the tolerance" in capsys.readouterr().err


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.DETNAS.ARCH", ""], "MODEL.DETNAS.ARCH is empty"),
        (["MODEL.DETNAS.ARCH", "0,1,2"], "layers"),  # wording is arch_io's
        (["MODEL.WEIGHTS", "/nonexistent/model.pth"], "no such file"),
        (["MODEL.NO_SUCH_KEY", "1"], "command line: no config key MODEL.NO_SUCH_KEY"),
    ],
)
def test_bad_inputs_give_clear_errors(tool, tmp_path, capsys, opts, message):
    rc, _, info = _run(tool, tmp_path, DET_CFG, "onnx", opts)
    assert rc == 2 and info is None
    err = capsys.readouterr().err
    assert "export_model.py: error:" in err and message in err


def test_supernet_config_is_refused(tool, tmp_path, capsys):
    rc, _, info = _run(tool, tmp_path, os.path.join(ROOT, "configs/Toy/det_supernet.yaml"), "onnx")
    assert rc == 2 and info is None
    err = capsys.readouterr().err
    assert "export needs a subnet" in err and "MODEL.DETNAS.ARCH" in err


def test_missing_config_file(tool, tmp_path, capsys):
    rc, _, _ = _run(tool, tmp_path, str(tmp_path / "nope.yaml"), "torchscript")
    assert rc == 2 and "no such file" in capsys.readouterr().err


# ---- broken weights and inputs: one line, status 2, nothing written -------------------------------------


def _broken_weights(tmp_path, config, key_suffix, value):
    """A checkpoint of the config's model with the first tensor whose name ends with `key_suffix` set to
    `value` (NaN weights, or a BN running variance of -1: finite weights whose outputs are NaN)."""
    state = build_model(get_detnas_cfg(config, [])).state_dict()
    key = next(k for k in state if k.endswith(key_suffix))
    state[key].fill_(value)
    path = str(tmp_path / "broken.pth")
    torch.save({"model": state}, path)
    return path


@pytest.mark.parametrize(
    "config, suffix, value, message",
    [
        (DET_CFG, "running_var", -1.0, "PyTorch's own output 'res2' on image 0 holds NaN or Inf"),
        (CLS_CFG, "running_var", -1.0, "PyTorch's own output 'logits' on image 0 holds NaN or Inf"),
        (DET_CFG, "cls_score.weight", float("nan"), r"broken\.pth: 1 of its \d+ tensors hold NaN"),
    ],
    ids=["detector NaN outputs", "classifier NaN outputs", "NaN weights"],
)
def test_nan_is_refused_before_anything_is_exported(
    tool, tmp_path, capsys, config, suffix, value, message
):
    weights = _broken_weights(tmp_path, config, suffix, value)
    rc, out, _ = _run(tool, tmp_path, config, "torchscript", ["MODEL.WEIGHTS", weights])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(message, err) and err.count("\n") == 1
    assert not os.path.exists(out) and "Parity OK" not in err


def test_detector_export_of_a_classifier_checkpoint_needs_backbone_only(tool, tmp_path, capsys):
    weights = _weights(tmp_path, CLS_CFG, [])
    rc, out, _ = _run(tool, tmp_path, DET_CFG, "torchscript", ["MODEL.WEIGHTS", weights])
    assert (
        rc == 2
        and "MODEL.DETNAS.ALLOW_RANDOM_HEADS True" in capsys.readouterr().err
        and not os.path.exists(out)
    )
    rc, _, info = _run(
        tool,
        tmp_path,
        DET_CFG,
        "torchscript",
        ["MODEL.WEIGHTS", weights],
        extra=["--backbone-only"],
    )
    assert rc == 0 and info["ok"] and info["model"] == "backbone"


def test_a_sample_image_that_is_no_image(tool, tmp_path, capsys):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    rc, out, _ = _run(tool, tmp_path, DET_CFG, "torchscript", extra=["--sample-image", str(text)])
    err = capsys.readouterr().err
    assert (
        rc == 2
        and f"--sample-image {text}: cannot be read as an image" in err
        and err.count("\n") == 1
    )
    assert not os.path.exists(out)
