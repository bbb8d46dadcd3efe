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

  A space given by its file (MODEL.DETNAS.SPACE a path) is recorded as that path and the file's digest
  (``space_digest``): the file is refused on a space of other content.
- ``official`` (DetNAS code): a list of 20 or 40 block ids, as a YAML/JSON list (``[0, 1, ...]``), a
  comma- or space-separated text, or one id per line. Block names are accepted in place of ids; the
  space is the one given, else the shipped space of that many layers.
- ``mmrazor-1.x``: ``backbone.layers.<stage>.<block>: {chosen: <name>}`` (stage 0-3, block 0-based).
- ``mmrazor-0.x``: ``stage_<stage>_block_<block>: {chosen: [<name>]}``.

Ids and names are those of each layer's candidates in the space (`SearchSpace.layer_blocks`). Every
malformed input raises ArchError (a UserError, so a ValueError) naming the source and the line (or key)
at fault.
"""

import random
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml
from detectron2.utils.file_io import PathManager
from yaml.constructor import SafeConstructor

from .file_io import atomic_write
from .search_space import SearchSpace, get_space, shipped_spaces, stage_stride
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
    # the space of the arch (`SearchSpace.ref`: a shipped space's name or a space file): the one
    # requested, else named in the file, else implied by its length
    space: str
    metadata: Dict[str, Any] = field(default_factory=dict)  # ours: every key besides space and arch
    format: str = "detnas-d2"  # one of FORMATS, or "random"
    space_digest: str = ""  # of the space file the arch was made on; "" for a shipped space


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

    With `space` None the space named in the file is used, else the shipped space of that many layers
    (20: small; 40 is ambiguous between large and large-wide and needs `space`).
    """
    if not isinstance(spec, str):
        target = _require_space(space, "an arch given as a sequence")
        return _record(target.validate(spec), target, {}, "official")
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
        return _record(target.random_arch(random.Random(int(seed))), target, {}, "random")
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


def _record(arch, space: SearchSpace, metadata, fmt: str) -> ArchRecord:
    return ArchRecord(tuple(arch), space.ref, metadata, fmt, space.digest if space.source else "")


def _parse_inline_list(spec: str, space: SpaceArg) -> ArchRecord:
    items = [t for t in re.split(r"[\s,]+", spec) if t]
    try:
        tokens = [(_token(tok), None, f"item {i}") for i, tok in enumerate(items)]
        target = _resolve_space(space, None, len(tokens))
        return _record(_block_ids(tokens, target), target, {}, "official")
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
        tokens = [_token_node(item) for item in root.value]
        target = _resolve_space(space, None, len(tokens))
        return _record(_block_ids(tokens, target), target, {}, "official")
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
    tokens = []
    for lineno, line in numbered_lines:
        for tok in _TOKEN_SEP.split(line.split("#", 1)[0]):
            if tok:
                tokens.append((_token(tok), lineno, None))
    if not tokens:
        raise _Problem("empty arch file")
    target = _resolve_space(space, None, len(tokens))
    return _record(_block_ids(tokens, target), target, {}, "official")


def _parse_ours(entries, space: SpaceArg) -> ArchRecord:
    file_space, file_digest, arch_key_node, arch_node, metadata = None, "", None, None, {}
    space_line = None
    for key, key_node, value_node in entries:
        if key == "arch":
            arch_key_node, arch_node = key_node, value_node
        elif key == "space":
            file_space, space_line = _construct(value_node), _line(value_node)
            if not isinstance(file_space, str) or not file_space:
                raise _Problem(f"'space' must name a space, got {file_space!r}", space_line)
        elif key == "space_digest":
            file_digest = str(_construct(value_node))
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
    tokens = [_token_node(item) for item in arch_node.value]
    target = _resolve_space(space, file_space, len(tokens), file_digest, space_line)
    return _record(_block_ids(tokens, target, arch_key_node), target, metadata, "detnas-d2")


def _parse_mmrazor(entries, space: SpaceArg, key_pattern, fmt: str) -> ArchRecord:
    chosen = {}  # (stage, block) -> (block as written, line of its key)
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
    tokens = []
    for spec in target.layers():
        if (spec.stage, spec.block) not in chosen:
            raise _Problem(f"missing key {layer_key(spec.stage, spec.block)} (space {target.name})")
        tokens.append(chosen[spec.stage, spec.block][0])
    return _record(_block_ids(tokens, target), target, {}, fmt)


def _mmrazor_choice(key: str, node, fmt: str):
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
    return _token_node(choice)


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


# A block as written: (name or id, line or None, where or None: replaces the line in messages).
_Token = Tuple[Any, Optional[int], Optional[str]]


def _token_node(node) -> _Token:
    if not isinstance(node, yaml.ScalarNode):
        raise _Problem("expected a block name or id", _line(node))
    value = _construct(node)
    token = value if isinstance(value, int) and not isinstance(value, bool) else node.value
    return _token(token), _line(node), None


def _token(token):
    """An id (int, or str of digits) as an int; a name as it is."""
    if isinstance(token, str) and re.fullmatch(r"\d+", token):
        return int(token)
    return token


