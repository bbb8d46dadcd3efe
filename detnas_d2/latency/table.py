"""A latency lookup table: the measured ms of the stem, every (layer, block choice) of a search space and
an optional classifier head on one device. An arch's predicted latency is the sum of its entries,
calibrated: `scale * sum + offset_ms`, a line fitted, when the table was built, through the measured
latency of whole backbones (calibration.py says why).

File: JSON (or YAML for .yaml/.yml) with `format`, `meta` (device, device_name, torch_version, threads,
input_size [H, W], batch, space (and space_digest for a space file), width_mult, norm, fold_bn, warmup,
repeats, ...), `stem_ms`, `layers_ms` ([layer][block id], in ms: one entry per candidate of the layer),
`tail` / `tail_ms`, `calibration` (scale, offset_ms and the fit archs' sums and measurements) and
`validation`. Tables of format v1 (before the calibration) still load:
uncalibrated, their prediction is the sum, and loading one says so. `LatencyTable.load` refuses a table
measured on another device, input size, space or batch than the one asked for.
"""

import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import yaml

from ..input_size import format_input_size, parse_input_size
from ..search_space import SearchSpace, get_space
from ..user_errors import UserError
from .calibration import fit_line

__all__ = ["TABLE_FORMAT", "LatencyTable", "LatencyTableMismatch"]

TABLE_FORMAT = "detnas-d2-latency-table-v2"
_UNCALIBRATED_FORMAT = "detnas-d2-latency-table-v1"  # no calibration: read, predicting the sum
logger = logging.getLogger(__name__)


class LatencyTableMismatch(UserError):
    """A table measured on another device / input size / space than the one asked for."""


