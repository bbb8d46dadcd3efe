"""Latency lookup tables: the measured time of every (layer, block choice) of a search space on one device.

The predicted latency of an arch is the table's sum: stem + the chosen block of every layer (+ the
classifier head when the table has one), as in FBNet/ChamNet's per-operator tables. A table holds one
device, input size, batch and width: `LatencyTable.load(..., expect_device=..., expect_input_size=...)`
refuses a table measured elsewhere.

    python -m detnas_d2.latency --space small --input-size 224x224 --device cpu --output lat_cpu_224.json
    python -m detnas_d2.latency --space small --width-mult 0.25 --input-size 32x32 --repeats 2 --output t.yaml

Every entry is timed on its own module, with its own input shape (the output of the layer before), in
eval mode under `torch.inference_mode()`, BatchNorms folded into the convs (`--no-fold-bn` keeps them):
warm-up calls, then the median of `--repeats` timings. Entries are timed round-robin, one call of every
entry per round (on GPUs: 1 ms of calls in a row, `--min-repeat-ms`), so that the other modules run
between two calls of one, as the other layers do in a network (a block called in a loop keeps its
weights in cache and ran 15-35% faster than inside the backbone on our CPU), and so that a load change
of a shared machine spreads over all entries; an entry's input is read, untimed, just before it runs,
as a layer's input has just been written by the layer before it. `--validate N` times N random
archs' end-to-end backbones (stem and all stages) in the same round-robin and prints and stores the
mean and worst absolute % error of the table's prediction. `--clock cpu` (one CPU thread) reads the
thread's CPU time instead of wall time: on a CPU shared with other jobs, preemption inflates long calls
(a whole backbone) more than short ones (a block), which wall time turns into a prediction bias.

Search integration: `LatencyTable.load(path, expect_device="cuda", expect_input_size=(800, 1333))`,
then `table.predict(arch)` (ms) or `table.per_stage(arch)`.

File: JSON (or YAML for .yaml/.yml) with `meta` (device, device_name, torch_version, threads,
input_size [H, W], batch, space, width_mult, norm, fold_bn, warmup, repeats, ...), `stem_ms`,
`layers_ms` ([layer][block id], in ms), `tail` / `tail_ms` and `validation`.
"""
import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import yaml
from torch import nn

from .export import fold_batchnorm
from .modeling import ClassifierHead, ShuffleNetV2Subnet, Stem, build_block
from .search_space import BLOCKS, NUM_CHOICES, SearchSpace, get_space

__all__ = [
    "TABLE_FORMAT",
    "LatencyTable",
    "LatencyTableMismatch",
    "parse_input_size",
    "device_name",
    "measure_round_robin",
    "measure_clocks",
    "build_table",
    "measure_backbone",
    "validate_table",
    "main",
]

TABLE_FORMAT = "detnas-d2-latency-table-v1"
STAGE_NAMES = ("res2", "res3", "res4", "res5")


class LatencyTableMismatch(ValueError):
    """A table measured on another device / input size / space than the one asked for."""


def parse_input_size(size) -> Tuple[int, int]:
    """(H, W) from an int (square), "HxW", "S", or a pair."""
    if isinstance(size, int):
        parts = [size, size]
    elif isinstance(size, str):
        try:
            parts = [int(p) for p in size.lower().replace(",", "x").split("x")]
        except ValueError:
            parts = []
        if len(parts) == 1:
            parts = parts * 2
    else:
        parts = [int(p) for p in size]
    if len(parts) != 2 or min(parts) <= 0:
        raise ValueError(f"an input size is HxW or one number (square), e.g. 224x224; got {size!r}")
    return int(parts[0]), int(parts[1])


def _size_str(size: Sequence[int]) -> str:
    return f"{size[0]}x{size[1]}"


