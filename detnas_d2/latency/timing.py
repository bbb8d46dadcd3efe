"""Timing a latency table on this machine: clocks, round-robin measuring, `build_table` and the check of a
table against measured end-to-end backbones (`validate_table`).

Every entry is timed on its own module, with its own input shape (the output of the layer before), in
eval mode under `torch.inference_mode()`, BatchNorms folded into the convs (`fold_bn=False` keeps them):
warm-up calls, then the median of `repeats` timings. Entries are timed round-robin, one call of every
entry per round (on GPUs: 1 ms of calls in a row, `min_repeat_ms`), so that the other modules run
between two calls of one, as the other layers do in a network (a block called in a loop keeps its
weights in cache and ran 15-35% faster than inside the backbone on our CPU), and so that a load change
of a shared machine spreads over all entries; an entry's input is read, untimed, just before it runs,
as a layer's input has just been written by the layer before it. The "cpu" clock (one CPU thread)
reads the thread's CPU time instead of wall time: on a CPU shared with other jobs, preemption inflates
long calls (a whole backbone) more than short ones (a block), which wall time turns into a prediction
bias.

`build_table(fit_archs=F, validate=N)` also times whole backbones in the same round-robin: the table's
calibration line is fitted on the space's one-block archs and F random archs (calibration.py), and the
prediction is checked on N other random archs, held out of the fit, before (the table's sum) and after
the calibration.
"""

import math
import platform
import random
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..input_size import format_input_size, parse_input_size
from ..modeling import ClassifierHead, ShuffleNetV2Subnet, Stem, build_block, check_space_blocks
from ..modeling.bn_fold import fold_batchnorm
from ..search_space import SearchSpace
from .calibration import CalibrationError, one_block_archs
from .table import LatencyTable

__all__ = [
    "CLOCKS",
    "device_name",
    "default_min_repeat_ms",
    "measure_round_robin",
    "measure_clocks",
    "blocks_and_inputs",
    "table_meta",
    "build_table",
    "measure_backbone",
    "validate_table",
]

CLOCKS = {
    "wall": time.perf_counter,  # latency as a user sees it
    "cpu": time.thread_time,  # CPU time of the calling thread: immune to preemption on a shared machine
}


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


def default_min_repeat_ms(device) -> float:
    """0 (one call per timing, caches as in the network) on CPU; 1 ms of calls in a row on GPUs."""
    return 1.0 if torch.device(device).type == "cuda" else 0.0


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
    timing, untimed, as a layer's input was just written by the layer before it. A positive
    `min_repeat_ms` runs an entry that long in a row per timing (for GPUs, where a synchronisation per
    call would dominate small modules). `clock`: "wall" (perf_counter) or "cpu" (thread CPU time; one
    CPU thread only).
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
            inner.append(
                max(1, math.ceil(min_repeat_ms / max(once, 1e-4))) if min_repeat_ms > 0 else 1
            )
        samples = [[[] for _ in entries] for _ in clocks]
        order = list(range(len(entries)))
        for r in range(max(1, repeats)):
            for i in order if r % 2 == 0 else order[::-1]:  # no entry always late in a round
                fn, x = entries[i]
                x.sum()  # untimed: the input is in cache, as a layer's input is in the network
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


def blocks_and_inputs(space: SearchSpace, input_size, batch, device, norm, fold_bn, seed):
    """(image, stem, every layer's candidate blocks, every layer's input tensor, the last layer's
    output): the modules of a table and the inputs of their real shapes."""
    check_space_blocks(space)
    torch.manual_seed(seed)
    h, w = input_size
    image = torch.randn(batch, 3, h, w, device=device)
    stem = _prepare(Stem(3, space.stem_out, norm), device, fold_bn)
    blocks, inputs = [], []
    with torch.inference_mode():
        x = stem(image)
    for spec in space.layers():
        choices = [
            _prepare(
                build_block(
                    choice,
                    spec.in_channels,
                    spec.out_channels,
                    spec.stride,
                    norm,
                    space.block_style,
                ),
                device,
                fold_bn,
            )
            for choice in space.layer_blocks[spec.index]
        ]
        inputs.append(x.clone())
        with torch.inference_mode():
            x = choices[0](x)
        blocks.append(choices)
    return image, stem, blocks, inputs, x


