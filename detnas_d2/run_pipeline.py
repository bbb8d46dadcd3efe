"""Run the six DetNAS steps end to end, passing each step's artifacts to the next.

    python tools/run_pipeline.py                        # the toy demo on CPU (README)
    python tools/run_pipeline.py --quick                # a few iterations per step (CI smoke test)
    python tools/run_pipeline.py --preset coco-small --num-gpus 8 --output-dir output/detnas_small
    python tools/run_pipeline.py --preset toy-retinanet --quick   # the toy steps with RetinaNet
    python tools/run_pipeline.py MODEL.DETNAS.SPACE my_space.yaml  # config options for every step

Presets: toy and toy-retinanet on the toy data; coco-small, coco-small-retinanet, voc-small,
voc-small-retinanet, coco-large and coco-large-wide, the paper's settings (docs/paper_settings.md).

Every step is the training or search command a user would type (`python -m detnas_d2.train_net` /
`detnas_d2.search_net`, as train_net.py / search_net.py; printed, and kept in
<output-dir>/<n>_<step>/command.txt), run with the installed package from the current folder; the
presets' configs are the package's (detnas_d2.config_files). A step folder from an earlier run is
emptied and the step re-run, unless --reuse is given: then a step that finished with the same command
is reused, and a stopped one continues from its last checkpoint (--resume); the log says which. The run
ends with one table (also in summary.md and summary.json): every step, its folder, its metric, and the
searched subnet's arch, FLOPs and params.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from tabulate import tabulate

from .arch_io import load_arch_record
from .data.toy import toy_root
from .output_files import EVAL_RESULTS_FILE
from .pipeline import QUICK_OVERRIDES, SEARCH, TRAIN, Step, StepFailed
from .process import Stopped, raising_stop_signals, resend_signal
from .search_space import arch_to_str

PRESETS = {
    "toy": {
        "cls_supernet": "configs/Toy/cls_supernet.yaml",
        "det_supernet": "configs/Toy/det_supernet.yaml",
        "search": "configs/Toy/search_det.yaml",
        "cls_subnet": "configs/Toy/cls_subnet.yaml",
        "det_subnet": "configs/Toy/det_subnet.yaml",
    },
    "toy-retinanet": {
        "cls_supernet": "configs/Toy/cls_supernet.yaml",
        "det_supernet": "configs/Toy/det_supernet_retinanet.yaml",
        "search": "configs/Toy/search_det_retinanet.yaml",
        "cls_subnet": "configs/Toy/cls_subnet.yaml",
        "det_subnet": "configs/Toy/det_subnet_retinanet.yaml",
    },
    # The paper's settings (docs/paper_settings.md): dataset, space, detector (Faster R-CNN FPN unless
    # named).
    "coco-small": {
        "cls_supernet": "configs/ImageNet/supernet_small.yaml",
        "det_supernet": "configs/COCO-Detection/supernet_small_FPN_1x.yaml",
        "search": "configs/COCO-Detection/search_small.yaml",
        "cls_subnet": "configs/ImageNet/subnet_small.yaml",
        "det_subnet": "configs/COCO-Detection/subnet_small_FPN_1x.yaml",
    },
    "coco-small-retinanet": {
        "cls_supernet": "configs/ImageNet/supernet_small.yaml",
        "det_supernet": "configs/COCO-Detection/supernet_small_RetinaNet_1x.yaml",
        "search": "configs/COCO-Detection/search_small_RetinaNet.yaml",
        "cls_subnet": "configs/ImageNet/subnet_small.yaml",
        "det_subnet": "configs/COCO-Detection/subnet_small_RetinaNet_1x.yaml",
    },
    "voc-small": {
        "cls_supernet": "configs/ImageNet/supernet_small.yaml",
        "det_supernet": "configs/PascalVOC-Detection/supernet_small_FPN.yaml",
        "search": "configs/PascalVOC-Detection/search_small_FPN.yaml",
        "cls_subnet": "configs/ImageNet/subnet_small.yaml",
        "det_subnet": "configs/PascalVOC-Detection/subnet_small_FPN.yaml",
    },
    "voc-small-retinanet": {
        "cls_supernet": "configs/ImageNet/supernet_small.yaml",
        "det_supernet": "configs/PascalVOC-Detection/supernet_small_RetinaNet.yaml",
        "search": "configs/PascalVOC-Detection/search_small_RetinaNet.yaml",
        "cls_subnet": "configs/ImageNet/subnet_small.yaml",
        "det_subnet": "configs/PascalVOC-Detection/subnet_small_RetinaNet.yaml",
    },
    "coco-large": {
        "cls_supernet": "configs/ImageNet/supernet_large.yaml",
        "det_supernet": "configs/COCO-Detection/supernet_large_FPN_1x.yaml",
        "search": "configs/COCO-Detection/search_large.yaml",
        "cls_subnet": "configs/ImageNet/subnet_large.yaml",
        "det_subnet": "configs/COCO-Detection/subnet_large_FPN_1x.yaml",
    },
    "coco-large-wide": {
        "cls_supernet": "configs/ImageNet/supernet_large_wide.yaml",
        "det_supernet": "configs/COCO-Detection/supernet_large_wide_FPN_1x.yaml",
        "search": "configs/COCO-Detection/search_large_wide.yaml",
        "cls_subnet": "configs/ImageNet/subnet_large_wide.yaml",
        "det_subnet": "configs/COCO-Detection/subnet_large_wide_FPN_1x.yaml",
    },
}


def build_steps(preset: str, output_dir: Path, quick: bool, opts=()):
    """The six steps of `preset` in `output_dir`; `opts` (KEY VALUE ...) go to every step, after the
    artifacts it is given and before --quick's overrides."""
    cfgs = PRESETS[preset]
    names = ["cls_supernet", "det_supernet", "search", "cls_subnet", "det_subnet", "eval"]
    d = {name: output_dir / f"{i}_{name}" for i, name in enumerate(names, start=1)}
    final = {name: d[name] / "model_final.pth" for name in names}
    arch = d["search"] / "best_arch.yaml"
    q = {name: list(opts) + (QUICK_OVERRIDES[name] if quick else []) for name in names}
    return [
        Step(
            "cls_supernet",
            "1. ImageNet supernet (random path per iteration)",
            TRAIN,
            cfgs["cls_supernet"],
            d["cls_supernet"],
            q["cls_supernet"],
            final["cls_supernet"],
        ),
        Step(
            "det_supernet",
            "2. detection fine-tuning of the supernet",
            TRAIN,
            cfgs["det_supernet"],
            d["det_supernet"],
            ["MODEL.WEIGHTS", final["cls_supernet"]] + q["det_supernet"],
            final["det_supernet"],
        ),
        Step(
            "search",
            "3. evolutionary search (bbox AP under a FLOPs limit)",
            SEARCH,
            cfgs["search"],
            d["search"],
            ["MODEL.WEIGHTS", final["det_supernet"]] + q["search"],
            arch,
        ),
        Step(
            "cls_subnet",
            "4. ImageNet retraining of the searched subnet",
            TRAIN,
            cfgs["cls_subnet"],
            d["cls_subnet"],
            ["MODEL.DETNAS.ARCH", arch] + q["cls_subnet"],
            final["cls_subnet"],
        ),
        Step(
            "det_subnet",
            "5. detection fine-tuning of the subnet",
            TRAIN,
            cfgs["det_subnet"],
            d["det_subnet"],
            ["MODEL.DETNAS.ARCH", arch, "MODEL.WEIGHTS", final["cls_subnet"]] + q["det_subnet"],
            final["det_subnet"],
        ),
        Step(
            "eval",
            "6. evaluation of the subnet detector",
            TRAIN,
            cfgs["det_subnet"],
            d["eval"],
            ["MODEL.DETNAS.ARCH", arch, "MODEL.WEIGHTS", final["det_subnet"]] + q["eval"],
            d["eval"] / EVAL_RESULTS_FILE,
            eval_only=True,
        ),
    ]


