"""The supernet (every layer holds its candidate blocks) and the plain subnet of a search space. Named
for the paper's ShuffleNetV2 spaces, they build any space: the blocks come from the space's candidates.

Parameter names make weight inheritance a key mapping:
supernet `layers.{i}.choices.{c}.<rest>` -> subnet `layers.{i}.<rest>` for the chosen block `c`;
`stem.<rest>` is shared by both.
"""

import contextlib
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import Backbone
from torch import nn

from ..search_space import BlockChoice, SearchSpace, stage_stride
from .blocks import Stem, build_block, check_space_blocks

__all__ = [
    "ShuffleNetV2Supernet",
    "ShuffleNetV2Subnet",
    "subnet_state_dict_from_supernet",
    "find_detnas_backbone",
    "find_supernet",
    "set_model_arch",
    "block_init_seed",
]


def block_init_seed(seed: int, layer: int, block: int, max_choices: int) -> int:
    """The seed of one block's initial weights under paired initialisation: one per (training seed, layer,
    block id) in a space of at most `max_choices` blocks per layer; the stem is layer -1."""
    return (seed * 1_000_003 + (layer + 1) * max_choices + block) % 2**63


@contextlib.contextmanager
def _block_rng(init_seed: Optional[int], space: SearchSpace, layer: int, block: int = 0):
    """With `init_seed` (paired initialisation) the modules built inside draw their initial weights from
    `block_init_seed(init_seed, layer, block, space.max_choices)` and leave the global RNG as it was;
    without, nothing changes."""
    if init_seed is None:
        yield
        return
    # The CPU generator only (modules are built on the CPU): torch.manual_seed would also reseed the CUDA
    # generators, which fork_rng(devices=[]) does not restore.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(
            block_init_seed(init_seed, layer, block, space.max_choices)
        )
        yield


