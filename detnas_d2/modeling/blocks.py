"""The block registry, the ShuffleNetV2 blocks of the paper spaces and the stem (docs/spaces.md,
docs/design.md "Search space").

A space file names every candidate block by its `type`, a name in `DETNAS_BLOCK_REGISTRY`, and gives
that type's own arguments; `build_block` builds it from (in_channels, out_channels, stride, norm, its
arguments) and, for a type with block styles (`BLOCK_STYLES`), the space's style. Register a type of
your own from your code with `@DETNAS_BLOCK_REGISTRY.register()` (a `CNNBlockBase` subclass taking those
arguments), then name it in a space file (whose `imports` can name the module that registers it).

Every ShuffleNetV2 block is a unit with output channels `out` and mid channels `out // 2`:

- stride 1 (`in == out`): split the input channels in half; the first half passes through, the second
  runs the main branch; concatenate; channel shuffle with 2 groups.
- stride 2: the projection branch (depthwise kxk stride 2 + norm, 1x1 conv + norm + ReLU) and the main
  branch both see the whole input and produce `out // 2` and `out - out // 2` channels; concatenate;
  channel shuffle.

Main branch of `ShuffleBlock` (kernel_size k): 1x1 conv + norm + ReLU, depthwise kxk + norm, 1x1 conv +
norm + ReLU. Main branch of `ShuffleXceptionBlock`: three (depthwise 3x3 + norm, 1x1 conv + norm + ReLU)
pairs, the stride in the first depthwise conv only; its projection branch uses k=3.

In the block styles ``official`` / ``official-shuffle1`` (Megvii's unit, see search_space.py) the
projection branch keeps the `in` channels (depthwise kxk stride 2 + norm, 1x1 `in -> in` + norm + ReLU),
the main branch gives `out - in`; a stride-1 unit splits its input at the start (even/odd channels, or
shuffle then halves) and nothing is shuffled at the end. The modules are the same, so the styles share
parameter names.

Norms come from `detectron2.layers.get_norm` (BN, SyncBN, naiveSyncBN, FrozenBN, ...), except "GN": the
narrow layers of these spaces (4 stem channels at width 0.25, 86 mid channels in large-wide) rarely divide
by Detectron2's fixed 32 groups, so GN here uses the largest group count <= 32 that divides the channels.
"""

import importlib
import importlib.util
import os
import sys

import torch
from detectron2.layers import CNNBlockBase, Conv2d, get_norm
from detectron2.utils.registry import Registry
from torch import nn

from ..search_space import BlockChoice, SearchSpace
from ..user_errors import UserError

__all__ = [
    "DETNAS_BLOCK_REGISTRY",
    "Stem",
    "ShuffleBlock",
    "ShuffleXceptionBlock",
    "build_block",
    "block_type",
    "check_space_blocks",
    "conv_norm_act",
    "get_block_norm",
]

DETNAS_BLOCK_REGISTRY = Registry("DETNAS_BLOCK")
DETNAS_BLOCK_REGISTRY.__doc__ = """
The block types a search space file names (`type:`). A registered type is a `CNNBlockBase` subclass
called as `cls(in_channels, out_channels, stride, norm=..., **args)`, `args` being the block's own keys
in the space file; a type with a class attribute `BLOCK_STYLES` also gets `style=` (the space's
MODEL.DETNAS.BLOCK_STYLE).
"""

MAX_GN_GROUPS = 32


