"""FLOPs and parameters of any arch, looked up in a per-layer table.

FLOPs here are what fvcore's `FlopCountAnalysis` counts by default, per image, with the model in eval
mode: one per multiply-accumulate of convolutions and linear layers, plus 2 per element of every
BatchNorm (scale and shift). ReLU, additions, concatenation, channel shuffle and the classifier's global
average pooling (a mean) are not counted. Params are the number of elements of all parameters
(BatchNorm running statistics are buffers, not parameters). The norm is BN.

The table holds the FLOPs and params of the stem, of each candidate block of every layer, and
of the classification head, each measured by tracing that module alone at the input shape it sees in the
network. Since the network is a chain of these modules, the table's sum for an arch equals fvcore's count
of the whole `ShuffleNetV2Subnet` (plus `ClassifierHead`) exactly, at the cost of a few additions.

Tables are built once per (space, width, input size, head) and kept in memory; with a cache folder
(argument `cache_dir` or environment variable DETNAS_FLOPS_CACHE_DIR) they are also kept on disk, keyed
by everything that determines them (the space file's content and the source of the block and head
modules included).

Bands. FLOPs, params and a latency table's prediction all add up over layers (`AdditiveCost`), so the
archs whose cost lies in a band [lo, hi] are counted exactly by dynamic programming over the layers
(`CostBand`): `ways[l][t]`, the number of choices of the blocks of layers l.. that, from a partial sum
t of the earlier layers, end inside the band. The sums live on a grid of step q: for integer costs
(FLOPs, params) q is the gcd of the layers' offsets from their cheapest block, so a grid point is one
exact cost and counts, feasibility and the nearest achievable costs are exact (the spaces here need at
most 1.3e5 points). A float cost (latency), or a grid that would need more than GRID_BUCKETS points,
has each offset rounded down to the grid: a sum then undercounts the cost by less than one step per
layer, the band is widened by that much, and whoever samples verifies the exact cost.

Sampling (`CostBand.sample`) walks the layers choosing each block with probability proportional to
the number of completions that end in the band: every arch of the band has probability 1/count (the
ratios telescope), i.e. the draw is uniform over the band, up to the float64 rounding of the counts
(relative 1e-16), and takes one pass over the layers, however narrow the band.
"""

import functools
import hashlib
import inspect
import json
import logging
import math
import os
import random
import warnings
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple, Union

import fvcore
import numpy as np
import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from .file_io import atomic_write
from .modeling import blocks as blocks_module
from .modeling import heads as heads_module
from .search_space import SearchSpace
from .user_errors import UserError

__all__ = [
    "AdditiveCost",
    "CostBand",
    "FlopsTable",
    "GRID_BUCKETS",
    "cost_str",
    "get_flops_table",
    "count_flops",
    "HEADS",
]

HEADS = ("none", "classifier")
CACHE_ENV = "DETNAS_FLOPS_CACHE_DIR"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlopsTable:
    space: SearchSpace
    input_size: Tuple[int, int]  # (height, width) of the network input
    head: str  # "none" (backbone only) or "classifier" (ClassifierHead after the last stage)
    num_classes: int  # of the classifier head
    head_channels: int  # of the classifier head
    stem_flops: int
    stem_params: int
    head_flops: int  # 0 for head "none"
    head_params: int
    layer_flops: Tuple[Tuple[int, ...], ...]  # [layer][block id]: one entry per candidate
    layer_params: Tuple[Tuple[int, ...], ...]
    layer_input_sizes: Tuple[Tuple[int, int], ...]  # (height, width) each layer sees

    @property
    def fixed_flops(self) -> int:
        """FLOPs of what every arch shares: the stem and the head."""
        return self.stem_flops + self.head_flops

    @property
    def fixed_params(self) -> int:
        return self.stem_params + self.head_params

    def flops(self, arch: Sequence[int]) -> int:
        arch = self.space.validate(arch)
        return self.fixed_flops + sum(row[c] for row, c in zip(self.layer_flops, arch))

    def params(self, arch: Sequence[int]) -> int:
        arch = self.space.validate(arch)
        return self.fixed_params + sum(row[c] for row, c in zip(self.layer_params, arch))

    @property
    def min_flops(self) -> int:
        return self.fixed_flops + sum(min(row) for row in self.layer_flops)

    @property
    def max_flops(self) -> int:
        return self.fixed_flops + sum(max(row) for row in self.layer_flops)

    @property
    def min_params(self) -> int:
        return self.fixed_params + sum(min(row) for row in self.layer_params)

    @property
    def max_params(self) -> int:
        return self.fixed_params + sum(max(row) for row in self.layer_params)

    def flops_cost(self) -> "AdditiveCost":
        return AdditiveCost("FLOPs", self.fixed_flops, self.layer_flops)

    def params_cost(self) -> "AdditiveCost":
        return AdditiveCost("params", self.fixed_params, self.layer_params)