def device_name(device: Union[str, torch.device]) -> str:
    """The GPU's name, or the CPU's model name (from /proc/cpuinfo where there is one)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


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
            f"device '{m['device']}' ({m['device_name']}), input {_size_str(m['input_size'])}, batch {m['batch']}, "
            f"space '{m['space']}' width {m['width_mult']}, {m['threads']} threads, torch {m['torch_version']}"
        )

    # ---- prediction -------------------------------------------------------------------------------
    def _check_arch(self, arch: Sequence[int]) -> Tuple[int, ...]:
        arch = tuple(int(a) for a in arch)
        if len(arch) != len(self.layers_ms):
            raise ValueError(
                f"arch has {len(arch)} layers, the latency table ({self.meta['space']}) has {len(self.layers_ms)}"
            )
        bad = [a for a in arch if not 0 <= a < NUM_CHOICES]
        if bad:
            raise ValueError(f"unknown block id {bad[0]}; ids are 0..{NUM_CHOICES - 1} = {list(BLOCKS)}")
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
        return fixed + sum(min(r) for r in self.layers_ms), fixed + sum(max(r) for r in self.layers_ms)

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

                yaml.safe_dump(json.loads(json.dumps(d)), f, sort_keys=False, default_flow_style=None)
            else:
                json.dump(d, f, indent=1)
                f.write("\n")
        os.replace(tmp, path)

    @classmethod
    def from_dict(cls, d: Dict, source: str = "latency table") -> "LatencyTable":
        if d.get("format") != TABLE_FORMAT:
            raise ValueError(
                f"{source}: not a detnas-d2 latency table (format {d.get('format')!r}, expected {TABLE_FORMAT!r})"
            )
        known = {"format", "meta", "stem_ms", "layers_ms", "tail", "tail_ms", "blocks", "validation"}
        return cls(
            meta=d["meta"], stem_ms=float(d["stem_ms"]), layers_ms=[[float(v) for v in r] for r in d["layers_ms"]],
            tail=d.get("tail", "none"), tail_ms=float(d.get("tail_ms", 0.0)), validation=d.get("validation"),
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
            d = yaml_or_json(f.read(), path)
        table = cls.from_dict(d, path)
        m = table.meta
        problems = []
        if expect_device is not None:
            want = torch.device(expect_device).type
            if torch.device(m["device"]).type != want:
                problems.append(f"device '{m['device']}' ({m['device_name']}), expected '{want}'")
        if expect_device_name is not None and m["device_name"] != expect_device_name:
            problems.append(f"device name '{m['device_name']}', expected '{expect_device_name}'")
        if expect_input_size is not None:
            want = parse_input_size(expect_input_size)
            if tuple(m["input_size"]) != want:
                problems.append(f"input size {_size_str(m['input_size'])}, expected {_size_str(want)}")
        if expect_space is not None:
            want_name = expect_space if isinstance(expect_space, str) else expect_space.name
            want_width = None if isinstance(expect_space, str) else expect_space.width_mult
            if m["space"] != want_name or (want_width is not None and float(m["width_mult"]) != float(want_width)):
                problems.append(
                    f"space '{m['space']}' width {m['width_mult']}, expected '{want_name}'"
                    + (f" width {want_width}" if want_width is not None else "")
                )
        if expect_batch is not None and int(m["batch"]) != int(expect_batch):
            problems.append(f"batch {m['batch']}, expected {expect_batch}")
        if problems:
            raise LatencyTableMismatch(
                f"latency table {path} was measured with " + "; ".join(problems)
                + ": build a table for this setting (python -m detnas_d2.latency ...)"
            )
        return table


def yaml_or_json(text: str, source: str = "") -> Dict:
    text_s = text.lstrip()
    if text_s.startswith("{"):
        return json.loads(text)

    d = yaml.safe_load(text)
    if not isinstance(d, dict):
        raise ValueError(f"{source}: not a latency table (expected a mapping)")
    return d


# ---- timing -------------------------------------------------------------------------------------

CLOCKS = {
    "wall": time.perf_counter,  # latency as a user sees it
    "cpu": time.thread_time,  # CPU time of the calling thread: immune to preemption on a shared machine
}


def _clock_fn(clock: str, device: torch.device):
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got '{clock}'")
    if clock == "cpu" and (device.type != "cpu" or torch.get_num_threads() != 1):
        raise ValueError(
            "clock 'cpu' (the calling thread's CPU time) measures a CPU model run on one thread only: "
            f"use --device cpu --threads 1 (now {device.type}, {torch.get_num_threads()} threads)"
        )
    return CLOCKS[clock]


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_round_robin(
    entries: Sequence[Tuple[Callable, torch.Tensor]],
    device: Union[str, torch.device],
    warmup: int = 10,
    repeats: int = 30,
    min_repeat_ms: float = 0.0,
    clock: str = "wall",
) -> List[float]:
    """Median ms per call of every `fn(x)` in `entries`, timed round-robin.

    Each entry is warmed up `warmup` times; the median of `repeats` timings, one per round over all
    entries (in reverse order every other round), is its latency. With `min_repeat_ms` 0 (the
    default) a timing is one call, so the other entries run between two calls of one entry, as the
    other layers do in a network: caches do not hold the entry's weights (a module called in a loop
    runs up to 15-35% faster on CPU than inside the network); its input is read just before the
    timing, untimed, as a layer's input was just written by the layer before it. A positive `min_repeat_ms` runs an
    entry that long in a row per timing (for GPUs, where a synchronisation per call would dominate
    small modules). `clock`: "wall" (perf_counter) or "cpu" (thread CPU time; one CPU thread only).
    """
    return measure_clocks(entries, device, warmup, repeats, min_repeat_ms, (clock,))[clock]


def measure_clocks(
    entries: Sequence[Tuple[Callable, torch.Tensor]],
    device: Union[str, torch.device],
    warmup: int = 10,
    repeats: int = 30,
    min_repeat_ms: float = 0.0,
    clocks: Sequence[str] = ("wall",),
) -> Dict[str, List[float]]:
    """`measure_round_robin` reading several clocks at once: {clock: medians}."""
    device = torch.device(device)
    fns = [_clock_fn(c, device) for c in clocks]
    main = fns[0]
    inner = []
    with torch.inference_mode():
        for fn, x in entries:
            for _ in range(max(1, warmup)):
                fn(x)
            _sync(device)
            t0 = main()
            fn(x)
            _sync(device)
            once = (main() - t0) * 1e3
            inner.append(max(1, math.ceil(min_repeat_ms / max(once, 1e-4))) if min_repeat_ms > 0 else 1)
        samples = [[[] for _ in entries] for _ in clocks]
        order = list(range(len(entries)))
        for r in range(max(1, repeats)):
            for i in (order if r % 2 == 0 else order[::-1]):  # no entry always late in a round
                fn, x = entries[i]
                x.sum()  # untimed: the input is in cache, as a layer's input is in the network (just written)
                _sync(device)
                starts = [f() for f in fns]
                for _ in range(inner[i]):
                    fn(x)
                _sync(device)
                ends = [f() for f in fns]
                for c in range(len(clocks)):
                    samples[c][i].append((ends[c] - starts[c]) * 1e3 / inner[i])
    return {clock: [statistics.median(s) for s in samples[c]] for c, clock in enumerate(clocks)}


def _prepare(module: nn.Module, device, fold_bn: bool) -> nn.Module:
    module = module.to(device).eval()
    if fold_bn:

        module, _ = fold_batchnorm(module, inplace=True)
    return module


def _blocks_and_inputs(space: SearchSpace, input_size, batch, device, norm, fold_bn, seed):
    """Stem, every layer's four blocks and every layer's input tensor (the real shapes)."""

    torch.manual_seed(seed)
    h, w = input_size
    image = torch.randn(batch, 3, h, w, device=device)
    stem = _prepare(Stem(3, space.stem_out, norm), device, fold_bn)
    blocks, inputs = [], []
    with torch.inference_mode():
        x = stem(image)
    for spec in space.layers():
        choices = [
            _prepare(build_block(c, spec.in_channels, spec.out_channels, spec.stride, norm), device, fold_bn)
            for c in range(NUM_CHOICES)
        ]
        inputs.append(x.clone())
        with torch.inference_mode():
            x = choices[0](x)
        blocks.append(choices)
    return image, stem, blocks, inputs, x


def _meta(space, input_size, batch, device, norm, fold_bn, warmup, repeats, tail, clock, min_repeat_ms,
          extra=None) -> Dict:
    device = torch.device(device)
    meta = {
        "device": device.type,
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "input_size": list(input_size),
        "batch": batch,
        "space": space.name,
        "width_mult": space.width_mult,
        "norm": norm,
        "fold_bn": fold_bn,
        "dtype": "float32",
        "warmup": warmup,
        "repeats": repeats,
        "statistic": "median",
        "clock": clock,
        "min_repeat_ms": min_repeat_ms,
        "tail": tail,
        "stage_of_layer": space.stage_of_layer(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
    }
    if device.type == "cuda":
        meta["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    meta.update(extra or {})
    return meta


def default_min_repeat_ms(device) -> float:
    """0 (one call per timing, caches as in the network) on CPU; 1 ms of calls in a row on GPUs."""
    return 1.0 if torch.device(device).type == "cuda" else 0.0


def _validation_result(archs, predicted, measured, seed, clock) -> Dict:
    errors = [100.0 * (p - m) / m for p, m in zip(predicted, measured)]
    abs_err = [abs(e) for e in errors]
    return {
        "num_archs": len(archs),
        "seed": seed,
        "clock": clock,
        "archs": [",".join(map(str, a)) for a in archs],
        "predicted_ms": [round(p, 5) for p in predicted],
        "measured_ms": [round(m, 5) for m in measured],
        "error_pct": [round(e, 3) for e in errors],
        "mean_abs_error_pct": round(statistics.mean(abs_err), 3),
        "worst_abs_error_pct": round(max(abs_err), 3),
        "mean_error_pct": round(statistics.mean(errors), 3),
        "threads": torch.get_num_threads(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _log_validation(result, log, how):
    log(f"Validation on {result['num_archs']} random archs (seed {result['seed']}, {how}): predicted (table sum) "
        f"vs measured end-to-end backbone: mean |error| {result['mean_abs_error_pct']:.2f}%, worst "
        f"{result['worst_abs_error_pct']:.2f}% (mean signed {result['mean_error_pct']:+.2f}%)")


def build_table(
    space: SearchSpace,
    input_size,
    device: Union[str, torch.device] = "cpu",
    batch: int = 1,
    warmup: int = 10,
    repeats: int = 30,
    fold_bn: bool = True,
    norm: str = "BN",
    tail: str = "none",
    num_classes: int = 1000,
    head_channels: int = 1024,
    seed: int = 0,
    min_repeat_ms: Optional[float] = None,
    clock: str = "wall",
    validate: int = 0,
    log: Callable[[str], None] = lambda s: None,
) -> LatencyTable:
    """Time the stem, every (layer, block choice) of `space` and the optional tail on `device`.

    With `validate` N > 0, N random archs' end-to-end backbones (seed `seed`) are timed in the same
    round-robin as the table's entries, so that a load change of a shared machine hits both alike, and
    the comparison is stored in `table.validation`.
    """
    input_size = parse_input_size(input_size)
    device = torch.device(device)
    if tail not in ("none", "classifier"):
        raise ValueError(f"tail must be 'none' or 'classifier', got '{tail}'")
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    if min_repeat_ms is None:
        min_repeat_ms = default_min_repeat_ms(device)
    _clock_fn(clock, device)  # refuse an unusable clock before building anything
    image, stem, blocks, inputs, last = _blocks_and_inputs(space, input_size, batch, device, norm, fold_bn, seed)
    entries = [(stem, image)]
    for layer, choices in enumerate(blocks):
        entries += [(block, inputs[layer]) for block in choices]
    if tail == "classifier":

        head = _prepare(ClassifierHead(space.stage_out[-1], num_classes, head_channels, norm=norm), device, fold_bn)
        entries.append((head, last))
    num_entries = len(entries)
    extra = {"num_classes": num_classes, "head_channels": head_channels} if tail == "classifier" else {}
    meta = _meta(space, input_size, batch, device, norm, fold_bn, warmup, repeats, tail, clock, min_repeat_ms, extra)
    table = LatencyTable(meta, 0.0, [], tail)
    archs = []
    if validate > 0:
        rng = random.Random(seed)
        archs = [space.random_arch(rng) for _ in range(validate)]
        entries += [(_backbone_model(table, arch, device), image) for arch in archs]
    log(f"Timing {num_entries} modules ({space.num_layers} layers x {NUM_CHOICES} blocks, stem"
        f"{', classifier head' if tail != 'none' else ''})"
        + (f" and {len(archs)} random archs end to end" if archs else "")
        + f" on {device.type}, input {_size_str(input_size)}, batch {batch}, {torch.get_num_threads()} threads, "
        f"{clock} clock: {warmup} warm-up calls, median of {repeats} round-robin timings")
    t0 = time.perf_counter()
    times = measure_round_robin(entries, device, warmup, repeats, min_repeat_ms, clock)
    log(f"  measured in {time.perf_counter() - t0:.1f} s")
    table.stem_ms = times[0]
    table.layers_ms = [times[1 + NUM_CHOICES * i: 1 + NUM_CHOICES * (i + 1)] for i in range(space.num_layers)]
    table.tail_ms = times[num_entries - 1] if tail == "classifier" else 0.0
    if archs:
        measured = times[num_entries:]
        table.validation = _validation_result(archs, [table.predict(a) for a in archs], measured, seed, clock)
        _log_validation(table.validation, log, "timed with the table")
    return table


def _backbone_model(table: LatencyTable, arch, device) -> nn.Module:

    m = table.meta
    model = ShuffleNetV2Subnet(table.space, arch, norm=m["norm"])
    if table.tail == "classifier":

        head = ClassifierHead(table.space.stage_out[-1], m["num_classes"], m["head_channels"], norm=m["norm"])
        model = _WithHead(model, head)
    return _prepare(model, device, m["fold_bn"])


class _WithHead(nn.Module):
    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x):
        return self.head(self.backbone(x)["res5"])


def measure_backbone(
    table: LatencyTable, archs: Sequence[Sequence[int]], device=None, warmup=None, repeats=None, seed: int = 0,
    clock: Optional[str] = None,
) -> List[float]:
    """Measured end-to-end ms of each arch's backbone (with the table's tail), in the table's setting
    (device, input size, batch, BN folding, clock)."""
    device = torch.device(device or table.device)
    m = table.meta
    torch.manual_seed(seed)
    x = torch.randn(m["batch"], 3, *m["input_size"], device=device)
    models = [_backbone_model(table, arch, device) for arch in archs]
    return measure_round_robin(
        [(model, x) for model in models], device,
        m["warmup"] if warmup is None else warmup, m["repeats"] if repeats is None else repeats,
        m.get("min_repeat_ms", default_min_repeat_ms(device)), clock or m.get("clock", "wall"),
    )


def validate_table(
    table: LatencyTable, num_archs: int = 10, seed: int = 0, warmup=None, repeats=None,
    log: Callable[[str], None] = lambda s: None,
) -> Dict:
    """Predicted vs measured end-to-end latency of `num_archs` random archs, measured now (a table
    loaded on its own machine); stored in `table.validation`. `build_table(validate=N)` measures the
    archs together with the table instead, which a load change of a shared machine affects less."""
    rng = random.Random(seed)
    archs = [table.space.random_arch(rng) for _ in range(num_archs)]
    predicted = [table.predict(a) for a in archs]
    measured = measure_backbone(table, archs, warmup=warmup, repeats=repeats, seed=seed)
    table.validation = _validation_result(archs, predicted, measured, seed, table.meta.get("clock", "wall"))
    _log_validation(table.validation, log, "timed after the table")
    return table.validation


# ---- command line -------------------------------------------------------------------------------

def get_parser():
    p = argparse.ArgumentParser(
        prog="python -m detnas_d2.latency",
        description="Build a latency lookup table of a DetNAS search space on this machine (see the module doc).",
    )
    p.add_argument("--space", default="small", help="small | large | large-wide")
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--input-size", required=True, help="HxW (or one number: square), e.g. 224x224 or 800x1333")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); recorded in the table")
    p.add_argument("--warmup", type=int, default=10, help="warm-up calls per module")
    p.add_argument("--repeats", type=int, default=30, help="timings per module (the median is kept)")
    p.add_argument("--norm", default="BN", help="norm of the blocks (BN; GN is not folded)")
    p.add_argument("--no-fold-bn", action="store_true", help="time with BatchNorms (default: folded into convs)")
    p.add_argument("--tail", choices=("none", "classifier"), default="none",
                   help="also time the classification head (1x1 conv, pool, linear)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--head-channels", type=int, default=1024)
    p.add_argument("--validate", type=int, default=10, metavar="N",
                   help="check the table on N random archs against the measured end-to-end backbone, timed in "
                        "the same round-robin as the table (0: skip)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall: latency (default); cpu: the thread's CPU time, unaffected by other processes on a "
                        "shared machine (needs --device cpu --threads 1)")
    p.add_argument("--min-repeat-ms", type=float, default=None,
                   help="run a module this long in a row per timing (default: 0 on CPU: one call, caches as in "
                        "the network; 1 on GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="table file: .json, or .yaml/.yml")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        space = get_space(args.space, args.width_mult)
        size = parse_input_size(args.input_size)
        device = torch.device(args.device)
    except (ValueError, RuntimeError) as e:
        print(f"detnas_d2.latency: error: {e}", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print("detnas_d2.latency: error: --device cuda, but CUDA is not available here", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        table = build_table(
            space, size, device, args.batch, args.warmup, args.repeats, fold_bn=not args.no_fold_bn, norm=args.norm,
            tail=args.tail, num_classes=args.num_classes, head_channels=args.head_channels, seed=args.seed,
            min_repeat_ms=args.min_repeat_ms, clock=args.clock, validate=args.validate, log=print,
        )
    except ValueError as e:
        print(f"detnas_d2.latency: error: {e}", file=sys.stderr)
        return 2
    lo, hi = table.range_ms()
    print(f"Stem {table.stem_ms:.4f} ms; space range {lo:.3f} .. {hi:.3f} ms (fastest .. slowest arch)")
    print("layer  " + "".join(f"{b:>18}" for b in BLOCKS))
    for i, row in enumerate(table.layers_ms):
        print(f"{i:5d}  " + "".join(f"{v:>18.4f}" for v in row))
    table.save(args.output)
    print(f"Wrote {args.output} ({table.describe()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
