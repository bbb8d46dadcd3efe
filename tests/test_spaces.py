"""Search space files: the shipped spaces, the errors of malformed files, FLOPs tables against fvcore on
every shipped space, and a space of a block type registered here (not in the package), written in the
test, through supernet training, a search, the subnet and its arch file."""

import os
import random
import textwrap

import detnas_d2  # noqa: F401  (first: compat shims, registrations)
from detnas_d2 import add_detnas_config

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from detnas_d2.arch_info import describe
from detnas_d2.arch_io import load_arch, load_arch_record
from detnas_d2.checkpoint import DetNASCheckpointer
from detnas_d2.checkpoint.mmrazor import to_mmrazor
from detnas_d2.engine import DetNASTrainer
from detnas_d2.flops import count_flops, get_flops_table
from detnas_d2.latency.timing import build_table
from detnas_d2.modeling import (
    ShuffleNetV2Subnet,
    ShuffleNetV2Supernet,
    find_detnas_backbone,
)
from detnas_d2.search import run_search
from detnas_d2.search_space import PAPER_BLOCKS, get_space, shipped_spaces, space_from_cfg
from detnas_d2.user_errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Three candidates of two families in most stages, two in the last: layers choose among 3 or 2 blocks.
USER_BLOCKS = os.path.join(REPO, "tests", "user_blocks.py")
USER_SPACE = f"""
name: plain-toy
imports: [{USER_BLOCKS}]
stem: {{channels: 8}}
blocks:
  - {{name: plain3, type: PlainConvBlock, kernel_size: 3}}
  - {{name: plain5, type: PlainConvBlock, kernel_size: 5}}
  - {{name: mb3_e3, type: InvertedResidual, kernel_size: 3, expansion: 3}}
stages:
  - {{channels: 16, units: 2}}
  - {{channels: 24, units: 2}}
  - {{channels: 32, units: 2}}
  - channels: 48
    units: 1
    blocks:
      - {{name: plain3, type: PlainConvBlock, kernel_size: 3}}
      - {{name: mb3_e6, type: InvertedResidual, kernel_size: 3, expansion: 6}}
channel_divisor: 8
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


# ---- the shipped spaces ---------------------------------------------------------------------------


def test_shipped_spaces_parse():
    assert shipped_spaces() == ("large", "large-wide", "mobilenetv2", "small")
    small, large, wide = get_space("small"), get_space("large"), get_space("large-wide")
    for space, stem, channels, depths in (
        (small, 16, (64, 160, 320, 640), (4, 4, 8, 4)),
        (large, 48, (96, 240, 480, 960), (8, 8, 16, 8)),
        (wide, 72, (172, 432, 864, 1728), (8, 8, 16, 8)),
    ):
        assert (space.stem_channels, space.stage_channels, space.stage_depths) == (
            stem,
            channels,
            depths,
        )
        assert all(tuple(b.name for b in blocks) == PAPER_BLOCKS for blocks in space.layer_blocks)
        assert space.is_paper and space.block_style == "mmrazor" and space.ref == space.name
        assert space.out_features == ("res2", "res3", "res4", "res5")
    assert small.layer_blocks[0][2].type == "ShuffleBlock"
    assert small.layer_blocks[0][2].kwargs() == {"kernel_size": 7}
    assert small.size == 4**20
    mobile = get_space("mobilenetv2")
    assert mobile.num_layers == 18 and mobile.num_choices == (6,) * 18 and mobile.size == 6**18
    assert [b.kwargs() for b in mobile.layer_blocks[0]] == [
        {"kernel_size": k, "expansion": e} for k in (3, 5, 7) for e in (3, 6)
    ]
    assert mobile.block_styles == () and mobile.block_style == "" and not mobile.is_paper
    assert get_space("mobilenetv2", 0.25).stage_out == (8, 8, 16, 40)  # multiples of 8
    # A shipped space is the same space given by its file's path (but recorded by the path).
    by_path = get_space(os.path.join(REPO, "configs", "spaces", "small.yaml"))
    assert by_path.layer_blocks == small.layer_blocks and by_path.digest == small.digest
    assert by_path.ref.endswith("small.yaml") and not by_path.is_paper


def test_block_styles_belong_to_the_spaces_that_have_them():
    assert get_space("small", 0.5, "official").official
    with pytest.raises(UserError, match=r"BLOCK_STYLE is 'official', but the blocks of space"):
        get_space("mobilenetv2", 1.0, "official")
    with pytest.raises(UserError, match=r"unknown block style 'megvii'.*'official-shuffle1'"):
        get_space("small", 1.0, "megvii")


# ---- malformed files -------------------------------------------------------------------------------

GOOD = """
name: s
stem: {channels: 8}
blocks:
  - {type: InvertedResidual, kernel_size: 3, expansion: 3}