# ---- bands of additive costs (module doc) ----------------------------------------------------------

GRID_BUCKETS = 1 << 16  # the most grid points of a summed cost (memory: 8 bytes x points x layers)


@dataclass(frozen=True)
class AdditiveCost:
    """A cost that adds up over an arch's layers: `fixed` plus `rows[layer][block]` of each chosen block."""

    name: str
    fixed: float
    rows: Tuple[Tuple[float, ...], ...]

    @property
    def min(self) -> float:
        return self.fixed + sum(min(row) for row in self.rows)

    @property
    def max(self) -> float:
        return self.fixed + sum(max(row) for row in self.rows)

    def of(self, arch: Sequence[int]) -> float:
        return self.fixed + sum(row[c] for row, c in zip(self.rows, arch))


class CostBand:
    """The archs whose `cost` lies in [lo, hi] (None: no bound on that side), counted and sampled exactly
    (module doc). `count`: how many there are (with an inexact grid: an upper bound, the archs within
    one grid step per layer of the band included); `exact`: whether the grid is exact."""

    def __init__(
        self,
        cost: AdditiveCost,
        lo: Optional[float] = None,
        hi: Optional[float] = None,
        grid_buckets: int = GRID_BUCKETS,
    ):
        self.cost, self.lo, self.hi = cost, lo, hi
        offsets = [[v - min(row) for v in row] for row in cost.rows]
        span = sum(max(row) for row in offsets)
        if all(float(v).is_integer() for row in offsets for v in row):
            step = math.gcd(*(int(v) for row in offsets for v in row)) or 1
            step *= max(1, math.ceil(span / (step * grid_buckets)))
        else:
            step = span / grid_buckets or 1.0
        self.step = step
        self._steps = [[int(v // step) for v in row] for row in offsets]
        self.exact = all(
            k * step == v for ks, row in zip(self._steps, offsets) for k, v in zip(ks, row)
        )
        self._points = sum(max(ks) for ks in self._steps) + 1
        slack = 0 if self.exact else len(offsets) + 1  # rounding down loses < 1 step per layer
        base = cost.min
        self._first = 0 if lo is None else max(0, math.ceil((lo - base) / step) - slack)
        self._last = (
            self._points - 1
            if hi is None
            else min(self._points - 1, math.floor((hi - base) / step))
        )
        layers = len(offsets)
        self._ways = np.zeros((layers + 1, self._points))
        if self._first <= self._last:
            self._ways[layers, self._first : self._last + 1] = 1.0
        for layer in reversed(range(layers)):
            for k in self._steps[layer]:
                self._ways[layer, : self._points - k] += self._ways[layer + 1, k:]
        self.count = float(self._ways[0, 0])

    def _reachable(self) -> np.ndarray:
        """Which grid points some arch's summed cost falls on."""
        reach = np.zeros(self._points, dtype=bool)
        reach[0] = True
        for ks in self._steps:
            new = np.zeros_like(reach)
            for k in ks:
                new[k:] |= reach[: self._points - k]
            reach = new
        return reach

    def nearest(self) -> Tuple[Optional[float], Optional[float]]:
        """The achievable costs nearest below and above the band (None: none on that side); exact on an
        exact grid, else the grid's lower bounds."""
        points = np.flatnonzero(self._reachable())
        below, above = points[points < self._first], points[points > self._last]
        value = lambda s: self.cost.min + int(s) * self.step  # noqa: E731
        return (value(below[-1]) if len(below) else None), (value(above[0]) if len(above) else None)

    def least(self, other: AdditiveCost) -> float:
        """The least `other` cost of the archs in the band (inf: none), by a min-plus pass over the layers."""
        least = np.full(self._points, np.inf)
        least[0] = 0.0
        for ks, row in zip(self._steps, other.rows):
            new = np.full(self._points, np.inf)
            for k, v in zip(ks, row):
                np.minimum(new[k:], least[: self._points - k] + v, out=new[k:])
            least = new
        return other.fixed + float(least[self._first : self._last + 1].min(initial=np.inf))

    def sample(self, rng: random.Random) -> Tuple[int, ...]:
        """An arch drawn uniformly among those of the band (module doc); one `rng.random()` per layer."""
        if not self.count:
            raise ValueError(f"no arch has {self.cost.name} in {self.describe()}")
        arch: List[int] = []
        partial = 0
        for layer, ks in enumerate(self._steps):
            ways = self._ways[layer + 1]
            weights = [float(ways[partial + k]) if partial + k < self._points else 0.0 for k in ks]
            u = rng.random() * sum(weights)
            choice = max(i for i, w in enumerate(weights) if w > 0)  # u rounded up to the total
            for i, w in enumerate(weights):
                if w > 0 and u < w:
                    choice = i
                    break
                u -= w
            arch.append(choice)
            partial += ks[choice]
        return tuple(arch)

    def describe(self) -> str:
        lo = "-inf" if self.lo is None else cost_str(self.lo)
        hi = "inf" if self.hi is None else cost_str(self.hi)
        return f"[{lo}, {hi}]"


def cost_str(value: float) -> str:
    """A cost as a config value that reads back exactly: an integer as one, a float as its repr."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def get_flops_table(
    space: SearchSpace,
    input_size: Union[int, Sequence[int]] = 224,
    head: str = "none",
    num_classes: int = 1000,
    head_channels: int = 1024,
    cache_dir: Optional[str] = None,
) -> FlopsTable:
    """The FLOPs table of `space` for inputs of `input_size` (an int for square inputs, or (height,
    width)), backbone only (`head="none"`) or with the classification head (`head="classifier"`,
    `num_classes`, `head_channels`)."""
    if not isinstance(space, SearchSpace):
        raise TypeError(
            f"expected a SearchSpace (detnas_d2.search_space.get_space(name, width)), got {space!r}"
        )
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(
            f"input_size must be a positive int or (height, width), got {input_size!r}"
        )
    if head not in HEADS:
        raise ValueError(f"unknown head '{head}'; heads: {', '.join(HEADS)}")
    if head == "classifier" and not (num_classes >= 1 and head_channels >= 1):
        raise ValueError(
            f"the classifier head needs num_classes, head_channels >= 1, got {num_classes}, {head_channels}"
        )
    if head == "none":  # the head's options do not matter: one table for all of them
        num_classes, head_channels = 1000, 1024
    return _cached_table(
        space, size, head, num_classes, head_channels, cache_dir or os.environ.get(CACHE_ENV) or ""
    )


@functools.lru_cache(maxsize=32)
def _cached_table(space, size, head, num_classes, head_channels, cache_dir) -> FlopsTable:
    if not cache_dir:
        return _build_table(space, size, head, num_classes, head_channels)
    key = json.dumps([asdict(space), size, head, num_classes, head_channels, _code_version(space)])
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in space.name)
    path = os.path.join(
        cache_dir, f"flops_{name}_{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"
    )
    if os.path.isfile(path):
        with open(path) as f:
            return _table_from_json(space, json.load(f))
    table = _build_table(space, size, head, num_classes, head_channels)
    atomic_write(path, json.dumps({k: v for k, v in asdict(table).items() if k != "space"}))
    return table


def _code_version(space: SearchSpace) -> str:
    """Changes whenever the modules measured (or the counter) change, invalidating disk caches."""
    blocks_module.check_space_blocks(space)
    source = (
        inspect.getsource(blocks_module)
        + inspect.getsource(heads_module)
        + inspect.getsource(_measure)
    )
    for name in sorted({b.type for stage in space.stages for b in stage.blocks}):
        block_class = blocks_module.block_type(name)
        try:
            source += inspect.getsource(inspect.getmodule(block_class))
        except (OSError, TypeError):  # defined where there is no source: its name only
            source += f"{block_class.__module__}.{block_class.__qualname__}"
    return f"{torch.__version__}/{fvcore.__version__}/{hashlib.sha1(source.encode()).hexdigest()}"


def _table_from_json(space: SearchSpace, data: dict) -> FlopsTable:
    nested = ("input_size", "layer_flops", "layer_params", "layer_input_sizes")
    fields = {k: (_to_tuples(v) if k in nested else v) for k, v in data.items()}
    return FlopsTable(space=space, **fields)


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def count_flops(model: nn.Module, inputs) -> int:
    """fvcore's FLOPs count of `model` on `inputs` (a tensor or a tuple of them), model in eval mode,
    without fvcore's warnings about uncounted operators."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # jit tracer warnings
            analysis = FlopCountAnalysis(model, inputs)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            return int(analysis.total())
    finally:
        model.train(was_training)


def _measure(module: nn.Module, shape: Tuple[int, ...]) -> Tuple[int, int, Tuple[int, ...]]:
    """(FLOPs, params, output shape) of `module` on a zero input of `shape`."""
    x = torch.zeros(shape)
    flops = count_flops(module, x)
    with torch.no_grad():
        out_shape = tuple(module.eval()(x).shape)
    return flops, sum(p.numel() for p in module.parameters()), out_shape


def _build_table(space, size, head, num_classes, head_channels) -> FlopsTable:
    logger.info(
        f"Building the FLOPs table of space {space.name} (width {space.width_mult}) at {size[0]}x{size[1]}, "
        f"head {head}: {space.num_layers} layers of up to {space.max_choices} blocks"
    )
    blocks_module.check_space_blocks(space)
    stem = blocks_module.Stem(3, space.stem_out, "BN", bias=space.official)
    stem_flops, stem_params, shape = _measure(stem, (1, 3) + size)
    layer_flops, layer_params, layer_sizes = [], [], []
    # The layers after the first of a stage are alike (same block, channels, input shape): measure once.
    measured_blocks = {}
    for spec in space.layers():
        layer_sizes.append(shape[2:])
        choices = space.layer_blocks[spec.index]
        key = (spec.in_channels, spec.out_channels, spec.stride, shape, choices)
        if key not in measured_blocks:
            measured_blocks[key] = [
                _measure(
                    blocks_module.build_block(
                        choice,
                        spec.in_channels,
                        spec.out_channels,
                        spec.stride,
                        "BN",
                        space.block_style,
                    ),
                    shape,
                )
                for choice in choices
            ]
        measured = measured_blocks[key]
        if len({m[2] for m in measured}) > 1:
            raise UserError(
                f"space {space.ref}: the candidate blocks of layer {spec.index} give outputs of shapes "
                f"{[m[2] for m in measured]}: every block of a stage must map "
                f"{spec.in_channels} -> {spec.out_channels} channels at stride {spec.stride}"
            )
        layer_flops.append(tuple(m[0] for m in measured))
        layer_params.append(tuple(m[1] for m in measured))
        shape = measured[0][2]
    head_flops = head_params = 0
    if head == "classifier":
        classifier = heads_module.ClassifierHead(
            space.stage_out[-1], num_classes, head_channels, conv_bias=space.official
        )
        head_flops, head_params, _ = _measure(classifier, shape)
    return FlopsTable(
        space=space,
        input_size=size,
        head=head,
        num_classes=num_classes,
        head_channels=head_channels,
        stem_flops=stem_flops,
        stem_params=stem_params,
        head_flops=head_flops,
        head_params=head_params,
        layer_flops=tuple(layer_flops),
        layer_params=tuple(layer_params),
        layer_input_sizes=tuple(layer_sizes),
    )
