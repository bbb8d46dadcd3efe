"""Search spaces: a stem, then stages of searchable layers, every layer picking one of its stage's
candidate blocks. A space is a YAML file (docs/spaces.md): the shipped ones are configs/spaces/*.yaml
(`small`, `large`, `large-wide`: the DetNAS paper's ShuffleNetV2 spaces; `mobilenetv2`: inverted
residual blocks), and MODEL.DETNAS.SPACE takes one of their names or the path of a space file.

An arch is a tuple of block ids, one per layer, in network order (stage by stage); a block id is the
position of the block in its stage's candidate list.

This module reads and checks space files and holds block *names*: the blocks are built by the modeling
layer, which resolves a block's `type` in its registry (`detnas_d2.modeling.DETNAS_BLOCK_REGISTRY`).

Block styles (MODEL.DETNAS.BLOCK_STYLE) belong to the ShuffleNetV2 blocks of the paper spaces, which
come in three codes (the blocks, channel counts and layer counts are the same in all of them):

- ``mmrazor`` (their default): this project's and MMRazor's network. A stride-2 unit's two branches give
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

import dataclasses
import functools
import hashlib
import math
import os
import random
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import yaml

from .config_files import PACKAGED_CONFIGS
from .user_errors import UserError

__all__ = [
    "BlockChoice",
    "LayerSpec",
    "PAPER_BLOCKS",
    "PAPER_SPACES",
    "SPACES_DIR",
    "SearchSpace",
    "SpaceFileError",
    "StageSpec",
    "arch_to_str",
    "get_space",
    "shipped_spaces",
    "space_from_cfg",
    "stage_stride",
]

SPACES_DIR = os.path.join(PACKAGED_CONFIGS, "spaces")
# The DetNAS paper's spaces and their four blocks in id order: what MMRazor's and the official code's
# checkpoints and arch files hold (the checkpoint converters and official arch files know only these).
PAPER_SPACES = ("small", "large", "large-wide")
PAPER_BLOCKS = ("shuffle_3x3", "shuffle_5x5", "shuffle_7x7", "shuffle_xception")
_DOCS = "docs/spaces.md"


class SpaceFileError(UserError):
    """A space file that cannot be used: the file, the key at fault, what is wrong and the fix."""


@dataclass(frozen=True)
class BlockChoice:
    """One candidate block: its `name` (in arch files), its registered `type` and that type's own
    arguments (e.g. kernel_size), as sorted (key, value) pairs."""

    name: str
    type: str
    args: Tuple[Tuple[str, Any], ...] = ()

    def kwargs(self) -> Dict[str, Any]:
        return dict(self.args)


@dataclass(frozen=True)
class StageSpec:
    channels: int  # output channels at width 1
    units: int  # searchable layers; the first has stride 2
    blocks: Tuple[BlockChoice, ...]  # the candidates of each of its layers, by block id


class LayerSpec(NamedTuple):
    index: int  # layer index in the arch
    stage: int  # 0-based
    block: int  # index within its stage
    in_channels: int
    out_channels: int
    stride: int


def stage_stride(stage: int) -> int:
    """Output stride of stage `stage` (the stem halves the input, every stage halves it again): 4, 8, ..."""
    return 2 ** (stage + 2)


def _round_channels(c: float, divisor: int) -> int:
    return max(divisor, int(round(c / divisor)) * divisor)


@dataclass(frozen=True)
class SearchSpace:
    name: str
    stem_channels: int
    stages: Tuple[StageSpec, ...]
    out_features: Tuple[str, ...]  # the name of every stage's output (Detectron2's res2, res3, ...)
    channel_divisor: int = 4  # scaled channels are rounded to multiples of it
    block_styles: Tuple[str, ...] = ()  # the styles its blocks come in; the first is the default
    imports: Tuple[str, ...] = ()  # modules (or .py files) that register its block types
    source: str = ""  # the space file as MODEL.DETNAS.SPACE named it; "" for a shipped space
    digest: str = ""  # of the space file's content
    width_mult: float = 1.0
    block_style: str = ""  # one of block_styles, "" for a space without styles

    # ---- identity ---------------------------------------------------------------------------------
    @property
    def ref(self) -> str:
        """What names the space in a config, an arch file or a latency table: a shipped space's name,
        else the path of its file."""
        return self.source or self.name

    def matches(self, ref: str, digest: str = "") -> bool:
        """Whether a record (arch file, latency table) of space `ref` with file digest `digest` (none
        for a shipped space) was made on this space: the same file content, or the same shipped name."""
        if digest:
            return digest == self.digest
        return ref == self.ref

    @property
    def is_paper(self) -> bool:
        """One of the DetNAS paper's shipped spaces (what the checkpoint converters know)."""
        return not self.source and self.name in PAPER_SPACES

    @property
    def official(self) -> bool:
        """Megvii's network code (either split): biased stem and head convs, `in`-channel projections."""
        return self.block_style.startswith("official")

    # ---- shape ------------------------------------------------------------------------------------
    @property
    def stage_channels(self) -> Tuple[int, ...]:
        return tuple(s.channels for s in self.stages)

    @property
    def stage_depths(self) -> Tuple[int, ...]:
        return tuple(s.units for s in self.stages)

    @property
    def num_layers(self) -> int:
        return sum(self.stage_depths)

    @property
    def stem_out(self) -> int:
        return _round_channels(self.stem_channels * self.width_mult, self.channel_divisor)

    @property
    def stage_out(self) -> Tuple[int, ...]:
        return tuple(
            _round_channels(c * self.width_mult, self.channel_divisor) for c in self.stage_channels
        )

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

    # ---- choices ----------------------------------------------------------------------------------
    @functools.cached_property
    def layer_blocks(self) -> Tuple[Tuple[BlockChoice, ...], ...]:
        """The candidate blocks of every layer, by block id."""
        return tuple(stage.blocks for stage in self.stages for _ in range(stage.units))

    @functools.cached_property
    def num_choices(self) -> Tuple[int, ...]:
        """How many blocks every layer chooses from."""
        return tuple(len(blocks) for blocks in self.layer_blocks)

    @property
    def max_choices(self) -> int:
        return max(self.num_choices)

    @property
    def size(self) -> int:
        return math.prod(self.num_choices)

    def block_names(self) -> List[str]:
        """Every block name of the space, once, in order of first appearance."""
        return list(dict.fromkeys(b.name for blocks in self.layer_blocks for b in blocks))

    def block_name(self, layer: int, block: int) -> str:
        return self.layer_blocks[layer][block].name

    def block_id(self, layer: int, name: str) -> Optional[int]:
        """The id of block `name` in `layer`, None if the layer has no such block."""
        for i, b in enumerate(self.layer_blocks[layer]):
            if b.name == name:
                return i
        return None

    def describe_choices(self, layer: int) -> str:
        """'0 shuffle_3x3, 1 shuffle_5x5, ...': the ids and names of one layer's blocks."""
        return ", ".join(f"{i} {b.name}" for i, b in enumerate(self.layer_blocks[layer]))

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
        choices = self.num_choices
        for i, a in enumerate(arch):
            if not 0 <= a < choices[i]:
                raise ValueError(
                    f"layer {i}: unknown block id {a}; ids are 0..{choices[i] - 1} = "
                    f"{[b.name for b in self.layer_blocks[i]]}"
                )
        return arch

    def random_arch(self, rng: random.Random) -> Tuple[int, ...]:
        return tuple(rng.randrange(n) for n in self.num_choices)

    def default_arch(self) -> Tuple[int, ...]:
        """Block 0 of every layer (all `shuffle_3x3` in the paper spaces): the reference arch of supernet
        evaluation unless one is configured."""
        return (0,) * self.num_layers