@dataclass
class LatencyTable:
    """Measured ms per (layer, block id), stem and optional tail; `meta` says where and how."""

    meta: Dict
    stem_ms: float
    layers_ms: List[List[float]]
    tail: str = "none"
    tail_ms: float = 0.0
    validation: Optional[Dict] = None
    extra: Dict = field(default_factory=dict)
    # {"scale", "offset_ms", the fit archs' sums and measurements}; None: predict the sum
    calibration: Optional[Dict] = None

    # ---- what the table was measured on -----------------------------------------------------------
    @property
    def device(self) -> str:
        return self.meta["device"]

    @property
    def input_size(self) -> Tuple[int, int]:
        return tuple(self.meta["input_size"])

    @property
    def space(self) -> SearchSpace:
        space = get_space(self.meta["space"], self.meta["width_mult"])
        digest = self.meta.get("space_digest", "")
        if digest and digest != space.digest:
            raise LatencyTableMismatch(
                f"latency table of space file {self.meta['space']} (digest {digest}): the file now "
                f"holds another space (digest {space.digest}); build the table again"
            )
        return space

    def describe(self) -> str:
        m = self.meta
        c = self.calibration
        return (
            f"device '{m['device']}' ({m['device_name']}), input {format_input_size(m['input_size'])}, "
            f"batch {m['batch']}, space '{m['space']}' width {m['width_mult']}, {m['threads']} threads, "
            f"torch {m['torch_version']}, "
            + (
                f"calibrated {c['scale']:.4f} x sum + {c['offset_ms']:.4f} ms"
                if c
                else "uncalibrated"
            )
        )

    # ---- calibration ------------------------------------------------------------------------------
    @property
    def scale(self) -> float:
        return float(self.calibration["scale"]) if self.calibration else 1.0

    @property
    def offset_ms(self) -> float:
        return float(self.calibration["offset_ms"]) if self.calibration else 0.0

    def calibrate(self, archs: Sequence[Sequence[int]], measured_ms: Sequence[float]) -> Dict:
        """Fit the calibration line on `archs` and their measured end-to-end ms; stores and returns it.
        Raises CalibrationError (and keeps the table as it was) when no line can be fitted."""
        sums = [self.sum_ms(a) for a in archs]
        line = fit_line(sums, measured_ms)
        self.calibration = {
            **line,
            "method": "least-squares line: measured backbone ms = scale x table sum + offset",
            "num_archs": len(sums),
            "archs": [",".join(str(int(c)) for c in a) for a in archs],
            "sum_ms": [round(v, 5) for v in sums],
            "measured_ms": [round(v, 5) for v in measured_ms],
        }
        return self.calibration

    # ---- prediction -------------------------------------------------------------------------------
    def _check_arch(self, arch: Sequence[int]) -> Tuple[int, ...]:
        arch = tuple(int(a) for a in arch)
        if len(arch) != len(self.layers_ms):
            raise ValueError(
                f"arch has {len(arch)} layers, the latency table ({self.meta['space']}) has "
                f"{len(self.layers_ms)}"
            )
        for layer, (a, row) in enumerate(zip(arch, self.layers_ms)):
            if not 0 <= a < len(row):
                raise ValueError(
                    f"layer {layer}: unknown block id {a}; the table's ids are 0..{len(row) - 1}"
                )
        return arch

    def sum_ms(self, arch: Sequence[int]) -> float:
        """The table's sum for `arch`, uncalibrated: stem + chosen block of every layer + tail."""
        arch = self._check_arch(arch)
        tail = self.tail_ms if self.tail != "none" else 0.0
        return self.stem_ms + sum(self.layers_ms[i][c] for i, c in enumerate(arch)) + tail

    def predict(self, arch: Sequence[int]) -> float:
        """Predicted latency of `arch` in ms: scale * the table's sum + offset (the sum, uncalibrated)."""
        return sum(self.per_stage(arch).values())

    def per_stage(self, arch: Sequence[int]) -> Dict[str, float]:
        """{"stem": ms, "res2": ms, ..., "res5": ms[, "head": ms]} for `arch` (the space's stage outputs),
        calibrated: each entry times the scale, the offset (what the whole network adds) counted with the
        stem; sums to `predict`."""
        arch = self._check_arch(arch)
        stages = self.meta["stage_of_layer"]
        names = self.meta.get("out_features") or [f"res{s + 2}" for s in range(max(stages) + 1)]
        out = {"stem": self.scale * self.stem_ms + self.offset_ms}
        for name in names:
            out[name] = 0.0
        for layer, (choice, stage) in enumerate(zip(arch, stages)):
            out[names[stage]] += self.scale * self.layers_ms[layer][choice]
        if self.tail != "none":
            out["head"] = self.scale * self.tail_ms
        return out

    def additive_ms(self) -> Tuple[float, List[List[float]]]:
        """(fixed ms, [layer][block id] ms): `predict(arch)` = fixed + the chosen block of every layer,
        calibrated (for whoever adds the costs up layer by layer: latency bands, latency sampling)."""
        tail = self.tail_ms if self.tail != "none" else 0.0
        fixed = self.scale * (self.stem_ms + tail) + self.offset_ms
        return fixed, [[self.scale * v for v in row] for row in self.layers_ms]

    def range_ms(self) -> Tuple[float, float]:
        """(fastest, slowest) predicted latency over the whole space."""
        fixed, layers = self.additive_ms()
        return fixed + sum(min(r) for r in layers), fixed + sum(max(r) for r in layers)

    # ---- files ------------------------------------------------------------------------------------
    def to_dict(self) -> Dict:
        d = {
            "format": TABLE_FORMAT,
            "meta": self.meta,
            "stem_ms": round(self.stem_ms, 6),  # ms to the nanosecond
            "layers_ms": [[round(v, 6) for v in row] for row in self.layers_ms],
            "tail": self.tail,
            "tail_ms": round(self.tail_ms, 6),
        }
        if self.calibration is not None:
            d["calibration"] = self.calibration
        if self.validation is not None:
            d["validation"] = self.validation
        d.update(self.extra)
        return d

    def save(self, path: str) -> None:
        d = self.to_dict()
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            if path.endswith((".yaml", ".yml")):
                yaml.safe_dump(
                    json.loads(json.dumps(d)), f, sort_keys=False, default_flow_style=None
                )
            else:
                json.dump(d, f, indent=1)
                f.write("\n")
        os.replace(tmp, path)

    @classmethod
    def from_dict(cls, d: Dict, source: str = "latency table") -> "LatencyTable":
        if d.get("format") not in (TABLE_FORMAT, _UNCALIBRATED_FORMAT):
            raise ValueError(
                f"{source}: not a detnas-d2 latency table (format {d.get('format')!r}, expected "
                f"{TABLE_FORMAT!r} or {_UNCALIBRATED_FORMAT!r})"
            )
        if d["format"] == _UNCALIBRATED_FORMAT:
            logger.warning(
                f"{source}: a table of format v1, without calibration: its predictions are the sums of "
                "isolated blocks, which missed measured backbones by 5-10%; rebuild it with "
                "python -m detnas_d2.latency to calibrate it"
            )
        known = {
            "format",
            "meta",
            "stem_ms",
            "layers_ms",
            "tail",
            "tail_ms",
            "blocks",
            "validation",
            "calibration",
        }
        return cls(
            meta=d["meta"],
            stem_ms=float(d["stem_ms"]),
            layers_ms=[[float(v) for v in r] for r in d["layers_ms"]],
            tail=d.get("tail", "none"),
            tail_ms=float(d.get("tail_ms", 0.0)),
            validation=d.get("validation"),
            extra={k: v for k, v in d.items() if k not in known},
            calibration=d.get("calibration"),
        )

    @classmethod
    def load(
        cls,
        path: str,
        expect_device: Optional[Union[str, torch.device]] = None,
        expect_input_size=None,
        expect_space: Optional[Union[str, SearchSpace]] = None,
        expect_batch: Optional[int] = None,
        expect_device_name: Optional[str] = None,
    ) -> "LatencyTable":
        """Read a table; each `expect_*` given must match what the table was measured on, else
        LatencyTableMismatch names both. Devices compare by type (cpu, cuda); `expect_device_name`
        also compares the device's name (a table of another GPU model is refused)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"latency table {path}: no such file")
        table = cls.from_dict(_read_table_file(path), path)
        problems = _mismatches(
            table.meta,
            expect_device,
            expect_input_size,
            expect_space,
            expect_batch,
            expect_device_name,
        )
        if problems:
            raise LatencyTableMismatch(
                f"latency table {path} was measured with "
                + "; ".join(problems)
                + ": build one for this setting: "
                + _build_command(
                    table.meta, expect_device, expect_input_size, expect_space, expect_batch
                )
            )
        return table


def _mismatches(m: Dict, device, input_size, space, batch, device_name) -> List[str]:
    """What of the table's `meta` differs from each expectation given (one phrase each)."""
    problems = []
    if device is not None:
        want = torch.device(device).type
        if torch.device(m["device"]).type != want:
            problems.append(f"device '{m['device']}' ({m['device_name']}), expected '{want}'")
    if device_name is not None and m["device_name"] != device_name:
        problems.append(f"device name '{m['device_name']}', expected '{device_name}'")
    if input_size is not None:
        want = parse_input_size(input_size)
        if tuple(m["input_size"]) != want:
            problems.append(
                f"input size {format_input_size(m['input_size'])}, expected {format_input_size(want)}"
            )
    if space is not None:
        want_name = space if isinstance(space, str) else space.ref
        want_width = None if isinstance(space, str) else space.width_mult
        same = (
            m["space"] == want_name
            if isinstance(space, str)
            else space.matches(m["space"], m.get("space_digest", ""))
        )
        if not same or (want_width is not None and float(m["width_mult"]) != float(want_width)):
            problems.append(
                f"space '{m['space']}' width {m['width_mult']}, expected '{want_name}'"
                + (f" width {want_width}" if want_width is not None else "")
            )
    if batch is not None and int(m["batch"]) != int(batch):
        problems.append(f"batch {m['batch']}, expected {batch}")
    return problems


