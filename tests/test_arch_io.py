import random

import detnas_d2  # noqa: F401  (compat shims before detectron2 imports)

import pytest

from detnas_d2.arch_io import (
    FORMATS,
    format_arch,
    load_arch,
    load_arch_record,
    parse_arch_record,
    parse_arch_text,
    save_arch,
)
from detnas_d2.search_space import PAPER_BLOCKS as BLOCKS
from detnas_d2.search_space import get_space

SMALL = get_space("small")


def _arch(space, seed):
    return space.random_arch(random.Random(seed))


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _mmrazor1_text(arch, space):
    return "".join(
        f"backbone.layers.{s.stage}.{s.block}:\n  chosen: {BLOCKS[c]}\n"
        for s, c in zip(space.layers(), arch)
    )


def _mmrazor0_text(arch, space):
    return "".join(
        f"stage_{s.stage}_block_{s.block}:\n  chosen:\n  - {BLOCKS[c]}\n"
        for s, c in zip(space.layers(), arch)
    )


# ---- every format parsed -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, render",
    [
        ("yaml_list.yaml", lambda a: "[" + ", ".join(map(str, a)) + "]\n"),
        ("json.json", lambda a: "[" + ",".join(map(str, a)) + "]"),
        ("one_per_line.txt", lambda a: "".join(f"{i}\n" for i in a)),
        ("comma.txt", lambda a: ", ".join(map(str, a)) + "\n"),
        (
            "commented.txt",
            lambda a: "# searched arch\n" + "".join(f"{i}  # layer {n}\n" for n, i in enumerate(a)),
        ),
        ("python_tuple.txt", lambda a: "(" + ",\n ".join(map(str, a)) + ")\n"),
        ("yaml_block.yaml", lambda a: "".join(f"- {i}\n" for i in a)),
        ("names.txt", lambda a: "\n".join(BLOCKS[i] for i in a)),
    ],
)
def test_official_id_lists(tmp_path, name, render):
    arch = _arch(SMALL, 1)
    record = load_arch_record(_write(tmp_path, name, render(arch)), SMALL)
    assert record.arch == arch and record.format == "official"


def test_mmrazor_formats(tmp_path):
    large = get_space("large")
    for space, seed in ((SMALL, 2), (large, 3)):
        arch = _arch(space, seed)
        for fmt, text in (
            ("mmrazor-1.x", _mmrazor1_text(arch, space)),
            ("mmrazor-0.x", _mmrazor0_text(arch, space)),
        ):
            record = load_arch_record(_write(tmp_path, f"{fmt}.yaml", text), space)
            assert (record.arch, record.format) == (arch, fmt)
    # key order does not matter, flow style is fine
    arch = _arch(SMALL, 4)
    lines = (
        _mmrazor1_text(arch, SMALL)
        .replace(":\n  chosen: ", ": {chosen: ")
        .replace("\n", "}\n")
        .splitlines()
    )
    assert parse_arch_text("\n".join(reversed(lines)), SMALL) == arch


def test_mmrazor_real_world_file():
    # the opening of MMRazor 1.x's DetNAS subnet file, completed with shuffle_3x3
    head = (
        "backbone.layers.0.0:\n  chosen: shuffle_5x5\nbackbone.layers.0.1:\n  chosen: shuffle_3x3\n"
    )
    rest = "".join(
        f"backbone.layers.{s.stage}.{s.block}:\n  chosen: shuffle_3x3\n" for s in SMALL.layers()[2:]
    )
    assert parse_arch_text(head + rest, SMALL) == (1,) + (0,) * 19


def test_inline_specs():
    arch = _arch(SMALL, 5)
    assert load_arch(",".join(map(str, arch)), SMALL) == arch
    assert load_arch(" , ".join(BLOCKS[i] for i in arch), SMALL) == arch
    assert load_arch(list(arch), SMALL) == arch
    assert (
        load_arch("random:7", SMALL) == load_arch("random:7", SMALL) != load_arch("random:8", SMALL)
    )
    assert len(load_arch("random:7", get_space("large"))) == 40
    # no space given: 20 layers mean the small space
    record = load_arch_record(",".join(map(str, arch)))
    assert (record.arch, record.space) == (arch, "small")