# ---- space files ------------------------------------------------------------------------------------

_TOP_KEYS = {
    "name": "the space's name",
    "stem": "{channels: N}",
    "blocks": "the candidate blocks of every stage",
    "stages": "a list of {channels: N, units: N[, blocks: [...]]}",
    "out_features": "the names of the stage outputs",
    "channel_divisor": "channels scale to multiples of it",
    "block_styles": "the styles the blocks come in",
    "imports": "modules or .py files registering block types",
}
_STAGE_KEYS = ("channels", "units", "blocks")
_BLOCK_EXAMPLE = "e.g. {type: InvertedResidual, kernel_size: 3, expansion: 6}"


@functools.lru_cache(maxsize=None)
def shipped_spaces() -> Tuple[str, ...]:
    """The names of the spaces shipped in configs/spaces/."""
    if not os.path.isdir(SPACES_DIR):
        return ()
    return tuple(sorted(f[: -len(".yaml")] for f in os.listdir(SPACES_DIR) if f.endswith(".yaml")))


def _space_file(spec: str) -> Tuple[str, str]:
    """(file to read, source: "" for a shipped space, else `spec`)."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(
            f"MODEL.DETNAS.SPACE is {spec!r}: name a shipped space ({', '.join(shipped_spaces())}) "
            "or a .yaml space file"
        )
    if spec in shipped_spaces():
        return os.path.join(SPACES_DIR, spec + ".yaml"), ""
    if spec.endswith((".yaml", ".yml")) or os.sep in spec or os.path.exists(spec):
        if not os.path.isfile(spec):
            raise UserError(f"search space file {spec} not found (MODEL.DETNAS.SPACE)")
        return spec, spec
    raise UserError(
        f"unknown search space '{spec}'; choose one of {list(shipped_spaces())} or give the path of "
        f"a .yaml space file ({_DOCS})"
    )


def _load_base(spec: str) -> SearchSpace:
    path, source = _space_file(spec)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"search space file {path}: cannot read it ({e.strerror or e})") from None
    return _parse_space(data, path, source)


@functools.lru_cache(maxsize=64)
def _parse_space(data: bytes, path: str, source: str) -> SearchSpace:
    digest = hashlib.sha256(data).hexdigest()[:16]
    try:
        root = yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise SpaceFileError(f"search space file {path}: not text (a YAML file)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise SpaceFileError(
            f"search space file {path}: {where}not valid YAML "
            f"({getattr(e, 'problem', None) or e}; {_DOCS})"
        ) from None
    return _SpaceReader(path).space(root, source, digest)


class _SpaceReader:
    """Checks a space file's content key by key; every problem is one SpaceFileError naming the file,
    the key and the fix."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, key: str, problem: str):
        raise SpaceFileError(f"search space file {self.path}: {key}: {problem} ({_DOCS})")

    def positive_int(self, value, key: str, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(key, f"{what} must be a positive integer, got {value!r}")
        return value

    def mapping(self, value, key: str, expected: str) -> dict:
        if not isinstance(value, dict):
            self.fail(key, f"expected a mapping {expected}, got {value!r}")
        return value

    def names(self, value, key: str, what: str) -> Tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(key, f"expected a list of {what} (strings), got {value!r}")
        if len(set(value)) != len(value):
            self.fail(key, f"{what} must be distinct, got {value}")
        return tuple(value)

    def space(self, root, source: str, digest: str) -> SearchSpace:
        if not isinstance(root, dict):
            raise SpaceFileError(
                f"search space file {self.path}: expected a mapping with keys name, stem, blocks, "
                f"stages ({_DOCS}), got {type(root).__name__}"
            )
        unknown = [k for k in root if k not in _TOP_KEYS]
        if unknown:
            self.fail(str(unknown[0]), f"unknown key; the keys are {', '.join(_TOP_KEYS)}")
        for key in ("name", "stem", "stages"):
            if key not in root:
                self.fail(key, f"missing: add it ({_TOP_KEYS[key]})")
        name = root["name"]
        if not isinstance(name, str) or not name.strip():
            self.fail("name", f"expected a non-empty string, got {name!r}")
        if not source and name != os.path.basename(self.path)[: -len(".yaml")]:
            self.fail("name", f"a shipped space's name is its file's name, got {name!r}")
        stem = self.mapping(root["stem"], "stem", "{channels: N}")
        if set(stem) != {"channels"}:
            self.fail("stem", f"expected exactly the key 'channels', got {sorted(map(str, stem))}")
        stem_channels = self.positive_int(stem["channels"], "stem.channels", "stem channels")
        default_blocks = None
        if "blocks" in root:
            default_blocks = self.blocks(root["blocks"], "blocks")
        stages = self.stages(root["stages"], default_blocks)
        out_features = tuple(f"res{s + 2}" for s in range(len(stages)))
        if "out_features" in root:
            out_features = self.names(root["out_features"], "out_features", "feature names")
            if len(out_features) != len(stages):
                self.fail(
                    "out_features",
                    f"one name per stage: {len(stages)} stages, {len(out_features)} names",
                )
            if "stem" in out_features:
                self.fail("out_features", "'stem' names the stem's output: rename that stage")
        divisor = self.positive_int(
            root.get("channel_divisor", 4), "channel_divisor", "the channel divisor"
        )
        styles = self.names(root.get("block_styles", []), "block_styles", "block styles")
        imports = self.imports(root.get("imports", []))
        return SearchSpace(
            name=name,
            stem_channels=stem_channels,
            stages=stages,
            out_features=out_features,
            channel_divisor=divisor,
            block_styles=styles,
            imports=imports,
            source=source,
            digest=digest,
            block_style=styles[0] if styles else "",
        )

    def stages(self, value, default_blocks) -> Tuple[StageSpec, ...]:
        if not isinstance(value, list) or not value:
            self.fail("stages", "expected a non-empty list of {channels: N, units: N}")
        stages = []
        for s, stage in enumerate(value):
            key = f"stages[{s}]"
            stage = self.mapping(stage, key, "{channels: N, units: N[, blocks: [...]]}")
            unknown = [k for k in stage if k not in _STAGE_KEYS]
            if unknown:
                self.fail(
                    f"{key}.{unknown[0]}", f"unknown key; a stage has {', '.join(_STAGE_KEYS)}"
                )
            for required in ("channels", "units"):
                if required not in stage:
                    self.fail(f"{key}.{required}", "missing: add it")
            channels = self.positive_int(stage["channels"], f"{key}.channels", "channels")
            units = self.positive_int(
                stage["units"], f"{key}.units", "units (searchable layers, at least 1)"
            )
            if "blocks" in stage:
                blocks = self.blocks(stage["blocks"], f"{key}.blocks")
            elif default_blocks is None:
                self.fail(
                    f"{key}.blocks",
                    "the stage has no candidate blocks: give the space a 'blocks' list (every "
                    "stage's) or the stage its own",
                )
            else:
                blocks = default_blocks
            stages.append(StageSpec(channels, units, blocks))
        return tuple(stages)

    def blocks(self, value, key: str) -> Tuple[BlockChoice, ...]:
        if not isinstance(value, list):
            self.fail(key, f"expected a list of candidate blocks ({_BLOCK_EXAMPLE}), got {value!r}")
        if not value:
            self.fail(key, f"empty: list at least one candidate block ({_BLOCK_EXAMPLE})")
        blocks = [self.block(item, f"{key}[{i}]") for i, item in enumerate(value)]
        names = [b.name for b in blocks]
        for i, n in enumerate(names):
            if n in names[:i]:
                self.fail(f"{key}[{i}].name", f"'{n}' names two blocks: give each a distinct name")
        return tuple(blocks)

    def block(self, item, key: str) -> BlockChoice:
        item = self.mapping(item, key, _BLOCK_EXAMPLE)
        block_type = item.get("type")
        if not isinstance(block_type, str) or not block_type:
            self.fail(
                f"{key}.type",
                f"missing or not a string: name a registered block type ({_BLOCK_EXAMPLE})",
            )
        args = {k: v for k, v in item.items() if k not in ("name", "type")}
        for arg, v in args.items():
            if not isinstance(arg, str) or not arg.isidentifier():
                self.fail(f"{key}.{arg}", "a block argument's key must be a Python identifier")
            if not _is_plain(v):
                self.fail(
                    f"{key}.{arg}",
                    f"a block argument is a number, string, boolean or list of them, got {v!r}",
                )
        name = item.get("name", _default_name(block_type, args))
        if not isinstance(name, str) or not name or not name.replace("-", "_").isidentifier():
            self.fail(
                f"{key}.name",
                f"a block name is a word of letters, digits, '_' or '-' (it appears in arch files), "
                f"got {name!r}",
            )
        return BlockChoice(
            name, block_type, tuple(sorted((k, _frozen(v)) for k, v in args.items()))
        )

    def imports(self, value) -> Tuple[str, ...]:
        entries = self.names(value, "imports", "module names or .py files")
        folder = os.path.dirname(os.path.abspath(self.path))
        resolved = []
        for entry in entries:
            if entry.endswith(".py"):
                path = entry if os.path.isabs(entry) else os.path.join(folder, entry)
                if not os.path.isfile(path):
                    self.fail(
                        "imports", f"{entry}: no such file (a path relative to the space file)"
                    )
                resolved.append(path)
            else:
                resolved.append(entry)
        return tuple(resolved)


def _is_plain(value) -> bool:
    if isinstance(value, list):
        return all(_is_plain(v) for v in value)
    return isinstance(value, (int, float, str, bool)) and not (
        isinstance(value, float) and not math.isfinite(value)
    )


def _frozen(value):
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _default_name(block_type: str, args: Dict[str, Any]) -> str:
    """`type` and its arguments as one word, e.g. InvertedResidual_kernel_size3_expansion6."""
    parts = [block_type] + [f"{k}{v}" for k, v in sorted(args.items()) if not isinstance(v, list)]
    return "_".join(str(p).replace(".", "p").replace("-", "m") for p in parts)


def get_space(spec: str, width_mult: float = 1.0, block_style: str = "") -> SearchSpace:
    """The space `spec` (a shipped space's name or a space file's path) at `width_mult`, in
    `block_style` ("": the space's default)."""
    base = _load_base(spec)
    if not width_mult > 0:
        raise UserError(f"width multiplier must be positive, got {width_mult}")
    if block_style and block_style not in base.block_styles:
        if not base.block_styles:
            raise UserError(
                f"MODEL.DETNAS.BLOCK_STYLE is '{block_style}', but the blocks of space '{base.name}' "
                "have no styles (they are the ShuffleNetV2 spaces'): leave it empty"
            )
        raise UserError(
            f"unknown block style '{block_style}' (MODEL.DETNAS.BLOCK_STYLE); space '{base.name}' has "
            f"{list(base.block_styles)}"
        )
    space = dataclasses.replace(
        base, width_mult=float(width_mult), block_style=block_style or base.block_style
    )
    if space.official:
        narrow = [
            s.index for s in space.layers() if s.stride == 2 and s.out_channels <= s.in_channels
        ]
        if narrow:
            raise UserError(
                f"block style '{space.block_style}' needs every stage wider than its input (the "
                f"stride-2 unit's main branch gives out - in channels); at width {width_mult} layer "
                f"{narrow[0]} is not: use a larger MODEL.DETNAS.WIDTH_MULT"
            )
    return space


def space_from_cfg(cfg) -> SearchSpace:
    d = cfg.MODEL.DETNAS
    return get_space(d.SPACE, d.WIDTH_MULT, d.BLOCK_STYLE)


def arch_to_str(arch: Sequence[int]) -> str:
    return ",".join(str(a) for a in arch)