def summarize(steps, seconds, output_dir: Path) -> str:
    rows = []
    for step, secs in zip(steps, seconds):
        metric, value = step.metric()
        rows.append(
            {
                "step": step.title,
                "output": str(step.out_dir),
                "metric": metric,
                "value": value,
                "seconds": round(secs, 1),
            }
        )
    best = load_arch_record(str(steps[2].artifact))
    subnet = {
        "space": best.space,
        "arch": list(best.arch),
        "arch_file": str(steps[2].artifact),
        "flops": best.metadata.get("flops"),
        "params": best.metadata.get("params"),
    }
    (output_dir / "summary.json").write_text(
        json.dumps({"steps": rows, "searched_subnet": subnet}, indent=2)
    )
    table = tabulate(
        [
            [
                r["step"],
                r["output"],
                r["metric"],
                "n/a" if r["value"] is None else f"{r['value']:.2f}",
                f"{r['seconds']:.0f}",
            ]
            for r in rows
        ],
        headers=["step", "output folder", "metric", "value", "seconds"],
        tablefmt="pipe",
    )
    text = (
        f"{table}\n\nsearched subnet ({subnet['space']} space, {subnet['arch_file']}):\n"
        f"  arch {arch_to_str(subnet['arch'])}\n"
        f"  FLOPs {subnet['flops'] / 1e6:.2f}M (backbone, at the search's input size), "
        f"params {subnet['params'] / 1e6:.3f}M\n"
    )
    (output_dir / "summary.md").write_text(text)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="toy")
    parser.add_argument("--output-dir", default="output/pipeline")
    parser.add_argument(
        "--num-gpus", type=int, default=1, help="processes per step (without CUDA: CPU, gloo)"
    )
    parser.add_argument("--quick", action="store_true", help="a few iterations per step")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse finished steps, continue the stopped one (same commands)",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="KEY VALUE config options for every step, e.g. MODEL.DETNAS.SPACE my_space.yaml",
    )
    args = parser.parse_args(argv)
    if len(args.opts) % 2:
        parser.error(
            f"config options come in KEY VALUE pairs; got {len(args.opts)} words: "
            f"{' '.join(args.opts)}"
        )
    if args.num_gpus < 1:
        parser.error(f"--num-gpus {args.num_gpus}: the processes of each step, at least 1")
    output_dir = Path(args.output_dir).resolve()
    if output_dir.exists() and not output_dir.is_dir():
        parser.error(f"--output-dir {output_dir} is a file: give a folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.preset.startswith("toy"):
        print(
            f"toy datasets: cache at {toy_root()} (generated on first use, reused afterwards)",
            flush=True,
        )
    steps = build_steps(args.preset, output_dir, args.quick, args.opts)
    start = time.time()
    try:
        with raising_stop_signals():  # SIGTERM too: the running step gets it and time to stop
            seconds = [
                step.run(args.num_gpus, args.reuse, log=lambda m: print(m, flush=True))
                for step in steps
            ]
    except StepFailed as e:
        sys.exit(str(e))
    except Stopped as stop:
        print(
            f"stopped; the finished steps are kept in {output_dir} (--reuse continues)", flush=True
        )
        resend_signal(stop.signum)
    print(
        f"\nDetNAS pipeline ({args.preset}{', quick' if args.quick else ''}) finished in "
        f"{time.time() - start:.0f}s\n"
    )
    print(summarize(steps, seconds, output_dir))


if __name__ == "__main__":
    main()