class _ShuffleNetV2Base(Backbone):
    """Stem, feature bookkeeping, freezing and the stage-by-stage forward shared by both networks.

    `init_seed` (paired initialisation, MODEL.DETNAS.PAIRED_INIT): the stem's and every block's initial
    weights depend only on (init_seed, layer, block id), and building the network leaves the global RNG
    untouched, so two archs built with the same seed start from the same weights for the blocks they share,
    and so do the modules built after them (FPN, heads). Trained with the same SEED, their comparison is
    paired: common random numbers, the noise of the initialisation they share cancels.
    """

    def __init__(
        self,
        space: SearchSpace,
        norm,
        out_features: Optional[Sequence[str]],
        in_channels,
        init_seed: Optional[int] = None,
    ):
        super().__init__()
        check_space_blocks(space)
        feature_names = ("stem",) + space.out_features
        out_features = list(space.out_features if out_features is None else out_features)
        unknown = [f for f in out_features if f not in feature_names]
        if not out_features or unknown:
            raise ValueError(
                f"out_features {out_features}: each must be one of {list(feature_names)} (the "
                f"outputs of space '{space.name}'), at least one"
            )
        self.space = space
        self._out_features = [f for f in feature_names if f in out_features]  # network order
        self._out_feature_channels = {"stem": space.stem_out}
        self._out_feature_strides = {"stem": 2}
        for s, name in enumerate(space.out_features):
            self._out_feature_channels[name] = space.stage_out[s]
            self._out_feature_strides[name] = stage_stride(s)
        with _block_rng(init_seed, space, -1):
            self.stem = Stem(in_channels, space.stem_out, norm, bias=space.official)
        self._stage_layers = [[] for _ in space.stages]  # layer indices per stage
        for spec in space.layers():
            self._stage_layers[spec.stage].append(spec.index)
        # Stages beyond the deepest requested feature are built (an arch covers all layers) but not run.
        # Per layer, the name of the output it ends ("" if none): plain attributes, so that TorchScript
        # compiles the subnet's forward.
        self._stem_is_output = "stem" in self._out_features
        self._layer_outputs = [""] * space.num_layers
        self._num_run_layers = 0
        for name, layers in zip(space.out_features, self._stage_layers):
            if name in self._out_features:
                self._layer_outputs[layers[-1]] = name
                self._num_run_layers = layers[-1] + 1

    def _start(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The stem's output and the outputs dict (with "stem" if requested)."""
        if x.dim() != 4:
            raise ValueError(
                "ShuffleNetV2 backbones take (N, C, H, W) input, got shape " + str(x.shape)
            )
        outputs: Dict[str, torch.Tensor] = {}
        x = self.stem(x)
        if self._stem_is_output:
            outputs["stem"] = x
        return x, outputs

    def _emit(self, outputs: Dict[str, torch.Tensor], layer: int, x: torch.Tensor):
        name = self._layer_outputs[layer]
        if name != "":
            outputs[name] = x

    def freeze(self, freeze_at: int = 0):
        """Like Detectron2's `ResNet.freeze`: 1 freezes the stem, k the stem and stages res2..res{k}.

        Frozen modules (in a supernet: all the choices of a layer) get `requires_grad=False` and their
        BatchNorms become FrozenBatchNorm2d.
        """
        if freeze_at >= 1:
            self.stem.freeze()
        for stage in range(len(self._stage_layers)):
            if freeze_at >= stage + 2:
                for module in (self.layers[i] for i in self._stage_layers[stage]):
                    for p in module.parameters():
                        p.requires_grad = False
                    FrozenBatchNorm2d.convert_frozen_batchnorm(module)
        return self


class ChoiceLayer(nn.Module):
    """One searchable layer of the supernet: its candidate blocks, in `choices[block_id]`.

    It has no forward: the supernet runs the chosen block directly.
    """

    def __init__(
        self,
        blocks: Sequence[BlockChoice],
        in_channels,
        out_channels,
        stride,
        norm,
        space: SearchSpace,
        init_seed=None,
        layer=0,
    ):
        super().__init__()
        self.choices = nn.ModuleList()
        for c, choice in enumerate(blocks):
            with _block_rng(init_seed, space, layer, c):
                self.choices.append(
                    build_block(choice, in_channels, out_channels, stride, norm, space.block_style)
                )


class ShuffleNetV2Supernet(_ShuffleNetV2Base):
    """The one-shot supernet. Call `set_arch(arch)` before forward; only the chosen blocks run."""

    def __init__(
        self,
        space: SearchSpace,
        norm="BN",
        out_features: Optional[Sequence[str]] = None,
        in_channels=3,
        init_seed: Optional[int] = None,
    ):
        super().__init__(space, norm, out_features, in_channels, init_seed)
        self.layers = nn.ModuleList(
            ChoiceLayer(
                space.layer_blocks[spec.index],
                spec.in_channels,
                spec.out_channels,
                spec.stride,
                norm,
                space,
                init_seed,
                spec.index,
            )
            for spec in space.layers()
        )
        self.arch: Optional[Tuple[int, ...]] = None
        self._active_blocks: Optional[List[nn.Module]] = None

    def set_arch(self, arch: Sequence[int]) -> Tuple[int, ...]:
        """Select the block of every layer (validated against the space); returns the arch tuple."""
        arch = self.space.validate(arch)
        # A plain list: the blocks stay registered only under `layers`, forward just iterates.
        self._active_blocks = [self.layers[i].choices[arch[i]] for i in range(self._num_run_layers)]
        self.arch = arch
        return arch

    def _require_arch(self):
        if self.arch is None:
            raise RuntimeError(
                "ShuffleNetV2Supernet has no arch selected: call set_arch(arch) (or set_model_arch(model, "
                "arch)) first, or train with detnas_d2.engine.hooks.RandomPathHook, which sets a random "
                "path every iteration"
            )

    def active_modules(self) -> List[nn.Module]:
        """The modules that run for the current arch: the stem, then the chosen block of every layer
        (up to the stage of the deepest output feature)."""
        self._require_arch()
        return [self.stem] + self._active_blocks

    def choice_blocks(self, layer: int) -> nn.ModuleList:
        """The candidate blocks of `layer`, indexed by block id."""
        return self.layers[layer].choices

    def forward(self, x):
        self._require_arch()
        x, outputs = self._start(x)
        for i, block in enumerate(self._active_blocks):
            x = block(x)
            self._emit(outputs, i, x)
        return outputs


class ShuffleNetV2Subnet(_ShuffleNetV2Base):
    """A plain ShuffleNetV2 made of the blocks of one arch: `layers[i]` is the chosen block of layer i."""

    def __init__(
        self,
        space: SearchSpace,
        arch: Sequence[int],
        norm="BN",
        out_features: Optional[Sequence[str]] = None,
        in_channels=3,
        init_seed: Optional[int] = None,
    ):
        super().__init__(space, norm, out_features, in_channels, init_seed)
        self.arch = space.validate(arch)
        self.layers = nn.ModuleList()
        for c, spec in zip(self.arch, space.layers()):
            with _block_rng(init_seed, space, spec.index, c):
                self.layers.append(
                    build_block(
                        space.layer_blocks[spec.index][c],
                        spec.in_channels,
                        spec.out_channels,
                        spec.stride,
                        norm,
                        space.block_style,
                    )
                )

    def forward(self, x):
        x, outputs = self._start(x)
        for i, block in enumerate(self.layers):  # TorchScript unrolls this loop: no `break`
            if i < self._num_run_layers:
                x = block(x)
                self._emit(outputs, i, x)
        return outputs


def _layer_count(state_dict, prefix: str) -> int:
    """1 + the largest layer index among keys `<prefix>layers.<i>.`, 0 if there is none."""
    indices = [
        int(key[len(prefix) + len("layers.") :].split(".", 1)[0])
        for key in state_dict
        if key.startswith(prefix + "layers.")
    ]
    return max(indices) + 1 if indices else 0


def _supernet_key(subnet_key: str, arch: Sequence[int]) -> str:
    """Subnet key `layers.{i}.<rest>` -> supernet key `layers.{i}.choices.{arch[i]}.<rest>`; others unchanged."""
    if not subnet_key.startswith("layers."):
        return subnet_key
    _, layer, rest = subnet_key.split(".", 2)
    return f"layers.{layer}.choices.{arch[int(layer)]}.{rest}"


def subnet_state_dict_from_supernet(
    state_dict: Dict[str, torch.Tensor], space: SearchSpace, arch: Sequence[int], prefix: str = ""
) -> Dict[str, torch.Tensor]:
    """The state dict of `ShuffleNetV2Subnet(space, arch)` taken from a supernet state dict.

    `prefix` is where the supernet sits in `state_dict` (e.g. "backbone.bottom_up." for a detector
    checkpoint); keys outside `<prefix>layers.` (stem, FPN, heads) are kept unchanged, so a supernet
    detector checkpoint becomes a subnet detector checkpoint. Raises ValueError if the checkpoint was
    made for another space or width, or lacks conv weights of a chosen block.
    """
    arch = space.validate(arch)
    num_layers = _layer_count(state_dict, prefix)
    if num_layers != space.num_layers:
        raise ValueError(
            f"supernet state dict has {num_layers} layers under '{prefix}layers.', but space "
            f"'{space.name}' has {space.num_layers}: wrong space or prefix"
        )
    layers_prefix = prefix + "layers."
    subnet_sd = {}
    for key, value in state_dict.items():
        if not key.startswith(layers_prefix):
            subnet_sd[key] = value
            continue
        layer, kind, choice, rest = key[len(layers_prefix) :].split(".", 3)
        if kind != "choices":
            raise ValueError(
                f"'{key}' is not a supernet key (expected '{layers_prefix}<i>.choices.<c>.*')"
            )
        if int(choice) == arch[int(layer)]:
            subnet_sd[f"{layers_prefix}{layer}.{rest}"] = value

    # Keys and shapes of a BN subnet of this space, built without allocating memory. Norm keys depend
    # on the norm type, so only conv weights must be present; every present key must have the right shape.
    with torch.device("meta"):
        expected = ShuffleNetV2Subnet(space, arch).state_dict()
    missing = [
        prefix + _supernet_key(k, arch)
        for k in expected
        if ".norm." not in k and prefix + k not in subnet_sd
    ]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"supernet state dict lacks {missing[:5]}{more}")
    for key, value in expected.items():
        got = subnet_sd.get(prefix + key)
        if got is not None and got.shape != value.shape:
            raise ValueError(
                f"'{prefix}{_supernet_key(key, arch)}' has shape {tuple(got.shape)} in the supernet state "
                f"dict, but space '{space.name}' at width {space.width_mult} needs {tuple(value.shape)}: "
                "wrong space or width"
            )
    return subnet_sd


