"""A latency lookup table: the measured ms of the stem, every (layer, block choice) of a search space and
an optional classifier head on one device; an arch's predicted latency is the sum of its entries.

File: JSON (or YAML for .yaml/.yml) with `format`, `meta` (device, device_name, torch_version, threads,
input_size [H, W], batch, space, width_mult, norm, fold_bn, warmup, repeats, ...), `stem_ms`,
`layers_ms` ([layer][block id], in ms), `tail` / `tail_ms` and `validation`. `LatencyTable.load` refuses
a table measured on another device, input size, space or batch than the one asked for.
"""

import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import yaml

from ..input_size import format_input_size, parse_input_size
from ..modeling.backbone import STAGE_NAMES
from ..search_space import BLOCKS, NUM_CHOICES, SearchSpace, get_space

__all__ = ["TABLE_FORMAT", "LatencyTable", "LatencyTableMismatch"]

TABLE_FORMAT = "detnas-d2-latency-table-v1"


class LatencyTableMismatch(ValueError):
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

    # ---- what the table was measured on -----------------------------------------------------------
    @property
    def device(self) -> str:
        return self.meta["device"]

    @property
    def input_size(self) -> Tuple[int, int]:
        return tuple(self.meta["input_size"])

    @property
    def space(self) -> SearchSpace:
        return get_space(self.meta["space"], self.meta["width_mult"])

    def describe(self) -> str:
        m = self.meta
        return (
            f"device '{m['device']}' ({m['device_name']}), input {format_input_size(m['input_size'])}, "
            f"batch {m['batch']}, space '{m['space']}' width {m['width_mult']}, {m['threads']} threads, "
            f"torch {m['torch_version']}"
        )

    # ---- prediction -------------------------------------------------------------------------------
    def _check_arch(self, arch: Sequence[int]) -> Tuple[int, ...]:
        arch = tuple(int(a) for a in arch)
        if len(arch) != len(self.layers_ms):
            raise ValueError(
                f"arch has {len(arch)} layers, the latency table ({self.meta['space']}) has "
                f"{len(self.layers_ms)}"
            )
        bad = [a for a in arch if not 0 <= a < NUM_CHOICES]
        if bad:
            raise ValueError(
                f"unknown block id {bad[0]}; ids are 0..{NUM_CHOICES - 1} = {list(BLOCKS)}"
            )
        return arch

    def predict(self, arch: Sequence[int]) -> float:
        """Predicted latency of `arch` in ms: stem + chosen block of every layer + tail."""
        return sum(self.per_stage(arch).values())

    def per_stage(self, arch: Sequence[int]) -> Dict[str, float]:
        """{"stem": ms, "res2": ms, ..., "res5": ms[, "head": ms]} for `arch` (sums to `predict`)."""
        arch = self._check_arch(arch)
        stages = self.meta["stage_of_layer"]
        out = {"stem": self.stem_ms}
        for s in range(len(STAGE_NAMES)):
            out[STAGE_NAMES[s]] = 0.0
        for layer, (choice, stage) in enumerate(zip(arch, stages)):
            out[STAGE_NAMES[stage]] += self.layers_ms[layer][choice]
        if self.tail != "none":
            out["head"] = self.tail_ms
        return out

    def range_ms(self) -> Tuple[float, float]:
        """(fastest, slowest) predicted latency over the whole space."""
        fixed = self.stem_ms + (self.tail_ms if self.tail != "none" else 0.0)
        return fixed + sum(min(r) for r in self.layers_ms), fixed + sum(
            max(r) for r in self.layers_ms
        )

    # ---- files ------------------------------------------------------------------------------------
    def to_dict(self) -> Dict:
        d = {
            "format": TABLE_FORMAT,
            "meta": self.meta,
            "stem_ms": round(self.stem_ms, 6),  # ms to the nanosecond
            "layers_ms": [[round(v, 6) for v in row] for row in self.layers_ms],
            "tail": self.tail,
            "tail_ms": round(self.tail_ms, 6),
            "blocks": list(BLOCKS),
        }
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
        if d.get("format") != TABLE_FORMAT:
            raise ValueError(
                f"{source}: not a detnas-d2 latency table (format {d.get('format')!r}, expected "
                f"{TABLE_FORMAT!r})"
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
        }
        return cls(
            meta=d["meta"],
            stem_ms=float(d["stem_ms"]),
            layers_ms=[[float(v) for v in r] for r in d["layers_ms"]],
            tail=d.get("tail", "none"),
            tail_ms=float(d.get("tail_ms", 0.0)),
            validation=d.get("validation"),
            extra={k: v for k, v in d.items() if k not in known},
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
        with open(path) as f:
            d = _yaml_or_json(f.read(), path)
        table = cls.from_dict(d, path)
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
                + ": build a table for this setting (python -m detnas_d2.latency ...)"
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
        want_name = space if isinstance(space, str) else space.name
        want_width = None if isinstance(space, str) else space.width_mult
        if m["space"] != want_name or (
            want_width is not None and float(m["width_mult"]) != float(want_width)
        ):
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
