"""FLOPs and parameters of any arch, looked up in a per-layer table.

FLOPs here are what fvcore's `FlopCountAnalysis` counts by default, per image, with the model in eval
mode: one per multiply-accumulate of convolutions and linear layers, plus 2 per element of every
BatchNorm (scale and shift). ReLU, additions, concatenation, channel shuffle and the classifier's global
average pooling (a mean) are not counted. Params are the number of elements of all parameters
(BatchNorm running statistics are buffers, not parameters). The norm is BN.

The table holds the FLOPs and params of the stem, of each of the four candidate blocks of every layer, and
of the classification head, each measured by tracing that module alone at the input shape it sees in the
network. Since the network is a chain of these modules, the table's sum for an arch equals fvcore's count
of the whole `ShuffleNetV2Subnet` (plus `ClassifierHead`) exactly, at the cost of a few additions.

Tables are built once per (space, width, input size, head) and kept in memory; with a cache folder
(argument `cache_dir` or environment variable DETNAS_FLOPS_CACHE_DIR) they are also kept on disk, keyed
by everything that determines them (the source of the block and head modules included).
"""
import functools
import hashlib
import inspect
import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Tuple, Union

import fvcore
import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from .modeling import blocks as blocks_module
from .modeling import heads as heads_module
from .file_io import atomic_write
from .search_space import NUM_CHOICES, SearchSpace

__all__ = ["FlopsTable", "get_flops_table", "count_flops", "HEADS"]

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
    layer_flops: Tuple[Tuple[int, ...], ...]  # [layer][block id]
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
        raise TypeError(f"expected a SearchSpace (detnas_d2.search_space.get_space(name, width)), got {space!r}")
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"input_size must be a positive int or (height, width), got {input_size!r}")
    if head not in HEADS:
        raise ValueError(f"unknown head '{head}'; heads: {', '.join(HEADS)}")
    if head == "classifier" and not (num_classes >= 1 and head_channels >= 1):
        raise ValueError(
            f"the classifier head needs num_classes, head_channels >= 1, got {num_classes}, {head_channels}"
        )
    if head == "none":  # the head's options do not matter: one table for all of them
        num_classes, head_channels = 1000, 1024
    return _cached_table(space, size, head, num_classes, head_channels, cache_dir or os.environ.get(CACHE_ENV) or "")


@functools.lru_cache(maxsize=32)
def _cached_table(space, size, head, num_classes, head_channels, cache_dir) -> FlopsTable:
    if not cache_dir:
        return _build_table(space, size, head, num_classes, head_channels)
    key = json.dumps([asdict(space), size, head, num_classes, head_channels, _code_version()])
    path = os.path.join(cache_dir, f"flops_{space.name}_{hashlib.sha1(key.encode()).hexdigest()[:16]}.json")
    if os.path.isfile(path):
        with open(path) as f:
            return _table_from_json(space, json.load(f))
    table = _build_table(space, size, head, num_classes, head_channels)
    atomic_write(path, json.dumps({k: v for k, v in asdict(table).items() if k != "space"}))
    return table


def _code_version() -> str:
    """Changes whenever the modules measured (or the counter) change, invalidating disk caches."""
    source = inspect.getsource(blocks_module) + inspect.getsource(heads_module) + inspect.getsource(_measure)
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
        f"head {head}: {space.num_layers} layers x {NUM_CHOICES} blocks"
    )
    stem_flops, stem_params, shape = _measure(blocks_module.Stem(3, space.stem_out, "BN", bias=space.official), (1, 3) + size)
    layer_flops, layer_params, layer_sizes = [], [], []
    # The layers after the first of a stage are alike (same block, channels, input shape): measure once.
    measured_blocks = {}
    for spec in space.layers():
        layer_sizes.append(shape[2:])
        key = (spec.in_channels, spec.out_channels, spec.stride, shape)
        if key not in measured_blocks:
            measured_blocks[key] = [
                _measure(
                    blocks_module.build_block(c, spec.in_channels, spec.out_channels, spec.stride, "BN", space.block_style),
                    shape,
                )
                for c in range(NUM_CHOICES)
            ]
        measured = measured_blocks[key]
        layer_flops.append(tuple(m[0] for m in measured))
        layer_params.append(tuple(m[1] for m in measured))
        shape = measured[0][2]
    head_flops = head_params = 0
    if head == "classifier":
        classifier = heads_module.ClassifierHead(space.stage_out[-1], num_classes, head_channels, conv_bias=space.official)
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
