"""The four candidate blocks of the DetNAS search space and the stem (docs/design.md, "Search space").

Every block is a ShuffleNetV2 unit with output channels `out` and mid channels `out // 2`:

- stride 1 (`in == out`): split the input channels in half; the first half passes through, the second
  runs the main branch; concatenate; channel shuffle with 2 groups.
- stride 2: the projection branch (depthwise kxk stride 2 + norm, 1x1 conv + norm + ReLU) and the main
  branch both see the whole input and produce `out // 2` and `out - out // 2` channels; concatenate;
  channel shuffle.

Main branch of `shuffle_{3,5,7}x{3,5,7}`: 1x1 conv + norm + ReLU, depthwise kxk + norm, 1x1 conv + norm +
ReLU. Main branch of `shuffle_xception`: three (depthwise 3x3 + norm, 1x1 conv + norm + ReLU) pairs, the
stride in the first depthwise conv only; its projection branch uses k=3.

`OfficialShuffleBlock` is Megvii's unit (block styles ``official`` / ``official-shuffle1``, see
search_space.py): the projection branch keeps the `in` channels (depthwise kxk stride 2 + norm, 1x1
`in -> in` + norm + ReLU), the main branch gives `out - in`; a stride-1 unit splits its input at the start
(even/odd channels, or shuffle then halves) and nothing is shuffled at the end. Its branches are the
same modules as above, so the two styles share parameter names.

Norms come from `detectron2.layers.get_norm` (BN, SyncBN, naiveSyncBN, FrozenBN, ...), except "GN": the
narrow layers of this space (4 stem channels at width 0.25, 86 mid channels in large-wide) rarely divide
by Detectron2's fixed 32 groups, so GN here uses the largest group count <= 32 that divides the channels.
"""

import torch
from detectron2.layers import CNNBlockBase, Conv2d, get_norm
from torch import nn

from ..search_space import BLOCK_STYLES, BLOCKS

__all__ = [
    "Stem",
    "ShuffleBlock",
    "ShuffleXceptionBlock",
    "OfficialShuffleBlock",
    "build_block",
    "get_block_norm",
]

MAX_GN_GROUPS = 32


