"""Parity of an exported model with PyTorch.

An output passes when `max|exported - pytorch| <= rtol * max(max|pytorch|, 1e-6)` (error relative to the
largest magnitude of that output; default rtol 1e-4) and shapes agree; integer outputs (classes) must be
equal. Detections are compared after matching each PyTorch detection to an exported one of the same
class (nearest box): tied scores may come out in another order. A different number of detections is a
mismatch.
"""

from typing import Dict, Optional, Sequence, Tuple

import torch

__all__ = ["DEFAULT_RTOL", "compare_outputs", "non_finite_output"]

DEFAULT_RTOL = 1e-4
_SCALE_FLOOR = 1e-6


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> Tuple[float, float]:
    """(max abs difference, that difference / max(max|ref|, 1e-6))."""
    if ref.numel() == 0:
        return 0.0, 0.0
    diff = (got.double() - ref.double()).abs().max().item()
    return diff, diff / max(ref.double().abs().max().item(), _SCALE_FLOOR)


def _match_detections(ref, got):
    """Permutation of `got`'s detections matching `ref`'s (same class, nearest box), or None."""
    ref_boxes, ref_scores, ref_classes = ref
    got_boxes, got_scores, got_classes = got
    n = ref_boxes.shape[0]
    cost = torch.cdist(ref_boxes.double(), got_boxes.double(), p=float("inf"))
    cost = cost + (ref_scores.double()[:, None] - got_scores.double()[None, :]).abs() * 1e3
    cost[ref_classes[:, None] != got_classes[None, :]] = float("inf")
    perm, used = [], torch.zeros(n, dtype=torch.bool)
    for i in torch.argsort(ref_scores, descending=True, stable=True).tolist():
        row = cost[i].masked_fill(used, float("inf"))
        j = int(row.argmin())
        if not torch.isfinite(row[j]):
            return None
        used[j] = True
        perm.append((i, j))
    order = torch.empty(n, dtype=torch.long)
    for i, j in perm:
        order[i] = j
    return order


def _tie_hint(scores: torch.Tensor, rtol: float) -> str:
    """A note when PyTorch's detection scores tie within the tolerance (untrained heads do): the order of
    tied candidates, and with it top-k and NMS, may legitimately differ between backends."""
    if scores.numel() < 2:
        return ""
    s = torch.sort(scores.double()).values
    ties = int(((s[1:] - s[:-1]) <= rtol * max(s.abs().max().item(), _SCALE_FLOOR)).sum())
    if ties == 0:
        return ""
    return (
        f"; {ties} of {scores.numel()} PyTorch scores tie within the tolerance (untrained heads?): tied "
        "candidates may be ordered differently, which changes top-k and NMS"
    )


def compare_outputs(
    ref: Sequence[torch.Tensor],
    got: Sequence[torch.Tensor],
    names: Sequence[str],
    detections: bool = False,
    rtol: float = DEFAULT_RTOL,
) -> Dict:
    """Compare the exported model's outputs `got` with PyTorch's `ref` (see the module doc).

    Returns {"ok": bool, "outputs": {name: {"max_abs": ..., "rel": ..., "shape": ...}},
    "problem": str|None}.
    """
    ref, got = [t.detach().cpu() for t in ref], [t.detach().cpu() for t in got]
    report = {"ok": True, "outputs": {}, "problem": None}
    if len(ref) != len(got):
        return {**report, "ok": False, "problem": f"{len(got)} outputs, PyTorch has {len(ref)}"}
    shapes = [(tuple(r.shape), tuple(g.shape)) for r, g in zip(ref, got)]
    bad = [(n, s) for n, s in zip(names, shapes) if s[0] != s[1]]
    if bad:
        name, (rs, gs) = bad[0]
        if detections:
            what = f"{gs[0]} detections, PyTorch {rs[0]}" + _tie_hint(ref[1], rtol)
        else:
            what = f"shape {gs}, PyTorch {rs}"
        return {**report, "ok": False, "problem": f"output '{name}': {what}"}
    if detections and ref[0].shape[0] > 0:
        order = _match_detections(ref, got)
        if order is None:
            return {
                **report,
                "ok": False,
                "problem": "the detections differ (some have no exported detection "
                "of the same class)" + _tie_hint(ref[1], rtol),
            }
        got = [g[order] for g in got]
    for name, r, g in zip(names, ref, got):
        if r.dtype.is_floating_point:
            diff, rel = _rel_err(g, r)
            ok = rel <= rtol
        else:
            diff = float((g.long() - r.long()).abs().max().item()) if r.numel() else 0.0
            rel, ok = (0.0 if diff == 0 else float("inf")), diff == 0
        report["outputs"][name] = {"max_abs": diff, "rel": rel, "shape": list(r.shape)}
        if not ok and report["ok"]:
            report["ok"] = False
            report["problem"] = (
                f"output '{name}': max |exported - pytorch| = {diff:.3g}, {rel:.3g} of its largest magnitude "
                f"(tolerance {rtol:g})"
            )
    return report


def non_finite_output(outputs: Sequence[torch.Tensor], names: Sequence[str]) -> Optional[str]:
    """The name of the first floating-point output holding NaN or Inf, else None."""
    for name, out in zip(names, outputs):
        if out.dtype.is_floating_point and not bool(torch.isfinite(out).all()):
            return name
    return None