def test_space_from_file_metadata(tmp_path):
    wide = get_space("large-wide", 0.5)
    arch = _arch(wide, 6)
    path = str(tmp_path / "wide.yaml")
    save_arch(path, arch, wide)
    record = load_arch_record(path)
    assert (record.arch, record.space, record.metadata) == (arch, "large-wide", {"width_mult": 0.5})


# ---- round trips ------------------------------------------------------------------------------------


def test_ours_round_trip_exact(tmp_path):
    for space, seed in ((SMALL, 10), (get_space("large", 0.25), 11), (get_space("large-wide"), 12)):
        arch = _arch(space, seed)
        metadata = {
            "flops": 312345678,
            "params": 3456789,
            "score": 0.1 + 0.2,  # a float with no short decimal form
            "generation": 3,
            "history": [0.25, 0.5],
            "note": "line one\nline two: with a colon",
            "constraints": {"flops_max": 330e6, "input_size": [224, 224]},
            "tag": None,
        }
        path = str(tmp_path / space.name / "arch.yaml")
        save_arch(path, arch, space, **metadata)
        record = load_arch_record(path, space)
        expected = (
            dict(metadata)
            if space.width_mult == 1.0
            else {"width_mult": space.width_mult, **metadata}
        )
        assert (record.arch, record.space, record.metadata, record.format) == (
            arch,
            space.name,
            expected,
            "detnas-d2",
        )
        # saving what was read gives the same file
        again = str(tmp_path / "again.yaml")
        save_arch(again, record.arch, get_space(record.space), **record.metadata)
        assert open(again).read() == open(path).read()
        assert not [
            p for p in (tmp_path / space.name).iterdir() if p.name != "arch.yaml"
        ]  # no temp left


def test_ours_is_readable():
    arch = (0, 1, 2, 3) * 5
    text = format_arch(arch, SMALL, flops=312345678)
    lines = text.splitlines()
    assert "space: small" in lines and "flops: 312345678  # 312.35M" in lines
    layer_lines = [line for line in lines if line.startswith("  - ")]
    assert [line.split()[1] for line in layer_lines] == [BLOCKS[i] for i in arch]
    assert "layer 19 (stage 3 block 3)" in layer_lines[-1]


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "detnas-d2"])
def test_foreign_formats_to_ours_and_back(tmp_path, fmt):
    space = get_space("large")
    arch = _arch(space, 20)
    foreign = str(tmp_path / f"foreign.{fmt}.yaml")
    save_arch(foreign, arch, space, fmt=fmt, flops=123)
    record = load_arch_record(foreign, get_space("large"))
    assert (record.arch, record.format) == (arch, fmt)
    ours = str(tmp_path / "ours.yaml")
    save_arch(ours, record.arch, space)
    assert load_arch(ours, get_space("large")) == arch
    # our writer of the MMRazor formats matches the layout written independently above
    if fmt == "mmrazor-1.x":
        assert _mmrazor1_text(arch, space) in open(foreign).read()
    if fmt == "mmrazor-0.x":
        assert _mmrazor0_text(arch, space) in open(foreign).read()


# ---- malformed input --------------------------------------------------------------------------------


def _ours_text(arch, space=SMALL):
    return format_arch(arch, space)