def find_detnas_backbone(model: nn.Module) -> Tuple[str, Optional[nn.Module]]:
    """(state-dict prefix, module) of the one ShuffleNetV2 supernet or subnet inside `model` (itself,
    DDP-wrapped, in an FPN, in a meta-arch), or ("", None). More than one is an error."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, _ShuffleNetV2Base)]
    if len(found) > 1:
        raise ValueError(
            f"model holds {len(found)} ShuffleNetV2 backbones ({[n for n, _ in found]}); expected one"
        )
    if not found:
        return "", None
    name, module = found[0]
    return (name + "." if name else ""), module


def find_supernet(model: nn.Module) -> Optional[ShuffleNetV2Supernet]:
    """The ShuffleNetV2Supernet inside `model` (see find_detnas_backbone), or None."""
    backbone = find_detnas_backbone(model)[1]
    return backbone if isinstance(backbone, ShuffleNetV2Supernet) else None


def set_model_arch(model: nn.Module, arch: Sequence[int]) -> Tuple[int, ...]:
    """Select `arch` in the supernet inside `model`; returns the validated arch tuple."""
    supernet = find_supernet(model)
    if supernet is None:
        raise ValueError(
            f"{type(model).__name__} contains no ShuffleNetV2Supernet to set an arch on"
        )
    return supernet.set_arch(arch)
