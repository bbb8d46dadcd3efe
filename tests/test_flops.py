import json
import os
import random
import subprocess
import sys

import detnas_d2  # noqa: F401  (compat shims before detectron2 imports)
from detnas_d2 import flops as flops_module

import pytest
import torch
from torch import nn

from detnas_d2.arch_info import human
from detnas_d2.arch_info import main as arch_info_main
from detnas_d2.arch_io import save_arch
from detnas_d2.flops import count_flops, get_flops_table
from detnas_d2.modeling.backbone import ShuffleNetV2Subnet
from detnas_d2.modeling.heads import ClassifierHead
from detnas_d2.search_space import PAPER_BLOCKS, get_space

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Classifier(nn.Module):
    def __init__(self, space, arch, num_classes):
        super().__init__()
        self.backbone = ShuffleNetV2Subnet(space, arch)
        self.head = ClassifierHead(space.stage_out[-1], num_classes, conv_bias=space.official)

    def forward(self, x):
        return self.head(self.backbone(x)["res5"])


def _fvcore(space, arch, size, head="none", num_classes=1000):
    model = (
        ShuffleNetV2Subnet(space, arch) if head == "none" else _Classifier(space, arch, num_classes)
    )
    flops = count_flops(model, torch.zeros(1, 3, *size))
    return flops, sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, width, size, head, style",
    [
        ("small", 0.5, (64, 64), "none", "mmrazor"),
        ("small", 0.25, (48, 80), "classifier", "mmrazor"),
        ("large", 0.25, (64, 64), "none", "mmrazor"),
        ("large-wide", 0.25, (80, 48), "classifier", "mmrazor"),
        (
            "small",
            0.5,
            (64, 64),
            "classifier",
            "official",
        ),  # Megvii's network: other stride-2 units, biases
    ],
)
def test_table_equals_fvcore_on_random_archs(name, width, size, head, style):
    space = get_space(name, width, style)
    table = get_flops_table(space, size, head=head, num_classes=10)
    rng = random.Random(name)
    archs = [space.random_arch(rng) for _ in range(2 if name == "small" else 1)]
    for arch in archs:
        assert (table.flops(arch), table.params(arch)) == _fvcore(
            space, arch, size, head, num_classes=10
        )


def test_small_space_at_224():
    table = get_flops_table(get_space("small"))
    arch = (0,) * 20
    flops, params = _fvcore(get_space("small"), arch, (224, 224))
    assert (table.flops(arch), table.params(arch)) == (flops, params)
    # DetNAS-300M: about 300M multiply-accumulates for the backbone at 224
    assert 200e6 < flops < 400e6
    assert table.min_flops < flops < table.max_flops


def test_min_max_and_layer_structure():
    space = get_space("large", 0.25)
    table = get_flops_table(space, 64)
    assert len(table.layer_flops) == len(table.layer_params) == space.num_layers
    assert all(len(row) == len(PAPER_BLOCKS) for row in table.layer_flops)
    argmin = tuple(min(range(len(row)), key=row.__getitem__) for row in table.layer_flops)
    argmax = tuple(max(range(len(row)), key=row.__getitem__) for row in table.layer_flops)
    assert table.flops(argmin) == table.min_flops == _fvcore(space, argmin, (64, 64))[0]
    assert table.flops(argmax) == table.max_flops
    # a bigger kernel never costs less; stride-2 layers halve the resolution
    for row in table.layer_flops:
        assert row[0] < row[1] < row[2]
    sizes = table.layer_input_sizes
    assert sizes[0] == (32, 32) and sizes[space.stage_depths[0]] == (16, 16) and sizes[-1] == (2, 2)
    assert table.min_params <= table.params((0,) * space.num_layers) < table.max_params


def test_head_and_input_size():
    space = get_space("small", 0.25)
    backbone = get_flops_table(space, 64)
    classifier = get_flops_table(space, 64, head="classifier", num_classes=10)
    arch = space.random_arch(random.Random(3))
    # the head: 1x1 conv to 1024 at 2x2 and its BN, the linear layer; pooling is not counted
    head_flops = space.stage_out[-1] * 1024 * 4 + 2 * 1024 * 4 + 1024 * 10
    assert classifier.flops(arch) - backbone.flops(arch) == classifier.head_flops == head_flops
    # a 2x larger input costs about 4x; (h, w) and h give the same square table
    assert 3.5 < get_flops_table(space, 128).flops(arch) / backbone.flops(arch) < 4.5
    assert get_flops_table(space, (64, 64)) is backbone  # cached
    assert get_flops_table(get_space("small", 0.25), 64) is backbone