def get_block_norm(norm, channels: int):
    """`detectron2.layers.get_norm`, with GN groups = the largest divisor of `channels` that is <= 32."""
    if norm == "GN":
        groups = max(g for g in range(1, MAX_GN_GROUPS + 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return get_norm(norm, channels)


def _conv(
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
):
    """A conv followed by a norm and, if `relu`, ReLU; bias when there is no norm or `bias` is set.

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
        activation=nn.ReLU() if relu else None,
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
        self.conv = _conv(
            in_channels, out_channels, 3, stride=2, relu=True, norm=norm, init_std=0.01, bias=bias
        )

    def forward(self, x):
        return self.conv(x)


class ShuffleBlock(CNNBlockBase):
    """ShuffleNetV2 unit with depthwise kernel `kernel_size` (block ids 0, 1, 2)."""

    def __init__(self, in_channels, out_channels, stride, kernel_size=3, norm="BN"):
        super().__init__(in_channels, out_channels, stride)
        if stride not in (1, 2):
            raise ValueError(f"a ShuffleNetV2 unit has stride 1 or 2, got {stride}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(
                f"a stride-1 ShuffleNetV2 unit keeps its channels, got {in_channels} -> {out_channels}"
            )
        if out_channels % 2:
            raise ValueError(f"ShuffleNetV2 unit output channels must be even, got {out_channels}")
        mid_channels = out_channels // 2
        main_in = in_channels if stride == 2 else in_channels // 2
        main_out = out_channels - out_channels // 2
        self.branch_main = self._main_branch(
            main_in, mid_channels, main_out, kernel_size, stride, norm
        )
        if stride == 2:
            proj_kernel = self._projection_kernel(kernel_size)
            self.branch_proj = nn.Sequential(
                _conv(
                    in_channels,
                    in_channels,
                    proj_kernel,
                    stride=2,
                    depthwise=True,
                    relu=False,
                    norm=norm,
                ),
                _conv(in_channels, out_channels // 2, 1, relu=True, norm=norm),
            )

    @staticmethod
    def _projection_kernel(kernel_size):
        return kernel_size

    @staticmethod
    def _main_branch(in_channels, mid_channels, out_channels, kernel_size, stride, norm):
        return nn.Sequential(
            _conv(in_channels, mid_channels, 1, relu=True, norm=norm),
            _conv(
                mid_channels,
                mid_channels,
                kernel_size,
                stride=stride,
                depthwise=True,
                relu=False,
                norm=norm,
            ),
            _conv(mid_channels, out_channels, 1, relu=True, norm=norm),
        )

    def forward(self, x):
        # `hasattr`, not `self.stride == 1`: TorchScript resolves it when compiling, so a stride-1 block
        # (which has no `branch_proj`) scripts.
        if hasattr(self, "branch_proj"):
            passthrough = self.branch_proj(x)
        else:
            passthrough, x = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((passthrough, self.branch_main(x)), dim=1))


class ShuffleXceptionBlock(ShuffleBlock):
    """ShuffleNetV2 unit whose main branch is three depthwise-separable 3x3 pairs (block id 3)."""

    def __init__(self, in_channels, out_channels, stride, norm="BN"):
        super().__init__(in_channels, out_channels, stride, kernel_size=3, norm=norm)

    @staticmethod
    def _projection_kernel(kernel_size):
        return 3

    @staticmethod
    def _main_branch(in_channels, mid_channels, out_channels, kernel_size, stride, norm):
        return nn.Sequential(
            _conv(
                in_channels, in_channels, 3, stride=stride, depthwise=True, relu=False, norm=norm
            ),
            _conv(in_channels, mid_channels, 1, relu=True, norm=norm),
            _conv(mid_channels, mid_channels, 3, depthwise=True, relu=False, norm=norm),
            _conv(mid_channels, mid_channels, 1, relu=True, norm=norm),
            _conv(mid_channels, mid_channels, 3, depthwise=True, relu=False, norm=norm),
            _conv(mid_channels, out_channels, 1, relu=True, norm=norm),
        )


class OfficialShuffleBlock(CNNBlockBase):
    """Megvii's ShuffleNetV2 unit with the main branch of block `name` (module doc). `split`: how a stride-1
    unit splits its input, 2 = even/odd channels (their `channel_shuffle2`), 1 = channel shuffle, then
    halves (their `channel_shuffle1`)."""

    def __init__(self, name, in_channels, out_channels, stride, norm="BN", split=2):
        super().__init__(in_channels, out_channels, stride)
        if stride not in (1, 2):
            raise ValueError(f"a ShuffleNetV2 unit has stride 1 or 2, got {stride}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(
                f"a stride-1 ShuffleNetV2 unit keeps its channels, got {in_channels} -> {out_channels}"
            )
        if stride == 2 and out_channels <= in_channels:
            raise ValueError(
                "an official stride-2 unit needs out > in channels (main branch out - in), "
                f"got {in_channels} -> {out_channels}"
            )
        if out_channels % 4:  # their channel split asserts it
            raise ValueError(
                f"official ShuffleNetV2 unit output channels must be a multiple of 4, got {out_channels}"
            )
        if split not in (1, 2):
            raise ValueError(
                f"channel split method is 1 (shuffle, then halves) or 2 (even/odd), got {split}"
            )
        self.split = split
        kernel = 3 if name == "shuffle_xception" else _SHUFFLE_KERNELS[name]
        main = ShuffleXceptionBlock if name == "shuffle_xception" else ShuffleBlock
        if stride == 2:
            main_in, main_out = in_channels, out_channels - in_channels
        else:
            main_in, main_out = in_channels // 2, out_channels // 2
        self.branch_main = main._main_branch(
            main_in, out_channels // 2, main_out, kernel, stride, norm
        )
        if stride == 2:
            self.branch_proj = nn.Sequential(
                _conv(
                    in_channels,
                    in_channels,
                    kernel,
                    stride=2,
                    depthwise=True,
                    relu=False,
                    norm=norm,
                ),
                _conv(in_channels, in_channels, 1, relu=True, norm=norm),
            )

    def forward(self, x):
        if hasattr(self, "branch_proj"):  # see ShuffleBlock.forward
            passthrough = self.branch_proj(x)
        elif self.split == 2:
            passthrough, x = x[:, 0::2], x[:, 1::2]
        else:
            passthrough, x = channel_shuffle(x).chunk(2, dim=1)
        return torch.cat((passthrough, self.branch_main(x)), dim=1)


_SHUFFLE_KERNELS = {"shuffle_3x3": 3, "shuffle_5x5": 5, "shuffle_7x7": 7}
_OFFICIAL_SPLIT = {"official": 2, "official-shuffle1": 1}


def build_block(
    choice: int, in_channels: int, out_channels: int, stride: int, norm="BN", style="mmrazor"
) -> CNNBlockBase:
    """The block with id `choice` (an index into `search_space.BLOCKS`) in block style `style`
    (`search_space.BLOCK_STYLES`)."""
    if choice not in range(len(BLOCKS)):
        raise ValueError(
            f"unknown block id {choice!r}; ids are 0..{len(BLOCKS) - 1} = {list(BLOCKS)}"
        )
    if style not in BLOCK_STYLES:
        raise ValueError(f"unknown block style '{style}'; styles are {list(BLOCK_STYLES)}")
    name = BLOCKS[int(choice)]
    if style != "mmrazor":
        return OfficialShuffleBlock(
            name, in_channels, out_channels, stride, norm=norm, split=_OFFICIAL_SPLIT[style]
        )
    if name == "shuffle_xception":
        return ShuffleXceptionBlock(in_channels, out_channels, stride, norm=norm)
    return ShuffleBlock(
        in_channels, out_channels, stride, kernel_size=_SHUFFLE_KERNELS[name], norm=norm
    )
