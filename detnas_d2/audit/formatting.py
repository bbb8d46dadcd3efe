"""Numbers in the audit's reports: table cells, and strict JSON for the figure files."""

import math

__all__ = ["fmt", "fmt_ci", "json_safe"]


def fmt(value, digits=2):
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def fmt_ci(point, ci, digits=2):
    return f"{fmt(point, digits)} [{fmt(ci['low'], digits)}, {fmt(ci['high'], digits)}]"


def json_safe(value):
    """Strict JSON: NaN (undefined) -> null, infinity (e.g. no number of seeds suffices) -> "inf"."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value
