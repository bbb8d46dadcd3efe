"""ShuffleNetV2 supernet/subnet backbones, weight inheritance, the six backbone builders, norms, freezing."""

import random

import detnas_d2  # noqa: F401  (compat shims and registrations before detectron2.modeling)
from detnas_d2 import add_detnas_config

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm
from detectron2.modeling import build_backbone
from torch import nn

from detnas_d2.modeling import (
    ClassifierHead,
    ShuffleNetV2Subnet,
    ShuffleNetV2Supernet,
    build_block,
    find_supernet,
    set_model_arch,
    subnet_state_dict_from_supernet,
)
from detnas_d2.modeling.blocks import ShuffleBlock, ShuffleXceptionBlock, get_block_norm
from detnas_d2.search_space import arch_to_str, get_space

STAGES = ("res2", "res3", "res4", "res5")
STRIDES = (4, 8, 16, 32)
SMALL_BLOCKS = get_space("small").layer_blocks[0]  # shuffle_3x3, _5x5, _7x7, _xception


def _randomize_norms(model: nn.Module, seed: int):
    """Random affine params and running stats, so that eval-mode equality checks the right ones are used."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)


def _cfg(name, width=0.25, arch="", freeze_at=0, **detnas):
    cfg = get_cfg()
    add_detnas_config(cfg)
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    cfg.MODEL.DETNAS.WIDTH_MULT = width
    cfg.MODEL.DETNAS.ARCH = arch
    for key, value in detnas.items():
        cfg.MODEL.DETNAS[key] = value
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"] if "retinanet" in name else list(STAGES)
    return cfg


def test_full_width_small_space_channels():
    # docs/design.md, "Search space": small space stage channels 64, 160, 320, 640 at strides 4..32.
    space = get_space("small")
    subnet = ShuffleNetV2Subnet(space, space.random_arch(random.Random(0))).eval()
    with torch.no_grad():
        out = subnet(torch.randn(1, 3, 64, 64))
    assert [out[s].shape[1] for s in STAGES] == [64, 160, 320, 640]
    assert [64 // out[s].shape[-1] for s in STAGES] == list(STRIDES)
    assert subnet.stem.conv.out_channels == 16


@pytest.mark.parametrize("space_name", ["small", "large", "large-wide"])
def test_stage_strides_and_channels(space_name):
    space = get_space(space_name, 0.125)
    supernet = ShuffleNetV2Supernet(space)
    arch = supernet.set_arch(space.random_arch(random.Random(1)))
    subnet = ShuffleNetV2Subnet(space, arch)
    assert len(supernet.layers) == len(subnet.layers) == space.num_layers
    for model in (supernet, subnet):
        shapes = model.output_shape()
        assert list(shapes) == list(STAGES)
        assert [shapes[s].stride for s in STAGES] == list(STRIDES)
        assert [shapes[s].channels for s in STAGES] == list(space.stage_out)
        with torch.no_grad():
            out = model.eval()(torch.randn(2, 3, 64, 96))
        assert list(out) == list(STAGES)
        for s in STAGES:
            assert out[s].shape == (
                2,
                shapes[s].channels,
                64 // shapes[s].stride,
                96 // shapes[s].stride,
            )


def test_block_structure():
    # Stride 2: projection branch (dw kxk + 1x1) and main branch each give half of the output channels.
    block = build_block(SMALL_BLOCKS[2], 16, 40, 2, "BN")
    assert isinstance(block, ShuffleBlock) and block.branch_proj[0].kernel_size == (7, 7)
    assert block.branch_main[1].kernel_size == (7, 7) and block.branch_main[1].stride == (2, 2)
    assert block.branch_proj[1].out_channels == 20 and block.branch_main[2].out_channels == 20
    xception = build_block(SMALL_BLOCKS[3], 40, 40, 1, "BN")
    assert isinstance(xception, ShuffleXceptionBlock) and not hasattr(xception, "branch_proj")
    depthwise = [m for m in xception.branch_main if m.groups > 1]
    assert len(depthwise) == 3 and all(m.kernel_size == (3, 3) for m in depthwise)
    assert (
        xception.branch_main[0].in_channels == 20
    )  # stride 1: the main branch sees half the input
    assert build_block(SMALL_BLOCKS[3], 16, 40, 2, "BN").branch_proj[0].kernel_size == (3, 3)
    with pytest.raises(ValueError, match="keeps its channels"):
        build_block(SMALL_BLOCKS[0], 16, 32, 1, "BN")


def test_stride1_block_passes_half_through():
    block = build_block(SMALL_BLOCKS[1], 8, 8, 1, "BN").eval()
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        y = block(x)
    # After the 2-group channel shuffle the untouched half sits at the even output channels.
    assert torch.equal(y[:, 0::2], x[:, :4])
    assert not torch.allclose(y[:, 1::2], x[:, 4:])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_supernet_equals_inherited_subnet(seed):
    space = get_space("small", 0.25)
    supernet = ShuffleNetV2Supernet(space)
    _randomize_norms(supernet, seed)
    supernet.eval()
    x = torch.randn(2, 3, 64, 64)
    for arch in (
        space.random_arch(random.Random(seed)),
        space.random_arch(random.Random(seed + 10)),
    ):
        supernet.set_arch(arch)
        subnet = ShuffleNetV2Subnet(space, arch).eval()
        subnet.load_state_dict(subnet_state_dict_from_supernet(supernet.state_dict(), space, arch))
        inherited = supernet.state_dict()[f"layers.5.choices.{arch[5]}.branch_main.0.weight"]
        assert torch.equal(subnet.state_dict()["layers.5.branch_main.0.weight"], inherited)
        assert torch.equal(
            subnet.state_dict()["stem.conv.weight"], supernet.state_dict()["stem.conv.weight"]
        )
        with torch.no_grad():
            expected, got = supernet(x), subnet(x)
        for name in STAGES:
            assert torch.allclose(expected[name], got[name], atol=1e-5), name
    # Different archs compute different functions (the equality above is not vacuous).
    supernet.set_arch((0,) * 20)
    with torch.no_grad():
        all_3x3 = supernet(x)["res5"]
    supernet.set_arch((3,) * 20)
    with torch.no_grad():
        assert not torch.allclose(all_3x3, supernet(x)["res5"])


def test_detector_checkpoint_conversion_with_prefix():
    arch = get_space("small").random_arch(random.Random(5))
    supernet_fpn = build_backbone(_cfg("build_detnas_supernet_fpn_backbone"))
    subnet_fpn = build_backbone(_cfg("build_detnas_subnet_fpn_backbone", arch=arch_to_str(arch)))
    _randomize_norms(supernet_fpn, 0)
    set_model_arch(supernet_fpn, arch)
    converted = subnet_state_dict_from_supernet(
        supernet_fpn.state_dict(), find_supernet(supernet_fpn).space, arch, prefix="bottom_up."
    )
    subnet_fpn.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = supernet_fpn.eval()(x), subnet_fpn.eval()(x)
    assert list(expected) == list(got) == ["p2", "p3", "p4", "p5", "p6"]
    for name in expected:
        assert torch.allclose(expected[name], got[name], atol=1e-5), name


def test_inheritance_errors():
    small = get_space("small", 0.25)
    arch = small.default_arch()
    large_supernet = ShuffleNetV2Supernet(get_space("large", 0.125))
    with pytest.raises(ValueError, match="40 layers .* space 'small' has 20"):
        subnet_state_dict_from_supernet(large_supernet.state_dict(), small, arch)
    wide = ShuffleNetV2Supernet(get_space("small", 0.5)).state_dict()
    with pytest.raises(
        ValueError, match=r"'stem.conv.weight' has shape \(8, 3, 3, 3\).*needs \(4, 3, 3, 3\)"
    ):
        subnet_state_dict_from_supernet(wide, small, arch)
    state = ShuffleNetV2Supernet(small).state_dict()
    del state["layers.7.choices.0.branch_main.2.weight"]
    with pytest.raises(ValueError, match=r"lacks \['layers.7.choices.0.branch_main.2.weight'\]"):
        subnet_state_dict_from_supernet(state, small, arch)
    with pytest.raises(ValueError, match="not a supernet key"):
        subnet_state_dict_from_supernet(ShuffleNetV2Subnet(small, arch).state_dict(), small, arch)


def test_invalid_arch_and_missing_arch_errors():
    space = get_space("small", 0.25)
    supernet = ShuffleNetV2Supernet(space)
    with pytest.raises(RuntimeError, match="call set_arch"):
        supernet(torch.randn(1, 3, 32, 32))
    with pytest.raises(RuntimeError, match="no arch selected"):
        supernet.active_modules()
    with pytest.raises(ValueError, match="arch has 19 layers, but space 'small' has 20"):
        supernet.set_arch((0,) * 19)
    with pytest.raises(ValueError, match="layer 3: unknown block id 4"):
        supernet.set_arch((0, 1, 2, 4) + (0,) * 16)
    assert supernet.arch is None  # a rejected arch leaves the supernet unchanged
    with pytest.raises(ValueError, match="arch has 21 layers"):
        ShuffleNetV2Subnet(space, (0,) * 21)
    with pytest.raises(ValueError, match="out_features"):
        ShuffleNetV2Supernet(space, out_features=("res6",))


def test_active_modules_and_choice_blocks():
    space = get_space("small", 0.25)
    supernet = ShuffleNetV2Supernet(space)
    arch = supernet.set_arch(space.random_arch(random.Random(3)))
    active = supernet.active_modules()
    assert active[0] is supernet.stem and len(active) == 21
    for layer, c in enumerate(arch):
        assert active[layer + 1] is supernet.choice_blocks(layer)[c]
        assert len(supernet.choice_blocks(layer)) == 4


def test_backward_only_touches_active_path():
    space = get_space("small", 0.25)
    supernet = ShuffleNetV2Supernet(space).train()
    arch = supernet.set_arch(space.random_arch(random.Random(4)))
    out = supernet(torch.randn(2, 3, 64, 64))
    sum(o.mean() for o in out.values()).backward()
    assert all(p.grad is not None for p in supernet.stem.parameters())
    for layer, chosen in enumerate(arch):
        for c, block in enumerate(supernet.choice_blocks(layer)):
            grads = [p.grad is not None for p in block.parameters()]
            assert all(grads) if c == chosen else not any(grads), (layer, c)


def test_out_features_subset_runs_only_needed_stages():
    space = get_space("small", 0.25)
    supernet = ShuffleNetV2Supernet(space, out_features=("stem", "res3"))
    arch = supernet.set_arch(space.default_arch())
    assert {k: (v.channels, v.stride) for k, v in supernet.output_shape().items()} == {
        "stem": (space.stem_out, 2),
        "res3": (space.stage_out[1], 8),
    }
    out = supernet(torch.randn(1, 3, 32, 32))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "stem": (1, space.stem_out, 16, 16),
        "res3": (1, space.stage_out[1], 4, 4),
    }
    assert len(supernet.active_modules()) == 1 + 8  # stem + the res2 and res3 layers
    out["res3"].sum().backward()
    res4_first = supernet.choice_blocks(8)[arch[8]]  # layers 8..15 are res4: not run
    assert all(p.grad is None for p in res4_first.parameters())


EXPECTED_FEATURES = {
    "backbone": {f"res{i}": 2**i for i in range(2, 6)},
    "fpn_backbone": {f"p{i}": 2**i for i in range(2, 7)},
    "retinanet_fpn_backbone": {f"p{i}": 2**i for i in range(3, 8)},
}


@pytest.mark.parametrize("kind", ["supernet", "subnet"])
@pytest.mark.parametrize("form", list(EXPECTED_FEATURES))
def test_builders(kind, form):
    space = get_space("small", 0.25)
    arch = space.random_arch(random.Random(6))
    cfg = _cfg(f"build_detnas_{kind}_{form}", arch=arch_to_str(arch) if kind == "subnet" else "")
    backbone = build_backbone(cfg)
    if kind == "supernet":
        set_model_arch(backbone, arch)
    bottom_up = backbone if form == "backbone" else backbone.bottom_up
    assert find_supernet(backbone) is (bottom_up if kind == "supernet" else None)
    assert bottom_up.arch == arch
    shapes = backbone.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == EXPECTED_FEATURES[form]
    with torch.no_grad():
        out = backbone.eval()(torch.randn(1, 3, 128, 128))
    assert list(out) == list(shapes)
    for name, tensor in out.items():
        assert tensor.shape == (
            1,
            shapes[name].channels,
            128 // shapes[name].stride,
            128 // shapes[name].stride,
        )
    if form != "backbone":
        assert all(s.channels == cfg.MODEL.FPN.OUT_CHANNELS for s in shapes.values())


def test_builder_config_errors():
    with pytest.raises(ValueError, match="MODEL.DETNAS.ARCH is empty"):
        build_backbone(_cfg("build_detnas_subnet_fpn_backbone"))
    with pytest.raises(ValueError, match="20 layers"):  # wording is arch_io.load_arch's
        build_backbone(_cfg("build_detnas_subnet_backbone", arch="0,1,2"))
    cfg = _cfg("build_detnas_supernet_fpn_backbone")
    cfg.MODEL.FPN.IN_FEATURES = []
    with pytest.raises(ValueError, match="MODEL.FPN.IN_FEATURES"):
        build_backbone(cfg)
    cfg = _cfg("build_detnas_supernet_retinanet_fpn_backbone", OUT_FEATURES=["res3", "res4"])
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4"]
    with pytest.raises(ValueError, match="P6/P7 from res5"):
        build_backbone(cfg)


def test_find_supernet_and_set_model_arch():
    space = get_space("small", 0.25)
    fpn = build_backbone(_cfg("build_detnas_supernet_fpn_backbone"))

    class Wrapper(nn.Module):  # stands for DDP (`.module`) around a meta-arch (`.backbone`)
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    meta_arch = nn.Module()
    meta_arch.backbone = fpn
    model = Wrapper(meta_arch)
    assert find_supernet(model) is fpn.bottom_up
    assert set_model_arch(model, [1] * 20) == (1,) * 20 and fpn.bottom_up.arch == (1,) * 20
    subnet = ShuffleNetV2Subnet(space, space.default_arch())
    assert find_supernet(subnet) is None
    with pytest.raises(ValueError, match="contains no ShuffleNetV2Supernet"):
        set_model_arch(subnet, space.default_arch())


@pytest.mark.parametrize("norm", ["BN", "GN", "FrozenBN", "naiveSyncBN"])
def test_norms_build_and_run(norm):
    space = get_space("small", 0.25)
    supernet = ShuffleNetV2Supernet(space, norm=norm)
    supernet.set_arch(space.random_arch(random.Random(7)))
    norm_type = {
        "BN": nn.BatchNorm2d,
        "GN": nn.GroupNorm,
        "FrozenBN": FrozenBatchNorm2d,
        "naiveSyncBN": NaiveSyncBatchNorm,
    }[norm]
    norms = [
        m
        for m in supernet.modules()
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, FrozenBatchNorm2d))
    ]
    assert norms and all(type(m) is norm_type for m in norms)
    out = supernet.train()(torch.randn(2, 3, 64, 64))
    assert all(torch.isfinite(v).all() for v in out.values())
    head = ClassifierHead(space.stage_out[-1], 5, head_channels=24, norm=norm)
    assert head(out["res5"]).shape == (2, 5)


def test_syncbn_builds():
    supernet = ShuffleNetV2Supernet(get_space("small", 0.25), norm="SyncBN")
    assert any(isinstance(m, nn.SyncBatchNorm) for m in supernet.modules())


def test_gn_groups_divide_narrow_widths():
    assert get_block_norm("GN", 4).num_groups == 4
    assert get_block_norm("GN", 86).num_groups == 2
    assert get_block_norm("GN", 20).num_groups == 20
    assert get_block_norm("GN", 640).num_groups == 32


@pytest.mark.parametrize("kind", ["supernet", "subnet"])
@pytest.mark.parametrize("freeze_at", [0, 1, 3])
def test_freeze_at(kind, freeze_at):
    arch = arch_to_str(get_space("small").default_arch())
    arch = arch if kind == "subnet" else ""  # a supernet takes no ARCH
    backbone = build_backbone(_cfg(f"build_detnas_{kind}_backbone", arch=arch, freeze_at=freeze_at))
    frozen_parts = [backbone.stem] if freeze_at >= 1 else []
    trainable_parts = [] if freeze_at >= 1 else [backbone.stem]
    for layer, spec in enumerate(backbone.space.layers()):
        (frozen_parts if freeze_at >= spec.stage + 2 else trainable_parts).append(
            backbone.layers[layer]
        )
    for part in frozen_parts:
        assert all(not p.requires_grad for p in part.parameters())
        assert not any(isinstance(m, nn.BatchNorm2d) for m in part.modules())
        assert any(isinstance(m, FrozenBatchNorm2d) for m in part.modules())
    for part in trainable_parts:
        assert all(p.requires_grad for p in part.parameters())
        assert not any(isinstance(m, FrozenBatchNorm2d) for m in part.modules())
    if freeze_at == 3:  # stem + res2 + res3 = the first 8 layers of the small space
        assert len(frozen_parts) == 9


def test_classifier_head():
    head = ClassifierHead(16, 7, head_channels=32, dropout=0.5).train()
    x = torch.randn(4, 16, 3, 3, requires_grad=True)
    logits = head(x)
    assert logits.shape == (4, 7)
    logits.sum().backward()
    assert head.conv.weight.grad is not None and x.grad is not None
    head.eval()
    assert torch.equal(head(x), head(x))  # no dropout at eval
    with pytest.raises(ValueError, match="dropout"):
        ClassifierHead(16, 7, dropout=1.0)


def test_arch_on_a_supernet_backbone_is_an_error():
    with pytest.raises(ValueError, match=r"MODEL.DETNAS.ARCH is set \(0,0.*builds a supernet"):
        build_backbone(_cfg("build_detnas_supernet_fpn_backbone", arch=",".join(["0"] * 20)))


def test_block_style_errors_and_default():
    assert get_space("small").block_style == "mmrazor" and not get_space("small").official
    with pytest.raises(
        ValueError, match=r"unknown block style 'megvii'.*'official', 'official-shuffle1'"
    ):
        get_space("small", 1.0, "megvii")
    with pytest.raises(
        ValueError, match=r"'official' needs every stage wider than its input .* layer 0"
    ):
        get_space("small", 0.05, "official")  # stem and stage 0 both round to 4 channels
    official = ShuffleNetV2Subnet(get_space("small", 0.5, "official"), [0, 1, 2, 3] * 5)
    ours = ShuffleNetV2Subnet(get_space("small", 0.5), [0, 1, 2, 3] * 5)
    # the same parameter names; the stride-2 projection keeps its input channels there, halves the output here
    assert official.state_dict().keys() - ours.state_dict().keys() == {"stem.conv.bias"}
    assert official.layers[0].branch_proj[1].weight.shape[:2] == (8, 8)
    assert ours.layers[0].branch_proj[1].weight.shape[:2] == (16, 8)


# ---- paired initialisation (MODEL.DETNAS.PAIRED_INIT) ------------------------------------------------


def _paired(name, arch="", seed=0):
    cfg = _cfg(name, arch=arch, PAIRED_INIT=True)
    cfg.SEED = seed
    torch.manual_seed(123)  # the global RNG, as default_setup seeds it
    backbone = build_backbone(cfg)
    after = torch.rand(4)  # what the next module built (a head) would draw
    return (backbone.bottom_up if hasattr(backbone, "bottom_up") else backbone), backbone, after


def test_paired_init_shares_the_blocks_archs_have_in_common():
    a = (0,) * 20
    b = (0,) * 10 + (1, 2, 3, 0) * 2 + (3, 3)
    net_a, fpn_a, after_a = _paired("build_detnas_subnet_fpn_backbone", arch_to_str(a))
    net_b, fpn_b, after_b = _paired("build_detnas_subnet_fpn_backbone", arch_to_str(b))
    assert torch.equal(after_a, after_b)  # the global RNG does not depend on the arch
    for name, p in net_a.stem.state_dict().items():
        assert torch.equal(p, net_b.stem.state_dict()[name])
    for i in range(20):
        sa, sb = net_a.layers[i].state_dict(), net_b.layers[i].state_dict()
        same = sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        assert same == (a[i] == b[i]), f"layer {i}: blocks {a[i]}, {b[i]}"
    fpn_only = lambda m: {k: v for k, v in m.state_dict().items() if not k.startswith("bottom_up.")}  # noqa: E731
    assert all(torch.equal(v, fpn_only(fpn_b)[k]) for k, v in fpn_only(fpn_a).items())
    # another seed: other weights; without pairing the global RNG draws them as before
    other, _, _ = _paired("build_detnas_subnet_fpn_backbone", arch_to_str(a), seed=1)
    assert not torch.equal(
        other.layers[0].branch_main[0].weight, net_a.layers[0].branch_main[0].weight
    )
    torch.manual_seed(123)
    plain = build_backbone(_cfg("build_detnas_subnet_backbone", arch=arch_to_str(a)))
    assert not torch.equal(
        plain.layers[0].branch_main[0].weight, net_a.layers[0].branch_main[0].weight
    )


def test_paired_init_supernet_blocks_start_as_the_subnets():
    arch = get_space("small", 0.25).random_arch(random.Random(3))
    supernet, _, after_super = _paired("build_detnas_supernet_backbone", seed=5)
    subnet, _, after_sub = _paired("build_detnas_subnet_backbone", arch_to_str(arch), seed=5)
    assert torch.equal(after_super, after_sub)
    inherited = subnet_state_dict_from_supernet(supernet.state_dict(), supernet.space, arch)
    assert inherited.keys() == subnet.state_dict().keys()
    assert all(torch.equal(v, subnet.state_dict()[k]) for k, v in inherited.items())


def test_paired_init_needs_a_fixed_seed():
    cfg = _cfg("build_detnas_subnet_backbone", arch=arch_to_str((0,) * 20), PAIRED_INIT=True)
    cfg.SEED = -1
    with pytest.raises(ValueError, match="PAIRED_INIT.*set SEED to a non-negative integer"):
        build_backbone(cfg)