def _block_ids(tokens: Sequence[_Token], space: SearchSpace, node=None) -> Tuple[int, ...]:
    """The block ids of `tokens` in `space`: every token a block of the space, then as many as its
    layers, then each one a candidate of its own layer."""
    names = space.block_names()

    def problem(message, line, where):
        return _Problem(f"{where}: {message}" if where else message, line)

    for token, line, where in tokens:
        if isinstance(token, int):
            if not 0 <= token < space.max_choices:
                raise problem(
                    f"unknown block id {token} (ids 0-{space.max_choices - 1}: {', '.join(names)})",
                    line,
                    where,
                )
        elif token not in names:
            raise problem(f"unknown block '{token}' (blocks: {', '.join(names)})", line, where)
    _check_length(tokens, space, node)
    ids = []
    for layer, (token, line, where) in enumerate(tokens):
        block = token if isinstance(token, int) else space.block_id(layer, token)
        if block is None or block >= space.num_choices[layer]:
            raise problem(
                f"layer {layer} has no block {token!r} (its blocks: "
                f"{space.describe_choices(layer)})",
                line,
                where,
            )
        ids.append(block)
    return tuple(ids)


def _is_positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _shipped_layer_counts() -> Dict[str, int]:
    return {name: get_space(name).num_layers for name in shipped_spaces()}


def _check_length(tokens: Sequence, space: SearchSpace, node=None):
    if len(tokens) != space.num_layers:
        fits = [name for name, n in _shipped_layer_counts().items() if n == len(tokens)]
        hint = f" (an arch of space {' or '.join(fits)}?)" if fits else ""
        raise _Problem(
            f"{space.num_layers} layers expected for space {space.name}, found {len(tokens)}{hint}",
            _line(node),
        )


def _require_space(space: SpaceArg, what: str) -> SearchSpace:
    if _space_arg(space) is None:
        raise ArchError(f"{what}: no search space given")
    return space


def _resolve_space(
    space: SpaceArg,
    file_space: Optional[str],
    num_layers: int,
    file_digest: str = "",
    space_line: Optional[int] = None,
) -> SearchSpace:
    """The space to validate against: the requested one (which must be the file's), else the file's
    (whose file must still hold the space the arch was made on), else the only shipped space with
    `num_layers` layers."""
    if _space_arg(space) is not None:
        target = space
        if file_space is not None and not target.matches(file_space, file_digest):
            made_on = f"space '{file_space}'" + (
                f" (space file digest {file_digest})" if file_digest else ""
            )
            requested = f"space '{target.ref}'" + (
                f" (digest {target.digest})" if target.source else ""
            )
            raise _Problem(
                f"the file is for {made_on}, but {requested} was requested: another space"
            )
        return target
    if file_space is not None:
        try:
            target = get_space(file_space)
        except UserError as e:
            raise _Problem(f"unknown space {file_space!r}: {e}", space_line) from None
        if file_digest and file_digest != target.digest:
            raise _Problem(
                f"the arch was made on space file {file_space} of digest {file_digest}, which now "
                f"holds another space (digest {target.digest}): give the space file it was made on",
                space_line,
            )
        return target
    counts = _shipped_layer_counts()
    fits = [name for name, n in counts.items() if n == num_layers]
    if len(fits) == 1:
        return get_space(fits[0])
    if fits:
        raise _Problem(f"{num_layers} layers fit spaces {' and '.join(fits)}: name the space")
    layer_counts = ", ".join(f"{name} {n}" for name, n in counts.items())
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
        space = get_space(space.ref, width, space.block_style)
    if space.width_mult != 1.0 or width is not None:
        metadata = {"width_mult": space.width_mult, **metadata}
    for key in metadata:
        if not _METADATA_KEY.match(key) or key in ("space", "space_digest", "arch"):
            raise ArchError(
                f"invalid metadata key {key!r}: use a name other than 'space', 'space_digest' and "
                "'arch'"
            )
    if fmt == "detnas-d2":
        return _format_ours(arch, space, metadata)
    if fmt not in FORMATS:
        raise ArchError(f"unknown arch format '{fmt}'; formats: {', '.join(FORMATS)}")
    lines = [f"# DetNAS arch, space {space.ref} ({fmt} format)"]
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
                    f"  chosen: {space.block_name(spec.index, choice)}",
                ]
            else:
                lines += [
                    f"stage_{spec.stage}_block_{spec.block}:",
                    "  chosen:",
                    f"  - {space.block_name(spec.index, choice)}",
                ]
    return "\n".join(lines) + "\n"


def _format_ours(arch: Tuple[int, ...], space: SearchSpace, metadata: Dict[str, Any]) -> str:
    same_blocks = len(set(space.layer_blocks)) == 1
    lines = [
        "# DetNAS arch (detnas-d2 format): one block per layer, network order.",
        f"# block ids: {space.describe_choices(0)}"
        if same_blocks
        else "# block ids: per stage, in the space file",
        f"# as ids: {','.join(str(a) for a in arch)}",
        f"space: {space.ref}",
    ]
    if space.source:
        lines.append(f"space_digest: {space.digest}  # of the space file the arch is for")
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
            f"  - {space.block_name(spec.index, choice):<16} # layer {spec.index} (stage "
            f"{spec.stage} block {spec.block})"
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