def get_block_norm(norm, channels: int):
    """`detectron2.layers.get_norm`, with GN groups = the largest divisor of `channels` that is <= 32."""
    if norm == "GN":
        groups = max(g for g in range(1, MAX_GN_GROUPS + 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return get_norm(norm, channels)


def conv_norm_act(
    in_channels,
    out_channels,
    kernel_size,
    *,
    stride=1,
    depthwise=False,
    relu,
    norm,
    init_std=None,
    bias=False,
    relu6=False,
):
    """A conv followed by a norm and, if `relu`, ReLU (ReLU6 with `relu6`); bias when there is no norm
    or `bias` is set.

    Weights: normal with std 1 / (input channels per group), the SPOS/DetNAS initialisation (`init_std`
    overrides it). MSRA fill would make depthwise weights tiny (its fan-out counts every output
    channel), which trains the toy models about half as fast.
    """
    norm_layer = get_block_norm(norm, out_channels)
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        groups=in_channels if depthwise else 1,
        bias=bias or norm_layer is None,
        norm=norm_layer,
        # A module, not F.relu: TorchScript cannot script a Python function held as an attribute.
        # nn.ReLU has no parameters or buffers, so state-dict keys stay the same.
        activation=(nn.ReLU6() if relu6 else nn.ReLU()) if relu else None,
    )
    nn.init.normal_(conv.weight, 0.0, init_std or 1.0 / conv.weight.shape[1])
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def channel_shuffle(x: torch.Tensor) -> torch.Tensor:
    """Interleave the two halves of the channels (channel shuffle with 2 groups)."""
    n, c, h, w = x.shape
    return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class Stem(CNNBlockBase):
    """3x3 conv stride 2 + norm + ReLU (no max-pool): stride 2. `bias`: the official code's conv bias."""

    def __init__(self, in_channels=3, out_channels=16, norm="BN", bias=False):
        super().__init__(in_channels, out_channels, 2)
        self.conv = conv_norm_act(
            in_channels, out_channels, 3, stride=2, relu=True, norm=norm, init_std=0.01, bias=bias
        )

    def forward(self, x):
        return self.conv(x)


_OFFICIAL_SPLIT = {"mmrazor": 0, "official": 2, "official-shuffle1": 1}


@DETNAS_BLOCK_REGISTRY.register()
class ShuffleBlock(CNNBlockBase):
    """ShuffleNetV2 unit with depthwise kernel `kernel_size` (module doc), in block style `style`."""

    BLOCK_STYLES = tuple(_OFFICIAL_SPLIT)

    def __init__(
        self, in_channels, out_channels, stride, kernel_size=3, norm="BN", style="mmrazor"
    ):
        super().__init__(in_channels, out_channels, stride)
        if style not in _OFFICIAL_SPLIT:
            raise ValueError(f"unknown block style '{style}'; styles are {list(_OFFICIAL_SPLIT)}")
        if stride not in (1, 2):
            raise ValueError(f"a ShuffleNetV2 unit has stride 1 or 2, got {stride}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(
                f"a stride-1 ShuffleNetV2 unit keeps its channels, got {in_channels} -> {out_channels}"
            )
        # How a stride-1 unit splits its input: 0 = halves, shuffle at the end (mmrazor); 2 = even/odd
        # channels (their `channel_shuffle2`), 1 = channel shuffle, then halves (their
        # `channel_shuffle1`), nothing shuffled at the end (official).
        self.split = _OFFICIAL_SPLIT[style]
        if self.split == 0:
            if out_channels % 2:
                raise ValueError(
                    f"ShuffleNetV2 unit output channels must be even, got {out_channels}"
                )
            proj_out = out_channels // 2
        else:
            if stride == 2 and out_channels <= in_channels:
                raise ValueError(
                    "an official stride-2 unit needs out > in channels (main branch out - in), "
                    f"got {in_channels} -> {out_channels}"
                )
            if out_channels % 4:  # their channel split asserts it
                raise ValueError(
                    "official ShuffleNetV2 unit output channels must be a multiple of 4, got "
                    f"{out_channels}"
                )
            proj_out = in_channels
        if stride == 2:
            main_in, main_out = in_channels, out_channels - proj_out
        else:
            main_in, main_out = in_channels // 2, out_channels - out_channels // 2
        self.branch_main = self._main_branch(
            main_in, out_channels // 2, main_out, kernel_size, stride, norm
        )
        if stride == 2:
            proj_kernel = self._projection_kernel(kernel_size)
            self.branch_proj = nn.Sequential(
                conv_norm_act(
                    in_channels,
                    in_channels,
                    proj_kernel,
                    stride=2,
                    depthwise=True,
                    relu=False,
                    norm=norm,
                ),
                conv_norm_act(in_channels, proj_out, 1, relu=True, norm=norm),
            )

    @staticmethod
    def _projection_kernel(kernel_size):
        return kernel_size

    @staticmethod
    def _main_branch(in_channels, mid_channels, out_channels, kernel_size, stride, norm):
        return nn.Sequential(
            conv_norm_act(in_channels, mid_channels, 1, relu=True, norm=norm),
            conv_norm_act(
                mid_channels,
                mid_channels,
                kernel_size,
                stride=stride,
                depthwise=True,
                relu=False,
                norm=norm,
            ),
            conv_norm_act(mid_channels, out_channels, 1, relu=True, norm=norm),
        )

    def forward(self, x):
        # `hasattr`, not `self.stride == 1`: TorchScript resolves it when compiling, so a stride-1 block
        # (which has no `branch_proj`) scripts.
        if hasattr(self, "branch_proj"):
            passthrough = self.branch_proj(x)
        elif self.split == 2:
            passthrough, x = x[:, 0::2], x[:, 1::2]
        elif self.split == 1:
            passthrough, x = channel_shuffle(x).chunk(2, dim=1)
        else:
            passthrough, x = x.chunk(2, dim=1)
        out = torch.cat((passthrough, self.branch_main(x)), dim=1)
        return channel_shuffle(out) if self.split == 0 else out


@DETNAS_BLOCK_REGISTRY.register()
class ShuffleXceptionBlock(ShuffleBlock):
    """ShuffleNetV2 unit whose main branch is three depthwise-separable 3x3 pairs."""

    def __init__(self, in_channels, out_channels, stride, norm="BN", style="mmrazor"):
        super().__init__(in_channels, out_channels, stride, kernel_size=3, norm=norm, style=style)

    @staticmethod
    def _projection_kernel(kernel_size):
        return 3

    @staticmethod
    def _main_branch(in_channels, mid_channels, out_channels, kernel_size, stride, norm):
        return nn.Sequential(
            conv_norm_act(
                in_channels, in_channels, 3, stride=stride, depthwise=True, relu=False, norm=norm
            ),
            conv_norm_act(in_channels, mid_channels, 1, relu=True, norm=norm),
            conv_norm_act(mid_channels, mid_channels, 3, depthwise=True, relu=False, norm=norm),
            conv_norm_act(mid_channels, mid_channels, 1, relu=True, norm=norm),
            conv_norm_act(mid_channels, mid_channels, 3, depthwise=True, relu=False, norm=norm),
            conv_norm_act(mid_channels, out_channels, 1, relu=True, norm=norm),
        )


_REGISTER_HINT = (
    "register a type with @DETNAS_BLOCK_REGISTRY.register() (from detnas_d2.modeling) in a module "
    "imported before the model is built, e.g. one the space file's 'imports' names"
)


def block_type(name: str, where: str = ""):
    """The class registered as block type `name`; a UserError naming the registered ones if none is."""
    if name not in DETNAS_BLOCK_REGISTRY:
        registered = sorted(k for k, _ in DETNAS_BLOCK_REGISTRY)
        raise UserError(
            f"{where}unknown block type '{name}'; registered: {', '.join(registered)}; "
            + _REGISTER_HINT
        )
    return DETNAS_BLOCK_REGISTRY.get(name)


def _import_file(path: str):
    """Run a .py file once (by its absolute path) as a module, for its registrations."""
    name = "detnas_d2_space_blocks_" + "".join(c if c.isalnum() else "_" for c in path)
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def check_space_blocks(space: SearchSpace) -> None:
    """Import the modules the space file's `imports` names, then check that every block type it names
    is registered and takes the space's block style: a UserError naming the file, stage and block."""
    for entry in space.imports:
        try:
            if entry.endswith(".py"):
                _import_file(os.path.abspath(entry))
            else:
                importlib.import_module(entry)
        except Exception as e:
            raise UserError(
                f"search space {space.ref}: imports: cannot import {entry} "
                f"({type(e).__name__}: {e})"
            ) from None
    for s, stage in enumerate(space.stages):
        for b in stage.blocks:
            where = f"search space {space.ref}: stages[{s}] block '{b.name}': "
            cls = block_type(b.type, where)
            styles = getattr(cls, "BLOCK_STYLES", ())
            if space.block_style and space.block_style not in styles:
                raise UserError(
                    f"{where}block type {b.type} has no block style '{space.block_style}' "
                    "(MODEL.DETNAS.BLOCK_STYLE; the space file's block_styles): give the space only "
                    "the styles its blocks have"
                )


def build_block(
    choice: BlockChoice,
    in_channels: int,
    out_channels: int,
    stride: int,
    norm="BN",
    style: str = "",
) -> CNNBlockBase:
    """The block `choice` (a space's candidate: registered type and arguments) in block style `style`
    ("": none, for a type without styles)."""
    where = f"block '{choice.name}': "
    cls = block_type(choice.type, where)
    kwargs = choice.kwargs()
    styles = getattr(cls, "BLOCK_STYLES", ())
    if style:
        if style not in styles:
            raise UserError(
                f"{where}block type {choice.type} has no block style '{style}'"
                + (f" (its styles: {list(styles)})" if styles else "")
                + ": leave MODEL.DETNAS.BLOCK_STYLE empty or use another space"
            )
        kwargs["style"] = style
    try:
        return cls(in_channels, out_channels, stride, norm=norm, **kwargs)
    except TypeError as e:  # an argument the type does not take
        raise UserError(
            f"{where}{choice.type}({', '.join(f'{k}={v!r}' for k, v in choice.args)}) cannot be "
            f"built: {e}; fix the block's keys in the space file"
        ) from None