stages:
  - {channels: 16, units: 1}
"""


@pytest.mark.parametrize(
    "text, message",
    [
        (GOOD.replace("name: s\n", ""), r": name: missing: add it"),
        (GOOD.replace("stages:\n  - {channels: 16, units: 1}", ""), r": stages: missing"),
        (GOOD + "strides: [2]\n", r": strides: unknown key; the keys are name, stem"),
        (GOOD.replace("{channels: 8}", "{channels: eight}"), r"stem\.channels: .*positive integer"),
        (GOOD.replace("units: 1", "units: 0"), r"stages\[0\]\.units: units .*at least 1.*got 0"),
        (GOOD.replace("channels: 16", "channels: -16"), r"stages\[0\]\.channels: .*got -16"),
        (GOOD.replace("units: 1}", "units: 1, depth: 2}"), r"stages\[0\]\.depth: unknown key"),
        (
            GOOD.replace("{channels: 16, units: 1}", "{channels: 16, units: 1, blocks: []}"),
            r"stages\[0\]\.blocks: empty: list at least one candidate block",
        ),
        (
            GOOD.replace(
                "  - {type: InvertedResidual, kernel_size: 3, expansion: 3}\n", ""
            ).replace("blocks:\n", ""),
            r"stages\[0\]\.blocks: the stage has no candidate blocks: give the space a 'blocks'",
        ),
        (GOOD.replace("type: InvertedResidual, ", ""), r"blocks\[0\]\.type: missing"),
        (
            GOOD.replace(
                "expansion: 3}",
                "expansion: 3}\n  - {type: InvertedResidual, kernel_size: 3, expansion: 3}",
            ),
            r"blocks\[1\]\.name: 'InvertedResidual_expansion3_kernel_size3' names two blocks",
        ),
        (GOOD + "out_features: [res2, res3]\n", r"out_features: one name per stage: 1 stages"),
        (GOOD + "channel_divisor: 0\n", r"channel_divisor: the channel divisor must be"),
        (GOOD + "imports: [missing_blocks.py]\n", r"imports: missing_blocks\.py: no such file"),
        ("- just a list\n", r"expected a mapping with keys name, stem, blocks, stages"),
        ("name: [unclosed\n", r"line 2: not valid YAML"),
    ],
    ids=lambda value: None if isinstance(value, str) and len(value) < 30 else "",
)
def test_malformed_space_files(tmp_path, text, message):
    path = write(tmp_path, "space.yaml", text)
    with pytest.raises(UserError, match=message) as error:
        get_space(path)
    assert str(error.value).startswith(f"search space file {path}: ")
    assert "\n" not in str(error.value) and "docs/spaces.md" in str(error.value)


def test_errors_found_when_the_blocks_are_built(tmp_path):
    unknown = write(tmp_path, "unknown.yaml", GOOD.replace("InvertedResidual", "FancyBlock"))
    with pytest.raises(
        UserError,
        match=r"unknown block type 'FancyBlock'; registered: .*"
        r"InvertedResidual, .*ShuffleBlock.*@DETNAS_BLOCK_REGISTRY\.register\(\)",
    ):
        ShuffleNetV2Supernet(get_space(unknown))
    bad_arg = write(tmp_path, "bad_arg.yaml", GOOD.replace("kernel_size: 3", "kernel: 3"))
    with pytest.raises(
        UserError,
        match=r"InvertedResidual\(expansion=3, kernel=3\) cannot be "
        r"built: .*unexpected keyword argument 'kernel'",
    ):
        ShuffleNetV2Supernet(get_space(bad_arg))
    styled = write(tmp_path, "styled.yaml", GOOD + "block_styles: [official]\n")
    with pytest.raises(
        UserError,
        match=r"block type InvertedResidual has no block style "
        r"'official'",
    ):
        ShuffleNetV2Supernet(get_space(styled))
    with pytest.raises(UserError, match=r"search space file missing\.yaml not found"):
        get_space("missing.yaml")
    with pytest.raises(UserError, match=r"unknown search space 'tiny'; choose one of \['large'"):
        get_space("tiny")


def test_a_space_file_can_import_the_module_registering_its_blocks(tmp_path):
    write(
        tmp_path,
        "my_blocks.py",
        """
        from detectron2.layers import CNNBlockBase
        from detnas_d2.modeling import DETNAS_BLOCK_REGISTRY
        from detnas_d2.modeling.blocks import conv_norm_act

        @DETNAS_BLOCK_REGISTRY.register()
        class ImportedBlock(CNNBlockBase):
            def __init__(self, in_channels, out_channels, stride, norm="BN"):
                super().__init__(in_channels, out_channels, stride)
                self.conv = conv_norm_act(in_channels, out_channels, 3, stride=stride, relu=True,
                                          norm=norm)

            def forward(self, x):
                return self.conv(x)
        """,
    )
    text = GOOD.replace("InvertedResidual, kernel_size: 3, expansion: 3", "ImportedBlock")
    path = write(tmp_path, "imported.yaml", text + "imports: [my_blocks.py]\n")
    net = ShuffleNetV2Subnet(get_space(path), [0])
    assert type(net.layers[0]).__name__ == "ImportedBlock"
    assert net(torch.zeros(1, 3, 32, 32))["res2"].shape == (1, 16, 8, 8)


# ---- FLOPs tables against fvcore -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, width, size",
    [("small", 1.0, 96), ("large", 0.25, 64), ("large-wide", 0.25, 64), ("mobilenetv2", 1.0, 96)],
)
def test_flops_table_equals_fvcore_on_random_archs(name, width, size):
    space = get_space(name, width)
    table = get_flops_table(space, size)
    rng = random.Random(7)
    for arch in (space.random_arch(rng), space.random_arch(rng)):
        net = ShuffleNetV2Subnet(space, arch)
        assert table.flops(arch) == count_flops(net, torch.zeros(1, 3, size, size))
        assert table.params(arch) == sum(p.numel() for p in net.parameters())
    assert all(len(row) == n for row, n in zip(table.layer_flops, space.num_choices))


def test_mobilenetv2_space_has_the_small_spaces_flops_scale():
    small, mobile = get_flops_table(get_space("small")), get_flops_table(get_space("mobilenetv2"))
    rng = random.Random(0)
    mean = lambda t, s: sum(t.flops(s.random_arch(rng)) for _ in range(50)) / 50  # noqa: E731
    ratio = mean(mobile, get_space("mobilenetv2")) / mean(small, get_space("small"))
    assert 0.8 < ratio < 1.25, ratio
    block = ShuffleNetV2Subnet(get_space("mobilenetv2", 0.25), (3,) * 18).layers[1]
    assert block.residual and block.depthwise.kernel_size == (5, 5)
    assert block.expand.out_channels == 8 * 6 and block.project.activation is None


def test_mobilenetv2_subnet_scripts_with_the_same_outputs():
    space = get_space("mobilenetv2", 0.25)
    subnet = ShuffleNetV2Subnet(space, space.random_arch(random.Random(3))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, scripted = subnet(x), torch.jit.script(subnet)(x)
    assert all(torch.equal(expected[k], scripted[k]) for k in space.out_features)


# ---- a space of the user's own, through the toy steps ----------------------------------------------


def toy_cfg(config, output_dir, space_file, *opts):
    cfg = get_cfg()
    add_detnas_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "Toy", config))
    cfg.merge_from_list(
        ["OUTPUT_DIR", str(output_dir), "MODEL.DETNAS.SPACE", space_file]
        + ["MODEL.DETNAS.WIDTH_MULT", "1.0", *opts]
    )
    return cfg


def test_user_space_trains_searches_and_builds_its_subnet(tmp_path):
    space_file = write(tmp_path, "plain_toy.yaml", USER_SPACE)
    space = get_space(space_file)
    assert space.num_choices == (3,) * 6 + (2,)

    # Step 1 in miniature: a few iterations of the toy supernet detector.
    train_cfg = toy_cfg(
        "det_supernet.yaml",
        tmp_path / "supernet",
        space_file,
        *("SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "0"),
        *("DETNAS.SAMPLER.NAME", "uniform", "DATASETS.TEST", "()"),
    )
    trainer = DetNASTrainer(train_cfg)
    trainer.train()
    supernet = find_detnas_backbone(trainer.model)[1]
    assert supernet.space == space and len(supernet.choice_blocks(6)) == 2
    assert type(supernet.choice_blocks(0)[0]).__name__ == "PlainConvBlock"
    weights = str(tmp_path / "supernet" / "model_final.pth")
    assert os.path.isfile(weights)

    # Step 3: a short evolution (mutations and crossovers over layers of 3 and 2 blocks).
    search_cfg = toy_cfg(
        "search_det.yaml",
        tmp_path / "search",
        space_file,
        *(
            "MODEL.WEIGHTS",
            weights,
            "DETNAS.SEARCH.FLOPS_MIN",
            "0.0",
            "DETNAS.SEARCH.FLOPS_MAX",
            "0.0",
        ),
        *("DETNAS.SEARCH.POPULATION", "3", "DETNAS.SEARCH.GENERATIONS", "2"),
        *("DETNAS.SEARCH.TOPK", "2", "DETNAS.SEARCH.NUM_MUTATION", "1"),
        *("DETNAS.SEARCH.NUM_CROSSOVER", "1", "DETNAS.SEARCH.EVAL_IMAGES", "8"),
        *("DETNAS.BN_RECALIB.IMAGES", "8", "DETNAS.BN_RECALIB.BATCH_SIZE", "4"),
    )
    best = run_search(search_cfg)
    best_file = str(tmp_path / "search" / "best_arch.yaml")
    record = load_arch_record(best_file)
    assert record.arch == tuple(best["arch"]) and record.space == space_file
    assert record.space_digest == space.digest
    text = open(best_file).read()
    assert f"space: {space_file}" in text and f"space_digest: {space.digest}" in text
    info = describe(best_file)  # the space read from the arch file
    assert info["flops"] == best["flops"] and len(info["choices"]) == 7

    # An arch file of this space file is refused on a space file of other content.
    other = write(tmp_path, "other.yaml", USER_SPACE.replace("channels: 48", "channels: 56"))
    with pytest.raises(
        UserError,
        match=r"the file is for space '.*plain_toy\.yaml' \(space file "
        r"digest [0-9a-f]+\), but space '.*other\.yaml' \(digest [0-9a-f]+\) was "
        r"requested: another space",
    ):
        load_arch(best_file, get_space(other))

    # Step 4: the subnet of the best arch, with the supernet's weights handed over.
    subnet_cfg = toy_cfg(
        "det_subnet.yaml",
        tmp_path / "subnet",
        space_file,
        *("MODEL.DETNAS.ARCH", best_file, "MODEL.WEIGHTS", weights),
    )
    model = build_model(subnet_cfg)
    DetNASCheckpointer(model).load(weights)  # the supernet's blocks of the arch, handed over
    subnet = find_detnas_backbone(model)[1]
    assert isinstance(subnet, ShuffleNetV2Subnet) and subnet.arch == tuple(best["arch"])
    assert space_from_cfg(subnet_cfg) == space

    # A latency table of the space: one entry per candidate of every layer.
    table = build_table(space, (32, 32), "cpu", warmup=0, repeats=1, fit_archs=1, validate=0)
    assert [len(row) for row in table.layers_ms] == list(space.num_choices)
    assert table.meta["space"] == space_file and table.meta["space_digest"] == space.digest
    assert table.predict(best["arch"]) > 0


def test_foreign_checkpoint_layouts_refuse_another_space(tmp_path):
    small = build_model(
        toy_cfg("det_supernet.yaml", tmp_path, "small", "MODEL.DETNAS.WIDTH_MULT", "0.25")
    )
    path = str(tmp_path / "mmrazor.pth")
    torch.save({"state_dict": to_mmrazor(small.state_dict())}, path)
    space_file = write(tmp_path, "plain_toy.yaml", USER_SPACE)
    model = build_model(toy_cfg("det_supernet.yaml", tmp_path, space_file))
    with pytest.raises(
        UserError,
        match=r"holds mmrazor.* weights, of the DetNAS paper's "
        r"ShuffleNetV2 spaces; the model's space '.*plain_toy\.yaml' is another",
    ):
        DetNASCheckpointer(model).load(path)