def table_meta(
    space,
    input_size,
    batch,
    device,
    norm,
    fold_bn,
    warmup,
    repeats,
    tail,
    clock,
    min_repeat_ms,
    extra=None,
) -> Dict:
    """A table's `meta`: the setting it is measured in, and this machine."""
    device = torch.device(device)
    meta = {
        "device": device.type,
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "input_size": list(input_size),
        "batch": batch,
        "space": space.ref,
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
        "out_features": list(space.out_features),
        "blocks": space.block_names(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
    }
    if space.source:
        meta["space_digest"] = space.digest
    if device.type == "cuda":
        meta["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    meta.update(extra or {})
    return meta


def _errors(predicted, measured) -> Dict:
    errors = [100.0 * (p - m) / m for p, m in zip(predicted, measured)]
    abs_err = [abs(e) for e in errors]
    return {
        "predicted_ms": [round(p, 5) for p in predicted],
        "error_pct": [round(e, 3) for e in errors],
        "mean_abs_error_pct": round(statistics.mean(abs_err), 3),
        "worst_abs_error_pct": round(max(abs_err), 3),
        "mean_error_pct": round(statistics.mean(errors), 3),
    }


def _validation_result(table: LatencyTable, archs, measured, seed, clock) -> Dict:
    """The table's prediction (calibrated, if it is) on `archs` against `measured`; for a calibrated
    table also the error of its sum before the calibration ("uncalibrated")."""
    names = [",".join(map(str, a)) for a in archs]
    fitted = set(table.calibration["archs"]) if table.calibration is not None else set()
    result = {
        "num_archs": len(archs),
        "held_out": not fitted.intersection(names),  # no arch of the calibration's fit among them
        "seed": seed,
        "clock": clock,
        "archs": names,
        "measured_ms": [round(m, 5) for m in measured],
        "calibrated": table.calibration is not None,
        **_errors([table.predict(a) for a in archs], measured),
        "threads": torch.get_num_threads(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if table.calibration is not None:
        result["uncalibrated"] = _errors([table.sum_ms(a) for a in archs], measured)
    return result


def _log_validation(result, log, how):
    def errors(r):
        return (
            f"mean |error| {r['mean_abs_error_pct']:.2f}%, worst {r['worst_abs_error_pct']:.2f}% (mean "
            f"signed {r['mean_error_pct']:+.2f}%)"
        )

    before = result.get("uncalibrated")
    log(
        f"Validation on {result['num_archs']} random archs held out of the fit (seed {result['seed']}, "
        f"{how}), predicted vs measured end-to-end backbone: "
        + (
            f"table sum {errors(before)}; calibrated {errors(result)}"
            if before
            else f"table sum (uncalibrated) {errors(result)}"
        )
    )


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
    fit_archs: int = 0,
    validate: int = 0,
    log: Callable[[str], None] = lambda s: None,
) -> LatencyTable:
    """Time the stem, every (layer, block choice) of `space` and the optional tail on `device`.

    With `fit_archs` F > 0 and `validate` N, the end-to-end backbones of the space's one-block archs and
    F + N random archs (seed `seed`) are timed in the same round-robin as the table's entries, so that a
    load change of a shared machine hits all alike: the table's calibration is fitted on the one-block
    archs and the first F random ones (`table.calibration`), and the prediction checked on the other N
    (`table.validation`, before and after the calibration). A fit that fails (noise larger than the
    archs' differences) leaves the table uncalibrated, with a log line saying why.
    """
    input_size = parse_input_size(input_size)
    device = torch.device(device)
    if tail not in ("none", "classifier"):
        raise ValueError(f"tail must be 'none' or 'classifier', got '{tail}'")
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    if fit_archs < 0 or validate < 0:
        raise ValueError(
            f"fit archs (0: no calibration) and validation archs must be >= 0, got {fit_archs} "
            f"and {validate}"
        )
    if min_repeat_ms is None:
        min_repeat_ms = default_min_repeat_ms(device)
    _clock_fn(clock, device)  # refuse an unusable clock before building anything
    image, stem, blocks, inputs, last = blocks_and_inputs(
        space, input_size, batch, device, norm, fold_bn, seed
    )
    entries = [(stem, image)]
    for layer, choices in enumerate(blocks):
        entries += [(block, inputs[layer]) for block in choices]
    if tail == "classifier":
        head = ClassifierHead(space.stage_out[-1], num_classes, head_channels, norm=norm)
        entries.append((_prepare(head, device, fold_bn), last))
    num_entries = len(entries)
    extra = (
        {"num_classes": num_classes, "head_channels": head_channels} if tail == "classifier" else {}
    )
    meta = table_meta(
        space,
        input_size,
        batch,
        device,
        norm,
        fold_bn,
        warmup,
        repeats,
        tail,
        clock,
        min_repeat_ms,
        extra,
    )
    table = LatencyTable(meta, 0.0, [], tail)
    rng = random.Random(seed)
    archs = [space.random_arch(rng) for _ in range(fit_archs + validate)]
    fit = (one_block_archs(space) + archs[:fit_archs]) if fit_archs else []
    held_out = archs[fit_archs:]
    entries += [(_backbone_model(table, arch, device), image) for arch in fit + held_out]
    log(
        f"Timing {num_entries} modules ({space.num_layers} layers of up to {space.max_choices} "
        "blocks, stem"
        f"{', classifier head' if tail != 'none' else ''})"
        + (
            f" and {len(fit)} + {validate} archs end to end (calibration, validation)"
            if archs
            else ""
        )
        + f" on {device.type}, input {format_input_size(input_size)}, batch {batch}, "
        f"{torch.get_num_threads()} threads, {clock} clock: {warmup} warm-up calls, median of {repeats} "
        "round-robin timings"
    )
    t0 = time.perf_counter()
    times = measure_round_robin(entries, device, warmup, repeats, min_repeat_ms, clock)
    log(f"  measured in {time.perf_counter() - t0:.1f} s")
    table.stem_ms = times[0]
    table.layers_ms, start = [], 1
    for n in space.num_choices:
        table.layers_ms.append(times[start : start + n])
        start += n
    table.tail_ms = times[num_entries - 1] if tail == "classifier" else 0.0
    measured = times[num_entries:]
    if fit:
        try:
            c = table.calibrate(fit, measured[: len(fit)])
            log(
                f"Calibration on {len(fit)} archs ({space.max_choices} one-block, {fit_archs} random): measured = "
                f"{c['scale']:.4f} x table sum + {c['offset_ms']:.4f} ms"
            )
        except CalibrationError as e:
            log(f"No calibration, the table predicts its sums: {e}")
    if validate:
        table.validation = _validation_result(table, held_out, measured[len(fit) :], seed, clock)
        _log_validation(table.validation, log, "timed with the table")
    return table


def _backbone_model(table: LatencyTable, arch, device) -> nn.Module:
    m = table.meta
    model = ShuffleNetV2Subnet(table.space, arch, norm=m["norm"])
    if table.tail == "classifier":
        head = ClassifierHead(
            table.space.stage_out[-1], m["num_classes"], m["head_channels"], norm=m["norm"]
        )
        model = _WithHead(model, head, table.space.out_features[-1])
    return _prepare(model, device, m["fold_bn"])


class _WithHead(nn.Module):
    def __init__(self, backbone, head, feature: str):
        super().__init__()
        self.backbone, self.head, self.feature = backbone, head, feature

    def forward(self, x):
        return self.head(self.backbone(x)[self.feature])


def measure_backbone(
    table: LatencyTable,
    archs: Sequence[Sequence[int]],
    device=None,
    warmup=None,
    repeats=None,
    seed: int = 0,
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
        [(model, x) for model in models],
        device,
        m["warmup"] if warmup is None else warmup,
        m["repeats"] if repeats is None else repeats,
        m.get("min_repeat_ms", default_min_repeat_ms(device)),
        clock or m.get("clock", "wall"),
    )


def validate_table(
    table: LatencyTable,
    num_archs: int = 10,
    seed: int = 0,
    warmup=None,
    repeats=None,
    log: Callable[[str], None] = lambda s: None,
) -> Dict:
    """Predicted vs measured end-to-end latency of `num_archs` random archs, measured now (a table
    loaded on its own machine; use a `seed` other than the table's, whose first archs are its fit archs);
    stored in `table.validation`. `build_table(validate=N)` measures the archs together with the table
    instead, which a load change of a shared machine affects less."""
    rng = random.Random(seed)
    archs = [table.space.random_arch(rng) for _ in range(num_archs)]
    measured = measure_backbone(table, archs, warmup=warmup, repeats=repeats, seed=seed)
    table.validation = _validation_result(
        table, archs, measured, seed, table.meta.get("clock", "wall")
    )
    _log_validation(table.validation, log, "timed after the table")
    return table.validation
