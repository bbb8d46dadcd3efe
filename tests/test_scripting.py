"""TorchScript: every block and the plain subnet backbone script, with the same outputs and state-dict keys."""

import detnas_d2  # noqa: F401  (first: compat shims)

import pytest
import torch

from detnas_d2.modeling.backbone import ShuffleNetV2Subnet
from detnas_d2.modeling.blocks import Stem, build_block
from detnas_d2.search_space import get_space

STATE_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


SMALL_BLOCKS = get_space("small").layer_blocks[0]


@pytest.mark.parametrize("choice", range(len(SMALL_BLOCKS)))
@pytest.mark.parametrize("stride", [1, 2])
def test_block_scripts_with_same_output(choice, stride):
    torch.manual_seed(choice)
    block = build_block(SMALL_BLOCKS[choice], 8, 8 if stride == 1 else 16, stride, "BN").eval()
    scripted = torch.jit.script(block)
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        assert torch.equal(scripted(x), block(x))
    # the activations are parameter-free modules: nothing new in the state dict
    keys = list(block.state_dict())
    assert not [k for k in keys if "activation" in k or not k.endswith(STATE_SUFFIXES)]
    assert list(scripted.state_dict()) == keys


def test_stem_scripts():
    stem = Stem(3, 8).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(torch.jit.script(stem)(x), stem(x))


@pytest.mark.parametrize("out_features", [("res2", "res3", "res4", "res5"), ("stem", "res3")])
def test_subnet_scripts_with_same_outputs(out_features):
    space = get_space("small")
    subnet = ShuffleNetV2Subnet(space, [0, 1, 2, 3] * 5, out_features=out_features).eval()
    scripted = torch.jit.script(subnet)
    assert list(scripted.state_dict()) == list(subnet.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = subnet(x), scripted(x)
    assert set(got) == set(expected) == set(out_features)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