def _yaml_or_json(text: str, source: str = "") -> Dict:
    if text.lstrip().startswith("{"):
        return json.loads(text)
    d = yaml.safe_load(text)
    if not isinstance(d, dict):
        raise ValueError(f"{source}: not a latency table (expected a mapping)")
    return d


def _build_command(m: Dict, device, input_size, space, batch) -> str:
    """The command line that builds a table of the expected setting (the table's own where none)."""
    size = format_input_size(
        parse_input_size(input_size) if input_size is not None else m["input_size"]
    )
    name = m["space"] if space is None else space if isinstance(space, str) else space.ref
    width = m["width_mult"] if space is None or isinstance(space, str) else space.width_mult
    device = m["device"] if device is None else str(device)
    return (
        f"python -m detnas_d2.latency --space {name} --width-mult {width} --input-size {size} "
        f"--device {device} --batch {m['batch'] if batch is None else batch} --output <table>"
    )


_REQUIRED_META = (
    "device",
    "device_name",
    "input_size",
    "batch",
    "space",
    "width_mult",
    "stage_of_layer",
)


def _read_table_file(path: str) -> Dict:
    """The mapping in a table file, checked enough for `from_dict`: a file that is not JSON / YAML, or a
    table with missing, non-numeric, negative or non-finite entries, is a ValueError naming it."""
    rebuild = "build it again with python -m detnas_d2.latency"
    try:
        with open(path, encoding="utf-8") as f:
            d = _yaml_or_json(f.read(), path)
    except UnicodeDecodeError:
        raise ValueError(f"latency table {path} is not text (JSON or YAML): {rebuild}") from None
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        where = str(e).strip().splitlines()[0]
        raise ValueError(
            f"latency table {path} cannot be read ({type(e).__name__}: {where}): a cut or hand-edited "
            f"file? {rebuild}"
        ) from None
    if d.get("format") not in (TABLE_FORMAT, _UNCALIBRATED_FORMAT):
        return d  # from_dict names the format
    meta = d.get("meta")
    missing = [k for k in ("meta", "stem_ms", "layers_ms") if k not in d]
    missing += [f"meta.{k}" for k in _REQUIRED_META if isinstance(meta, dict) and k not in meta]
    if missing or not isinstance(meta, dict):
        raise ValueError(
            f"latency table {path} lacks {', '.join(missing) or 'a meta mapping'}: {rebuild}"
        )
    rows = d["layers_ms"]
    try:
        layers = [[float(v) for v in row] for row in rows]
        entries = [float(d["stem_ms"]), float(d.get("tail_ms", 0.0))] + sum(layers, [])
        space = get_space(meta["space"], meta["width_mult"])
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"latency table {path}: unreadable entries ({e}): {rebuild}") from None
    bad = [v for v in entries if not math.isfinite(v) or v < 0]
    if bad:
        raise ValueError(
            f"latency table {path} holds {len(bad)} negative or non-finite ms, e.g. {bad[0]}: {rebuild}"
        )
    if [len(row) for row in layers] != list(space.num_choices):
        raise ValueError(
            f"latency table {path}: layers_ms is {len(layers)} rows of {sorted({len(r) for r in layers})} "
            f"entries, space '{space.name}' has {space.num_layers} layers of "
            f"{sorted(set(space.num_choices))} blocks: {rebuild}"
        )
    return d
