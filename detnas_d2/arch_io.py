"""Arch files: read the formats found in the wild, write a readable YAML of our own.

Formats read (detected from the content):

- ``detnas-d2`` (ours, written by :func:`save_arch`): a YAML mapping with ``arch:``, one block name per
  line, and metadata (``space``, optional ``width_mult``, ``flops``, ``params``, ``score``, any other key)::

      space: small
      flops: 312345678  # 312.35M
      arch:
        # stage 0: 64 channels, stride 4, layers 0-3
        - shuffle_3x3  # layer 0 (stage 0 block 0)
        ...

- ``official`` (DetNAS code): a list of 20 or 40 block ids, as a YAML/JSON list (``[0, 1, ...]``), a
  comma- or space-separated text, or one id per line. Block names are accepted in place of ids.
- ``mmrazor-1.x``: ``backbone.layers.<stage>.<block>: {chosen: <name>}`` (stage 0-3, block 0-based).
- ``mmrazor-0.x``: ``stage_<stage>_block_<block>: {chosen: [<name>]}``.

Ids and names are those of :data:`detnas_d2.search_space.BLOCKS`. Every malformed input raises ArchError
(a UserError, so a ValueError) naming the source and the line (or key) at fault.
"""

import random
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml
from detectron2.utils.file_io import PathManager
from yaml.constructor import SafeConstructor

from .file_io import atomic_write
from .search_space import (
    BLOCK_IDS,
    BLOCKS,
    NUM_CHOICES,
    SPACES,
    SearchSpace,
    get_space,
    stage_stride,
)
from .user_errors import UserError

__all__ = [
    "ArchError",
    "ArchRecord",
    "load_arch",
    "load_arch_record",
    "parse_arch_text",
    "parse_arch_record",
    "format_arch",
    "save_arch",
    "FORMATS",
]