def test_disk_cache(tmp_path):
    space = get_space("small", 0.25)
    built = get_flops_table(space, 32, cache_dir=str(tmp_path))
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("flops_small_")
    flops_module._cached_table.cache_clear()
    loaded = get_flops_table(space, 32, cache_dir=str(tmp_path))
    assert loaded is not built and loaded == built


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_size": 0}, r"input_size must be a positive int or \(height, width\), got 0"),
        ({"input_size": (64, 64, 3)}, r"input_size must be"),
        ({"head": "fpn"}, r"unknown head 'fpn'"),
        ({"head": "classifier", "num_classes": 0}, r"num_classes, head_channels >= 1"),
    ],
)
def test_bad_table_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_flops_table(get_space("small", 0.25), **kwargs)


def test_table_takes_a_space_not_a_name():
    with pytest.raises(TypeError, match=r"expected a SearchSpace .*got 'small'"):
        get_flops_table("small", 64)


def test_bad_arch():
    table = get_flops_table(get_space("small", 0.25), 32)
    with pytest.raises(ValueError, match=r"arch has 19 layers"):
        table.flops((0,) * 19)
    with pytest.raises(ValueError, match=r"layer 3: unknown block id -1"):
        table.params((0, 0, 0, -1) + (0,) * 16)


# ---- arch_info ------------------------------------------------------------------------------------


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "detnas_d2.arch_info", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_arch_info_cli(tmp_path, capsys):
    space = get_space("large", 0.25)
    arch = space.random_arch(random.Random(5))
    path = str(tmp_path / "arch.yaml")
    save_arch(path, arch, space, score=0.5)  # the file names space and width

    assert arch_info_main([path, "--input-size", "64", "--head", "classifier"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "space large, width 0.25, input 64x64, classifier head, 1000 classes" in lines
    classifier = get_flops_table(space, 64, head="classifier")
    total = next(line for line in lines if line.startswith("total")).split()
    assert total[1:] == [human(classifier.flops(arch)), human(classifier.params(arch))]
    stage2 = next(line for line in lines if line.startswith("2 ")).split()
    assert stage2[1:4] == ["16-31", str(space.stage_out[2]), "16"]
    assert stage2[4:20] == [("3x3", "5x5", "7x7", "xcp")[c] for c in arch[16:32]]

    # the process reads the table this one writes to the disk cache
    cache = {"DETNAS_FLOPS_CACHE_DIR": str(tmp_path / "cache")}
    backbone = get_flops_table(space, 64, cache_dir=cache["DETNAS_FLOPS_CACHE_DIR"])
    result = _cli(path, "--input-size", "64", "--json", env=cache)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["arch"] == list(arch) and info["space"] == "large" and info["width_mult"] == 0.25
    assert (
        info["choices"][0]
        == ("shuffle_3x3", "shuffle_5x5", "shuffle_7x7", "shuffle_xception")[arch[0]]
    )
    assert (info["flops"], info["params"]) == (backbone.flops(arch), backbone.params(arch))
    assert sum(s["flops"] for s in info["stages"]) + info["stem"]["flops"] == info["flops"]
    assert info["metadata"] == {"width_mult": 0.25, "score": 0.5}

    bad = tmp_path / "bad.yaml"
    bad.write_text("space: small\narch:\n  - shuffle_9x9\n")
    result = _cli(str(bad))
    assert result.returncode == 2 and result.stdout == ""
    assert (
        result.stderr
        == f"python -m detnas_d2.arch_info: error: {bad}: line 3: unknown block 'shuffle_9x9' "
        "(blocks: shuffle_3x3, shuffle_5x5, shuffle_7x7, shuffle_xception)\n"
    )


def test_arch_info_options(capsys):
    ids = ",".join(["1"] * 20)
    assert arch_info_main([ids, "--width-mult", "0.25", "--input-size", "32x48", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    table = get_flops_table(get_space("small", 0.25), (32, 48))
    assert (info["space"], info["input_size"], info["flops"]) == (
        "small",
        [32, 48],
        table.flops((1,) * 20),
    )
    # the space of a 40-layer list must be named
    assert arch_info_main([",".join(["0"] * 40)]) == 2
    assert "40 layers fit spaces large and large-wide: name the space" in capsys.readouterr().err
    assert arch_info_main([ids, "--space", "large"]) == 2
    assert "40 layers expected for space large, found 20" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        arch_info_main([ids, "--input-size", "big"])
    assert exit_info.value.code == 2
    assert (
        "an input size is HxW or one number (square), e.g. 224x224 or 800x1333; got 'big'"
        in capsys.readouterr().err
    )
