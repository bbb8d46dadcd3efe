"""The DetNAS search spaces: ShuffleNetV2 backbones where every layer picks one of four blocks.

An arch is a tuple of block ids, one per layer, in network order (stage by stage).

A space also fixes the block style, i.e. which of two ShuffleNetV2 codes its network computes (the
four blocks, the channel counts and the layer counts are the same in both):

- ``mmrazor`` (the default): this project's and MMRazor's network. A stride-2 unit's two branches give
  ``out / 2`` channels each; every unit ends with a channel shuffle; the stem conv has no bias.
- ``official``: Megvii's searched DetNAS networks (ShuffleNet-Series ``DetNAS/blocks.py``, the DetNAS
  repository's ``maskrcnn_benchmark/modeling/backbone/shuffle_blocks.py`` with its default
  ``CHANNEL_SHUFFLE_METHOD 2``). A stride-2 unit's projection branch gives ``in`` channels and its main
  branch ``out - in``; a stride-1 unit starts by splitting its input into even and odd channels (the
  even ones pass through); nothing is shuffled at the end; the stem and the classifier's last conv have
  biases.
- ``official-shuffle1``: the same with the official supernet code's split (DetNAS
  ``Supernet-ImageNet/shuffle_blocks.py``, and ``CHANNEL_SHUFFLE_METHOD 1`` of its ``-search`` configs):
  a channel shuffle, then first and second half.
"""

import random
from dataclasses import dataclass
from typing import List, NamedTuple, Sequence, Tuple

from .user_errors import UserError

BLOCKS = ("shuffle_3x3", "shuffle_5x5", "shuffle_7x7", "shuffle_xception")
BLOCK_IDS = {name: i for i, name in enumerate(BLOCKS)}
NUM_CHOICES = len(BLOCKS)
BLOCK_STYLES = ("mmrazor", "official", "official-shuffle1")


class LayerSpec(NamedTuple):
    index: int  # layer index in the arch
    stage: int  # 0..3
    block: int  # index within its stage
    in_channels: int
    out_channels: int
    stride: int


def stage_stride(stage: int) -> int:
    """Output stride of stage 0..3 (the stem halves the input, every stage halves it again): 4, 8, 16, 32."""
    return 2 ** (stage + 2)


def _round_channels(c: float, divisor: int = 4) -> int:
    return max(divisor, int(round(c / divisor)) * divisor)


@dataclass(frozen=True)
class SearchSpace:
    name: str
    stem_channels: int
    stage_channels: Tuple[int, ...]
    stage_depths: Tuple[int, ...]
    width_mult: float = 1.0
    block_style: str = "mmrazor"  # one of BLOCK_STYLES

    @property
    def official(self) -> bool:
        """Megvii's network code (either split): biased stem and head convs, `in`-channel projections."""
        return self.block_style != "mmrazor"

    @property
    def num_layers(self) -> int:
        return sum(self.stage_depths)

    @property
    def size(self) -> int:
        return NUM_CHOICES**self.num_layers

    @property
    def stem_out(self) -> int:
        return _round_channels(self.stem_channels * self.width_mult)

    @property
    def stage_out(self) -> Tuple[int, ...]:
        return tuple(_round_channels(c * self.width_mult) for c in self.stage_channels)

    def layers(self) -> List[LayerSpec]:
        specs, in_ch = [], self.stem_out
        for s, (out_ch, depth) in enumerate(zip(self.stage_out, self.stage_depths)):
            for b in range(depth):
                stride = 2 if b == 0 else 1
                specs.append(LayerSpec(len(specs), s, b, in_ch, out_ch, stride))
                in_ch = out_ch
        return specs

    def stage_of_layer(self) -> List[int]:
        return [spec.stage for spec in self.layers()]

    def validate(self, arch: Sequence[int]) -> Tuple[int, ...]:
        """Return `arch` as a tuple of ints, or raise ValueError saying what is wrong."""
        try:
            arch = tuple(int(a) for a in arch)
        except (TypeError, ValueError):
            raise ValueError(f"an arch is a sequence of block ids, got {arch!r}") from None
        if len(arch) != self.num_layers:
            raise ValueError(
                f"arch has {len(arch)} layers, but space '{self.name}' has {self.num_layers} "
                f"(blocks per stage {list(self.stage_depths)})"
            )
        bad = [(i, a) for i, a in enumerate(arch) if not 0 <= a < NUM_CHOICES]
        if bad:
            i, a = bad[0]
            raise ValueError(
                f"layer {i}: unknown block id {a}; ids are 0..{NUM_CHOICES - 1} = {list(BLOCKS)}"
            )
        return arch

    def random_arch(self, rng: random.Random) -> Tuple[int, ...]:
        return tuple(rng.randrange(NUM_CHOICES) for _ in range(self.num_layers))

    def default_arch(self) -> Tuple[int, ...]:
        """All `shuffle_3x3`: the reference arch of supernet evaluation unless one is configured."""
        return (0,) * self.num_layers


SPACES = {
    "small": SearchSpace("small", 16, (64, 160, 320, 640), (4, 4, 8, 4)),
    "large": SearchSpace("large", 48, (96, 240, 480, 960), (8, 8, 16, 8)),
    "large-wide": SearchSpace("large-wide", 72, (172, 432, 864, 1728), (8, 8, 16, 8)),
}


def get_space(name: str, width_mult: float = 1.0, block_style: str = "mmrazor") -> SearchSpace:
    if name not in SPACES:
        raise UserError(f"unknown search space '{name}'; choose one of {sorted(SPACES)}")
    if width_mult <= 0:
        raise UserError(f"width multiplier must be positive, got {width_mult}")
    if block_style not in BLOCK_STYLES:
        raise UserError(
            f"unknown block style '{block_style}' (MODEL.DETNAS.BLOCK_STYLE); choose one of {list(BLOCK_STYLES)}"
        )
    base = SPACES[name]
    space = SearchSpace(
        base.name,
        base.stem_channels,
        base.stage_channels,
        base.stage_depths,
        width_mult,
        block_style,
    )
    if space.official:
        narrow = [
            s.index for s in space.layers() if s.stride == 2 and s.out_channels <= s.in_channels
        ]
        if narrow:
            raise ValueError(
                f"block style '{block_style}' needs every stage wider than its input (the stride-2 unit's main "
                f"branch gives out - in channels); at width {width_mult} layer {narrow[0]} is not: use a larger "
                "MODEL.DETNAS.WIDTH_MULT"
            )
    return space


def space_from_cfg(cfg) -> SearchSpace:
    d = cfg.MODEL.DETNAS
    return get_space(d.SPACE, d.WIDTH_MULT, d.BLOCK_STYLE)


def arch_to_str(arch: Sequence[int]) -> str:
    return ",".join(str(a) for a in arch)
