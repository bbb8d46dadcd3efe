"""Writing a tracing adapter to TorchScript or ONNX, and running the written file on CPU."""

import inspect
import os
import warnings
from typing import Optional, Tuple

import torch
from torch import nn

from .adapters import DetectorAdapter, ExportError

__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "as_tuple",
    "exported_file",
    "export_torchscript",
    "export_onnx",
    "load_exported",
]

DEFAULT_OPSET = 17  # >= 16: ROIAlign(aligned=True) exports exactly from opset 16 on
FORMATS = ("torchscript", "onnx")


def as_tuple(outputs) -> Tuple[torch.Tensor, ...]:
    """An adapter's outputs (a tensor, a tuple or a list) as a tuple."""
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def exported_file(output_dir: str, fmt: str) -> str:
    """Where an export of format `fmt` is written in `output_dir`: model.ts or model.onnx."""
    return os.path.join(output_dir, "model.ts" if fmt == "torchscript" else "model.onnx")


def export_torchscript(
    adapter: nn.Module, example: torch.Tensor, path: str, method: str = "tracing"
) -> str:
    """Trace (or script) `adapter` and save it to `path`; returns `path`."""
    if method == "tracing":
        with torch.no_grad(), warnings.catch_warnings():
            # TracerWarnings of Detectron2's shape arithmetic: the parity check is the test
            warnings.simplefilter("ignore")
            ts = torch.jit.trace(adapter, (example,), check_trace=False, strict=False)
    elif method == "scripting":
        if isinstance(adapter, DetectorAdapter):
            raise ExportError(
                "--export-method scripting supports --backbone-only and classifiers: Detectron2 v0.6 scripts "
                "detectors only through detectron2.export, which fails to import on torch 2; use tracing"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ts = torch.jit.script(adapter)
        except Exception as e:  # torch.jit raises many types; report it as an export error
            raise ExportError(
                f"torch.jit.script failed ({type(e).__name__}: {e}); use --export-method tracing"
            ) from e
    else:
        raise ExportError(f"unknown export method '{method}': tracing or scripting")
    torch.jit.save(ts, path)
    return path


def export_onnx(
    adapter: nn.Module, example: torch.Tensor, path: str, opset: int = DEFAULT_OPSET
) -> str:
    """Export `adapter` to ONNX at `path` (torch's TorchScript-based exporter, dynamic axes); returns
    `path`."""
    kwargs = dict(
        opset_version=opset,
        input_names=list(adapter.input_names),
        output_names=list(adapter.output_names),
        dynamic_axes=adapter.dynamic_axes,
        do_constant_folding=True,
    )
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        # the tracing exporter: Detectron2's post-processing is data-dependent
        kwargs["dynamo"] = False
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(adapter, (example,), path, **kwargs)
    return path


def load_exported(path: str, fmt: str, num_threads: Optional[int] = None):
    """A callable running the exported model at `path` (`fmt` torchscript or onnx) on CPU: it takes
    the adapter's input tensor and returns a tuple of tensors."""
    if fmt == "torchscript":
        module = torch.jit.load(path, map_location="cpu").eval()

        def run(x):
            with torch.no_grad():
                return as_tuple(module(x))

        return run
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ExportError(
                "checking an ONNX export needs onnxruntime: pip install onnxruntime"
            ) from e
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name

        def run(x):
            return tuple(
                torch.from_numpy(o)
                for o in session.run(None, {input_name: x.detach().cpu().numpy()})
            )

        return run
    raise ExportError(f"unknown format '{fmt}': torchscript or onnx")