FORMATS = ("detnas-d2", "official", "mmrazor-1.x", "mmrazor-0.x")
_MMRAZOR1_KEY = re.compile(r"^backbone\.layers\.(\d+)\.(\d+)$")
_MMRAZOR0_KEY = re.compile(r"^stage_(\d+)_block_(\d+)$")
_METADATA_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A file of bare ids or names (one per line, comma or space separated, maybe bracketed, with # comments).
_TOKEN_TEXT = re.compile(r"^[\w\s,\[\]()]*$")
_TOKEN_SEP = re.compile(r"[\s,\[\]()]+")

SpaceArg = Optional[SearchSpace]  # None: the space named in the file, else implied by its length


def _space_arg(space: SpaceArg) -> SpaceArg:
    """Names are resolved at the edges (config, command line, the file itself): here only a SearchSpace."""
    if space is not None and not isinstance(space, SearchSpace):
        raise TypeError(
            f"expected a SearchSpace (detnas_d2.search_space.get_space(name)), got {space!r}"
        )
    return space


@dataclass(frozen=True)
class ArchRecord:
    arch: Tuple[int, ...]
    space: str  # the space of the arch: the one requested, else named in the file, else implied by its length
    metadata: Dict[str, Any] = field(default_factory=dict)  # ours: every key besides space and arch
    format: str = "detnas-d2"  # one of FORMATS, or "random"


class ArchError(UserError):
    """An arch that cannot be read: its source, the line or key at fault, and what is wrong."""


class _Problem(ValueError):
    """A problem found while parsing, located at `line` (1-based) when known."""

    def __init__(self, message: str, line: Optional[int] = None):
        super().__init__(message)
        self.line = line


# ---- reading ----------------------------------------------------------------------------------------


def load_arch(spec, space: SpaceArg) -> Tuple[int, ...]:
    """The arch (tuple of block ids) given by `spec`, validated against `space` (SearchSpace or name).

    `spec`: a file path in any supported format (local or any PathManager URI), a comma- or
    space-separated list of block ids or names ("0,1,3,...", "0 1 3 ..."), ``random:SEED``, or a
    sequence of ids.
    """
    return load_arch_record(spec, space).arch


def load_arch_record(spec, space: SpaceArg = None) -> ArchRecord:
    """Like :func:`load_arch`, returning the file's space and metadata too.

    With `space` None the space named in the file is used, else the one implied by the number of layers
    (20: small; 40 is ambiguous between large and large-wide and needs `space`).
    """
    if not isinstance(spec, str):
        target = _require_space(space, "an arch given as a sequence")
        return ArchRecord(target.validate(spec), target.name, {}, "official")
    spec = spec.strip()
    if not spec:
        raise ArchError(
            "empty arch spec: give a file, a comma-separated list of block ids, or random:SEED"
        )
    if spec.startswith("random:"):
        seed = spec[len("random:") :]
        if not re.fullmatch(r"-?\d+", seed):
            raise ArchError(f"arch spec '{spec}': random:SEED needs an integer seed, got '{seed}'")
        target = _require_space(space, f"arch spec '{spec}'")
        return ArchRecord(target.random_arch(random.Random(int(seed))), target.name, {}, "random")
    if "://" in spec or PathManager.isfile(spec):
        return parse_arch_record(_read_text(spec), space, source=spec)
    if PathManager.isdir(spec):
        raise ArchError(
            f"arch {spec} is a folder: give an arch file (e.g. a search's best_arch.yaml), a comma- or "
            "space-separated list of block ids or names, or random:SEED"
        )
    if "," in spec or len(spec.split()) > 1:
        return _parse_inline_list(spec, space)
    raise ArchError(
        f"arch file not found: {spec} (an arch is a file, a comma- or space-separated list of block ids "
        "or names, or random:SEED)"
    )


def parse_arch_text(text: str, space: SpaceArg, source: str = "<text>") -> Tuple[int, ...]:
    """The arch in `text` (any supported file format), validated against `space`."""
    return parse_arch_record(text, space, source).arch


def parse_arch_record(text: str, space: SpaceArg = None, source: str = "<text>") -> ArchRecord:
    try:
        return _parse(text, space)
    except _Problem as e:
        where = f"{source}: line {e.line}: " if e.line is not None else f"{source}: "
        raise ArchError(where + str(e)) from None


def _read_text(path: str) -> str:
    try:
        with PathManager.open(path, "r") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ArchError(f"{path}: cannot read arch file: {e}") from None


def _parse_inline_list(spec: str, space: SpaceArg) -> ArchRecord:
    items = [t for t in re.split(r"[\s,]+", spec) if t]
    try:
        ids = [_block_id(tok, where=f"item {i}") for i, tok in enumerate(items)]
        target = _resolve_space(space, None, len(ids))
        return ArchRecord(_check_length(ids, target), target.name, {}, "official")
    except _Problem as e:
        raise ArchError(f"arch '{spec}': {e}") from None


def _parse(text: str, space: SpaceArg) -> ArchRecord:
    if _TOKEN_TEXT.match(_strip_comments(text)):
        return _parse_tokens(enumerate(text.splitlines(), start=1), space)
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise _Problem(
            f"not valid YAML: {getattr(e, 'problem', None) or e}", mark.line + 1 if mark else None
        )
    finally:
        loader.dispose()
    if root is None:
        raise _Problem("empty arch file")
    if isinstance(
        root, yaml.ScalarNode
    ):  # e.g. a list of names with a negative id: folded, lines lost
        return _parse_tokens([(None, str(_construct(root)))], space)
    if isinstance(root, yaml.SequenceNode):
        ids = [_block_id_node(item) for item in root.value]
        target = _resolve_space(space, None, len(ids))
        return ArchRecord(_check_length(ids, target), target.name, {}, "official")
    entries = _mapping_entries(root)
    keys = [key for key, _, _ in entries]
    if "arch" in keys:
        return _parse_ours(entries, space)
    if any(isinstance(k, str) and k.startswith("backbone.") for k in keys):
        return _parse_mmrazor(entries, space, _MMRAZOR1_KEY, "mmrazor-1.x")
    if any(isinstance(k, str) and _MMRAZOR0_KEY.match(k) for k in keys):
        return _parse_mmrazor(entries, space, _MMRAZOR0_KEY, "mmrazor-0.x")
    shown = ", ".join(str(k) for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
    raise _Problem(
        "unrecognised arch file: a mapping needs an 'arch' key (detnas-d2), backbone.layers.<stage>.<block> "
        f"keys (MMRazor 1.x) or stage_<s>_block_<b> keys (MMRazor 0.x); found keys: {shown}",
        _line(root),
    )


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def _parse_tokens(numbered_lines, space: SpaceArg) -> ArchRecord:
    """Ids or names separated by commas, spaces, brackets or newlines; `numbered_lines`: (line, text)."""
    ids = []
    for lineno, line in numbered_lines:
        for tok in _TOKEN_SEP.split(line.split("#", 1)[0]):
            if tok:
                ids.append(_block_id(tok, line=lineno))
    if not ids:
        raise _Problem("empty arch file")
    target = _resolve_space(space, None, len(ids))
    return ArchRecord(_check_length(ids, target), target.name, {}, "official")


def _parse_ours(entries, space: SpaceArg) -> ArchRecord:
    file_space, arch_key_node, arch_node, metadata = None, None, None, {}
    for key, key_node, value_node in entries:
        if key == "arch":
            arch_key_node, arch_node = key_node, value_node
        elif key == "space":
            file_space = _construct(value_node)
            if file_space not in SPACES:
                raise _Problem(
                    f"unknown space {file_space!r}; spaces: {', '.join(SPACES)}", _line(value_node)
                )
        else:
            if not isinstance(key, str):
                raise _Problem(f"metadata keys must be names, got {key!r}", _line(key_node))
            metadata[key] = _construct(value_node)
            if key == "width_mult" and not _is_positive_number(metadata[key]):
                raise _Problem(
                    f"width_mult must be a positive number, got {metadata[key]!r}",
                    _line(value_node),
                )
    if not isinstance(arch_node, yaml.SequenceNode):
        raise _Problem("'arch' must be a list of block names, one per layer", _line(arch_node))
    ids = [_block_id_node(item) for item in arch_node.value]
    target = _resolve_space(space, file_space, len(ids))
    return ArchRecord(_check_length(ids, target, arch_key_node), target.name, metadata, "detnas-d2")


def _parse_mmrazor(entries, space: SpaceArg, key_pattern, fmt: str) -> ArchRecord:
    chosen = {}  # (stage, block) -> (block id, line)
    form = (
        "backbone.layers.<stage>.<block>" if fmt == "mmrazor-1.x" else "stage_<stage>_block_<block>"
    )
    for key, key_node, value_node in entries:
        match = key_pattern.match(key) if isinstance(key, str) else None
        if match is None:
            raise _Problem(
                f"unexpected key {key!r} in an {fmt} arch file (expected {form})", _line(key_node)
            )
        chosen[int(match.group(1)), int(match.group(2))] = (
            _mmrazor_choice(key, value_node, fmt),
            _line(key_node),
        )
    target = _resolve_space(space, None, len(chosen))
    layer_key = (
        "backbone.layers.{}.{}".format if fmt == "mmrazor-1.x" else "stage_{}_block_{}".format
    )
    for (stage, block), (_, line) in sorted(chosen.items()):
        if stage >= len(target.stage_depths) or block >= target.stage_depths[stage]:
            raise _Problem(
                f"unexpected key {layer_key(stage, block)}: space {target.name} has stages 0-"
                f"{len(target.stage_depths) - 1} with {list(target.stage_depths)} blocks",
                line,
            )
    ids = []
    for spec in target.layers():
        if (spec.stage, spec.block) not in chosen:
            raise _Problem(f"missing key {layer_key(spec.stage, spec.block)} (space {target.name})")
        ids.append(chosen[spec.stage, spec.block][0])
    return ArchRecord(tuple(ids), target.name, {}, fmt)


def _mmrazor_choice(key: str, node, fmt: str) -> int:
    expected = "{chosen: <block name>}" if fmt == "mmrazor-1.x" else "{chosen: [<block name>]}"
    choice = None
    if isinstance(node, yaml.MappingNode):
        entries = {k: v for k, _, v in _mapping_entries(node)}
        choice = entries.get("chosen")
    if isinstance(choice, yaml.SequenceNode) and fmt == "mmrazor-0.x":
        if len(choice.value) != 1:
            raise _Problem(
                f"{key}: 'chosen' must list exactly one block, found {len(choice.value)}",
                _line(choice),
            )
        choice = choice.value[0]
    if not isinstance(choice, yaml.ScalarNode):
        raise _Problem(f"{key}: expected {expected}", _line(node))
    return _block_id_node(choice)


def _mapping_entries(node) -> List[Tuple[Any, Any, Any]]:
    """(key, key node, value node) of a mapping node; duplicate keys are an error."""
    entries, seen = [], set()
    for key_node, value_node in node.value:
        key = _construct(key_node)
        if isinstance(key, (list, dict)):
            raise _Problem(f"unexpected key {key!r}", _line(key_node))
        if key in seen:
            raise _Problem(f"duplicate key {key}", _line(key_node))
        seen.add(key)
        entries.append((key, key_node, value_node))
    return entries


def _construct(node):
    return SafeConstructor().construct_object(node, deep=True)


def _line(node) -> Optional[int]:
    return node.start_mark.line + 1 if node is not None else None


def _block_id_node(node) -> int:
    if not isinstance(node, yaml.ScalarNode):
        raise _Problem("expected a block name or id", _line(node))
    value = _construct(node)
    return _block_id(
        value if isinstance(value, int) and not isinstance(value, bool) else node.value, _line(node)
    )


def _block_id(token, line: Optional[int] = None, where: Optional[str] = None) -> int:
    """Block id of a name or id (int, or str of digits); `where` replaces the line in messages."""
    if isinstance(token, str) and re.fullmatch(r"\d+", token):
        token = int(token)
    if isinstance(token, int):
        if 0 <= token < NUM_CHOICES:
            return token
        message = f"unknown block id {token} (ids 0-{NUM_CHOICES - 1}: {', '.join(BLOCKS)})"
    elif token in BLOCK_IDS:
        return BLOCK_IDS[token]
    else:
        message = f"unknown block '{token}' (blocks: {', '.join(BLOCKS)})"
    raise _Problem(f"{where}: {message}" if where else message, line)


def _is_positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _check_length(ids: List[int], space: SearchSpace, node=None) -> Tuple[int, ...]:
    if len(ids) != space.num_layers:
        fits = [name for name, s in SPACES.items() if s.num_layers == len(ids)]
        hint = f" (an arch of space {' or '.join(fits)}?)" if fits else ""
        raise _Problem(
            f"{space.num_layers} layers expected for space {space.name}, found {len(ids)}{hint}",
            _line(node),
        )
    return tuple(ids)


def _require_space(space: SpaceArg, what: str) -> SearchSpace:
    if _space_arg(space) is None:
        raise ArchError(f"{what}: no search space given")
    return space


def _resolve_space(space: SpaceArg, file_space: Optional[str], num_layers: int) -> SearchSpace:
    """The space to validate against: the requested one (which must agree with the file's), else the
    file's, else the only one with `num_layers` layers."""
    if _space_arg(space) is not None:
        target = space
        if file_space is not None and file_space != target.name:
            raise _Problem(
                f"the file is for space '{file_space}', but space '{target.name}' was requested"
            )
        return target
    if file_space is not None:
        return get_space(file_space)
    fits = [name for name, s in SPACES.items() if s.num_layers == num_layers]
    if len(fits) == 1:
        return get_space(fits[0])
    if fits:
        raise _Problem(f"{num_layers} layers fit spaces {' and '.join(fits)}: name the space")
    layer_counts = ", ".join(f"{name} {s.num_layers}" for name, s in SPACES.items())
    raise _Problem(f"{num_layers} layers match no search space (layers per space: {layer_counts})")


# ---- writing ----------------------------------------------------------------------------------------


def format_arch(arch: Sequence[int], space: SearchSpace, fmt: str = "detnas-d2", **metadata) -> str:
    """The text of an arch file in format `fmt` (one of FORMATS). Metadata is data in our format and
    comments in the others (which cannot carry it). `width_mult` is the space's unless given in metadata."""
    _require_space(space, "format_arch")
    arch = space.validate(arch)
    width = metadata.pop("width_mult", None)
    if width is not None:
        if not _is_positive_number(width) or space.width_mult not in (1.0, width):
            raise ArchError(
                f"width_mult={width!r} conflicts with the space's width multiplier {space.width_mult}"
            )
        space = get_space(space.name, width)
    if space.width_mult != 1.0 or width is not None:
        metadata = {"width_mult": space.width_mult, **metadata}
    for key in metadata:
        if not _METADATA_KEY.match(key) or key in ("space", "arch"):
            raise ArchError(
                f"invalid metadata key {key!r}: use a name other than 'space' and 'arch'"
            )
    if fmt == "detnas-d2":
        return _format_ours(arch, space, metadata)
    if fmt not in FORMATS:
        raise ArchError(f"unknown arch format '{fmt}'; formats: {', '.join(FORMATS)}")
    lines = [f"# DetNAS arch, space {space.name} ({fmt} format)"]
    lines += [
        f"# {line}"
        for key, value in metadata.items()
        for line in _yaml_entry(key, value).splitlines()
    ]
    if fmt == "official":
        lines.append("[" + ", ".join(str(a) for a in arch) + "]")
    else:
        for spec, choice in zip(space.layers(), arch):
            if fmt == "mmrazor-1.x":
                lines += [
                    f"backbone.layers.{spec.stage}.{spec.block}:",
                    f"  chosen: {BLOCKS[choice]}",
                ]
            else:
                lines += [
                    f"stage_{spec.stage}_block_{spec.block}:",
                    "  chosen:",
                    f"  - {BLOCKS[choice]}",
                ]
    return "\n".join(lines) + "\n"


def _format_ours(arch: Tuple[int, ...], space: SearchSpace, metadata: Dict[str, Any]) -> str:
    lines = [
        "# DetNAS arch (detnas-d2 format): one block per layer, network order.",
        f"# block ids: {', '.join(f'{i} {name}' for i, name in enumerate(BLOCKS))}",
        f"# as ids: {','.join(str(a) for a in arch)}",
        f"space: {space.name}",
    ]
    for key, value in metadata.items():
        entry = _yaml_entry(key, value)
        if key in ("flops", "params") and _is_positive_number(value) and "\n" not in entry:
            entry += f"  # {value / 1e6:.2f}M"
        lines.append(entry)
    lines.append("arch:")
    stage = None
    for spec, choice in zip(space.layers(), arch):
        if spec.stage != stage:
            stage = spec.stage
            first = spec.index
            last = first + space.stage_depths[stage] - 1
            lines.append(
                f"  # stage {stage}: {spec.out_channels} channels, stride {stage_stride(stage)}, layers {first}-{last}"
            )
        lines.append(
            f"  - {BLOCKS[choice]:<16} # layer {spec.index} (stage {spec.stage} block {spec.block})"
        )
    return "\n".join(lines) + "\n"


def _yaml_entry(key: str, value) -> str:
    """`key: value` as block-style YAML (one line for scalars without newlines)."""
    text = yaml.safe_dump(
        {key: _plain(value)},
        default_flow_style=False,
        sort_keys=False,
        width=float("inf"),
        allow_unicode=True,
    )
    return text.rstrip("\n")


def _plain(value):
    """YAML-safe form of `value`: tuples become lists, numpy/torch scalars Python numbers."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def save_arch(
    path: str, arch: Sequence[int], space: SearchSpace, fmt: str = "detnas-d2", **metadata
):
    """Write `arch` to `path` (format `fmt`, default ours) with `metadata` (YAML-safe values: numbers,
    strings, lists, dicts), atomically."""
    atomic_write(path, format_arch(arch, space, fmt, **metadata))
