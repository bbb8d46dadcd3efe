"""Part "export": the subnet detector of configs/COCO-Detection/subnet_small_FPN_1x.yaml, traced on the
check's device with its BatchNorms folded, to TorchScript and ONNX, with the export library's parity
check (detections matched by class and box, max|exported - pytorch| <= 1e-4 x max|pytorch| per output).

TorchScript: traced on the device and run there, against the unfolded PyTorch model on the same device.
ONNX: exported from the model on the device, run by onnxruntime on the CPU, against the PyTorch model
on the CPU (comparing across devices would measure the device's arithmetic, e.g. TF32 convolutions,
not the export). The heads get random weights first: untrained heads score every box alike, and ties
would make the detections' order arbitrary.
"""

import os

import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from torch import nn

from ..export import (
    DEFAULT_OPSET,
    DEFAULT_RTOL,
    adapter_inputs,
    compare_outputs,
    export_onnx,
    export_torchscript,
    load_exported,
    make_adapter,
)
from ..input_size import parse_input_size
from ..modeling.bn_fold import fold_batchnorm
from ..search_space import arch_to_str, space_from_cfg
from .full_scale import TASKS, fixed_arch, load_cfg
from .results import CheckContext, PartReport

__all__ = ["run", "randomize_heads"]

_IMAGES = {
    False: "800x1067",
    True: "64x96",
}  # test-time inputs (3, H, W), as resized by the test transform


def randomize_heads(model: nn.Module, seed: int = 0, head_std: float = 0.05):
    """Random weights outside the backbone and non-trivial BN statistics everywhere."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("backbone"):
                p.copy_(torch.randn(p.shape, generator=g) * head_std)
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)):
                n = m.running_mean.shape[0]
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)


def _outputs(adapter, inputs, device):
    with torch.no_grad():
        return [tuple(o.cpu() for o in adapter(x.to(device))) for x in inputs]


def run(ctx: CheckContext, report: PartReport):
    coco = next(t for t in TASKS if t.name == "coco")
    cfg = load_cfg(ctx, coco.subnet_config, coco.quick_opts, str(ctx.folder("export")))
    arch = fixed_arch(space_from_cfg(cfg))
    cfg.MODEL.DETNAS.ARCH = arch_to_str(arch)
    cfg.MODEL.DEVICE = "cpu"
    # TEST.DETECTIONS_PER_IMAGE detections per image, all compared
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    model = build_model(cfg).eval()
    randomize_heads(model)
    g = torch.Generator().manual_seed(0)
    images = [
        torch.randint(
            0, 256, (3, *parse_input_size(_IMAGES[ctx.quick])), generator=g, dtype=torch.uint8
        )
        for _ in range(2)
    ]
    reference = make_adapter(model)
    inputs = adapter_inputs(model, reference, images)
    names = list(reference.output_names)
    cpu_reference = _outputs(reference, inputs, "cpu")
    model.to(ctx.device)
    device_reference = _outputs(reference, inputs, ctx.device)
    folded, n_folded = fold_batchnorm(model)
    exported = make_adapter(folded)
    folder = str(ctx.folder("export"))
    rows = []
    for fmt in ("torchscript", "onnx"):
        ctx.log(f"    {fmt} ...")
        path = os.path.join(folder, "model.ts" if fmt == "torchscript" else "model.onnx")
        example = inputs[0].to(ctx.device)
        if fmt == "torchscript":
            export_torchscript(exported, example, path)
            traced = torch.jit.load(path, map_location=ctx.device).eval()
            with torch.no_grad():
                got = [tuple(o.cpu() for o in traced(x.to(ctx.device))) for x in inputs]
            expected, where = device_reference, ctx.device.type
        else:
            export_onnx(exported, example, path, DEFAULT_OPSET)
            session = load_exported(path, "onnx")
            got = [session(x) for x in inputs]
            expected, where = cpu_reference, "cpu (onnxruntime)"
        reports = [compare_outputs(e, g, names, True, DEFAULT_RTOL) for e, g in zip(expected, got)]
        worst = max((v["rel"] for r in reports for v in r["outputs"].values()), default=0.0)
        detections = [int(e[0].shape[0]) for e in expected]
        ok = all(r["ok"] for r in reports)
        problem = next((r["problem"] for r in reports if not r["ok"]), "")
        report.data[fmt] = {
            "ok": ok,
            "runs_on": where,
            "largest_relative_difference": worst,
            "detections": detections,
            "problem": problem,
            "file_mb": round(os.path.getsize(path) / 2**20, 2),
        }
        report.check(
            f"{fmt}: parity with PyTorch on {where}",
            ok,
            f"largest relative difference {worst:.2e}" + (f"; {problem}" if problem else ""),
        )
        report.check(
            f"{fmt}: the sample images give detections", min(detections) > 0, f"{detections}"
        )
        rows.append(
            [
                fmt,
                where,
                ", ".join(map(str, detections)),
                f"{worst:.2e}",
                "ok" if ok else f"FAILED: {problem}",
            ]
        )
    report.data.update(
        {
            "config": coco.subnet_config,
            "arch": arch_to_str(arch),
            "bn_folded": n_folded,
            "input": "x".join(str(s) for s in inputs[0].shape),
        }
    )
    report.table(
        f"Export of {coco.subnet_config} (input {report.data['input']}, {n_folded} BatchNorms folded)",
        ["format", "runs on", "detections", "largest relative difference", "parity"],
        rows,
    )
