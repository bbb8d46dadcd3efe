"""Part "latency_table": a latency table of the small space built on the device (the library of
`python -m detnas_d2.latency`) at the detectors' test size, calibrated on whole backbones measured with it,
and its error on other random archs held out of the calibration, before (the table's sum) and after.
Goal: mean |error| at most 5%, worst at most 10% (after).
"""

import torch

from ..latency.timing import build_table
from ..search_space import get_space
from .results import CheckContext, PartReport

__all__ = ["run", "MEAN_ERROR_GOAL", "WORST_ERROR_GOAL"]

MEAN_ERROR_GOAL, WORST_ERROR_GOAL = 5.0, 10.0
_SIZES = {
    False: {
        "width": 1.0,
        "input_size": "800x1333",
        "warmup": 10,
        "repeats": 30,
        "fit_archs": 12,
        "validate": 12,
    },
    True: {
        "width": 0.25,
        "input_size": "32x32",
        "warmup": 1,
        "repeats": 3,
        "fit_archs": 2,
        "validate": 4,
    },
}


def _row(name, errors):
    return [
        name,
        errors["mean_abs_error_pct"],
        errors["worst_abs_error_pct"],
        errors["mean_error_pct"],
    ]


def run(ctx: CheckContext, report: PartReport):
    s = _SIZES[ctx.quick]
    table = build_table(
        get_space("small", s["width"]),
        s["input_size"],
        ctx.device,
        warmup=s["warmup"],
        repeats=s["repeats"],
        fit_archs=s["fit_archs"],
        validate=s["validate"],
        seed=0,
        log=lambda m: ctx.log(f"    {m}"),
    )
    table.save(str(ctx.folder("latency") / "latency_table.json"))
    v = table.validation
    lo, hi = table.range_ms()
    report.data.update(
        {
            "space": "small",
            "width_mult": s["width"],
            "input_size": s["input_size"],
            "batch": 1,
            "device_name": table.meta["device_name"],
            "threads": torch.get_num_threads(),
            "range_ms": [round(lo, 4), round(hi, 4)],
            "calibration": table.calibration,
            "validation": v,
        }
    )
    rows = (
        [_row("table sum (uncalibrated)", v["uncalibrated"])] if "uncalibrated" in v else []
    ) + [_row("calibrated" if v["calibrated"] else "table sum (no calibration could be fitted)", v)]
    c = table.calibration
    report.table(
        f"Latency table, small space x{s['width']}, input {s['input_size']}, batch 1, "
        f"{table.meta['device_name']}: {v['num_archs']} held-out archs; "
        + (
            f"calibration {c['scale']:.4f} x sum + {c['offset_ms']:.4f} ms on {c['num_archs']} archs; "
            if c
            else ""
        )
        + f"space range {lo:.3f} .. {hi:.3f} ms",
        ["prediction", "mean abs error %", "worst %", "mean signed %"],
        rows,
    )
    report.goal(
        f"latency table mean |error| <= {MEAN_ERROR_GOAL}% (held-out archs)",
        v["mean_abs_error_pct"] <= MEAN_ERROR_GOAL,
        f"{v['mean_abs_error_pct']:.2f}%",
    )
    report.goal(
        f"latency table worst |error| <= {WORST_ERROR_GOAL}% (held-out archs)",
        v["worst_abs_error_pct"] <= WORST_ERROR_GOAL,
        f"{v['worst_abs_error_pct']:.2f}%",
    )