@pytest.mark.parametrize(
    "text, space, message",
    [
        (
            _ours_text((0,) * 20).replace("- shuffle_3x3", "- shuffle_9x9", 1),
            "small",
            r"^arch\.yaml: line 7: unknown block 'shuffle_9x9'",
        ),
        (
            "\n".join(_ours_text((0,) * 20).splitlines()[:-1]),
            "small",
            r"^arch\.yaml: line 5: 20 layers expected for space small, found 19$",
        ),
        (
            _ours_text((0,) * 20),
            "large",
            r"the file is for space 'small', but space 'large' was requested",
        ),
        (
            _ours_text((0,) * 20).replace("space: small", "space: tiny"),
            None,
            r"line 4: unknown space 'tiny'",
        ),
        (
            _ours_text((0,) * 20).replace("space: small", "space: small\nwidth_mult: -1"),
            None,
            r"line 5: width_mult must be a positive number",
        ),
        (
            "space: small\narch: shuffle_3x3\n",
            "small",
            r"line 2: 'arch' must be a list of block names",
        ),
        (
            _mmrazor1_text((0,) * 20, SMALL).replace(
                "backbone.layers.2.3:\n  chosen: shuffle_3x3\n", ""
            ),
            "small",
            r"^arch\.yaml: missing key backbone\.layers\.2\.3 \(space small\)$",
        ),
        (
            _mmrazor1_text((0,) * 20, SMALL).replace("layers.3.3:", "layers.3.9:"),
            "small",
            r"line 39: unexpected key backbone\.layers\.3\.9",
        ),
        (
            _mmrazor1_text((0,) * 20, SMALL) + "backbone.layers.0.0:\n  chosen: shuffle_3x3\n",
            "small",
            r"line 41: duplicate key backbone\.layers\.0\.0",
        ),
        (
            _mmrazor1_text((0,) * 20, SMALL).replace("chosen: shuffle_3x3", "chosen: conv_1x1", 1),
            "small",
            r"line 2: unknown block 'conv_1x1'",
        ),
        (
            _mmrazor1_text((0,) * 20, SMALL) + "neck.conv:\n  chosen: x\n",
            "small",
            r"line 41: unexpected key 'neck\.conv'",
        ),
        (
            "backbone.layers.0.0: shuffle_3x3\n",
            "small",
            r"line 1: backbone\.layers\.0\.0: expected \{chosen",
        ),
        (
            _mmrazor0_text((0,) * 20, SMALL).replace(
                "  - shuffle_3x3\n", "  - shuffle_3x3\n  - shuffle_5x5\n", 1
            ),
            "small",
            r"line 3: stage_0_block_0: 'chosen' must list exactly one block, found 2",
        ),
        (
            "0\n1\n2\n" * 6 + "0\n",
            "small",
            r"^arch\.yaml: 20 layers expected for space small, found 19$",
        ),
        ("0\n1\n2\n4\n" + "0\n" * 16, "small", r"^arch\.yaml: line 4: unknown block id 4"),
        (
            "[" + "0, " * 40 + "]",
            "small",
            r"20 layers expected for space small, found 40 \(an arch of space large or large-wide\?\)",
        ),
        (
            "[" + "0, " * 40 + "]",
            None,
            r"40 layers fit spaces large and large-wide: name the space",
        ),
        (
            "flops: 3\nlayers: [0, 1]\n",
            "small",
            r"line 1: unrecognised arch file.*found keys: flops, layers",
        ),
        ("arch: [0, 1\n", "small", r"^arch\.yaml: line 2: not valid YAML"),
        ("# nothing\n", "small", r"^arch\.yaml: empty arch file$"),
    ],
    ids=lambda value: None if isinstance(value, str) and len(value) < 30 else "",
)
def test_malformed_rejected(text, space, message):
    with pytest.raises(ValueError, match=message):
        parse_arch_record(text, get_space(space) if space else None, source="arch.yaml")


def test_malformed_specs(tmp_path):
    with pytest.raises(ValueError, match=r"arch file not found: missing\.yaml"):
        load_arch("missing.yaml", SMALL)
    with pytest.raises(ValueError, match=r"random:SEED needs an integer seed, got 'abc'"):
        load_arch("random:abc", SMALL)
    with pytest.raises(ValueError, match=r"item 2: unknown block id 9"):
        load_arch("0,1,9" + ",0" * 17, SMALL)
    with pytest.raises(ValueError, match=r"unknown search space 'tiny'"):
        get_space("tiny")
    with pytest.raises(
        TypeError, match=r"expected a SearchSpace .*got 'small'"
    ):  # names resolve at the edges
        load_arch("random:1", "small")
    path = _write(tmp_path, "bad.yaml", "space: small\narch:\n  - shuffle_3x3\n  - nope\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: line 4: unknown block 'nope'"):
        load_arch(path, SMALL)
    with pytest.raises(ValueError, match=r"invalid metadata key 'two words'"):
        save_arch(str(tmp_path / "x.yaml"), (0,) * 20, SMALL, **{"two words": 1})
    with pytest.raises(
        ValueError, match=r"width_mult=0.5 conflicts with the space's width multiplier 0.25"
    ):
        save_arch(str(tmp_path / "x.yaml"), (0,) * 20, get_space("small", 0.25), width_mult=0.5)
    with pytest.raises(ValueError, match=r"arch has 3 layers"):
        save_arch(str(tmp_path / "x.yaml"), (0, 0, 0), SMALL)
    assert not (tmp_path / "x.yaml").exists()
