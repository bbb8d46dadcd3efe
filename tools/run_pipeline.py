#!/usr/bin/env python
"""Run the six DetNAS steps end to end, passing each step's artifacts to the next.

    python tools/run_pipeline.py                        # the toy demo on CPU (README)
    python tools/run_pipeline.py --quick                # a few iterations per step (CI smoke test)
    python tools/run_pipeline.py --preset coco-small --num-gpus 8 --output-dir output/detnas_small

Every step is the same `train_net.py` / `search_net.py` command a user would type; the commands are
printed and kept in <output-dir>/<step>/command.txt. A step whose folder holds a finished result is
re-run from scratch (its folder is emptied, and the script says so) unless --reuse is given, in which
case it is reused and the script says so. The end is one table (also in summary.json / summary.md):
every step, its folder, its metric, and the searched arch with its FLOPs and params.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# step -> (title, script, config, metric key in eval_results.json); per preset.
PRESETS = {
    "toy": {
        "cls_supernet": "configs/Toy/cls_supernet.yaml",
        "det_supernet": "configs/Toy/det_supernet.yaml",
        "search": "configs/Toy/search_det.yaml",
        "cls_subnet": "configs/Toy/cls_subnet.yaml",
        "det_subnet": "configs/Toy/det_subnet.yaml",
    },
    "coco-small": {
        "cls_supernet": "configs/ImageNet/supernet_small.yaml",
        "det_supernet": "configs/COCO-Detection/supernet_small_FPN_1x.yaml",
        "search": "configs/COCO-Detection/search_small.yaml",
        "cls_subnet": "configs/ImageNet/subnet_small.yaml",
        "det_subnet": "configs/COCO-Detection/subnet_small_FPN_1x.yaml",
    },
}

# --quick: a few iterations per step; enough to pass every artifact along, not to learn anything.
QUICK = {
    "cls_supernet": ["SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "0"],
    "det_supernet": ["SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "(3,)"],
    "search": ["SEARCH.POPULATION", "3", "SEARCH.GENERATIONS", "2", "SEARCH.TOPK", "2",
               "SEARCH.NUM_MUTATION", "1", "SEARCH.NUM_CROSSOVER", "1", "SEARCH.MAX_CANDIDATES", "6",
               "SEARCH.BN_RECALIB_IMAGES", "16", "SEARCH.EVAL_IMAGES", "8"],
    "cls_subnet": ["SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "0"],
    "det_subnet": ["SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "(3,)"],
}

DONE_FILE = "step_done.json"


class Step:
    def __init__(self, number, name, title, script, config, out_dir, opts, artifact, eval_only=False):
        self.number, self.name, self.title = number, name, title
        self.script, self.config, self.out_dir = script, config, out_dir
        self.opts, self.artifact, self.eval_only = opts, artifact, eval_only

    def command(self, num_gpus):
        cmd = [sys.executable, str(ROOT / self.script), "--config-file", str(ROOT / self.config),
               "--num-gpus", str(num_gpus)]
        if self.eval_only:
            cmd.append("--eval-only")
        return cmd + self.opts + ["OUTPUT_DIR", str(self.out_dir)]


def build_steps(args):
    cfgs = PRESETS[args.preset]
    out = Path(args.output_dir).resolve()
    d = {name: out / f"{i}_{name}" for i, name in enumerate(
        ["cls_supernet", "det_supernet", "search", "cls_subnet", "det_subnet", "eval"], start=1)}
    best_arch = d["search"] / "best_arch.yaml"
    q = (lambda name: QUICK[name]) if args.quick else (lambda name: [])
    final = "model_final.pth"
    return [
        Step(1, "cls_supernet", "ImageNet supernet (random path per iteration)", "train_net.py",
             cfgs["cls_supernet"], d["cls_supernet"], q("cls_supernet"), d["cls_supernet"] / final),
        Step(2, "det_supernet", "detection supernet fine-tuning", "train_net.py", cfgs["det_supernet"],
             d["det_supernet"], ["MODEL.WEIGHTS", str(d["cls_supernet"] / final)] + q("det_supernet"),
             d["det_supernet"] / final),
        Step(3, "search", "evolutionary search (bbox AP, FLOPs limit)", "search_net.py", cfgs["search"],
             d["search"], ["MODEL.WEIGHTS", str(d["det_supernet"] / final)] + q("search"), best_arch),
        Step(4, "cls_subnet", "ImageNet retraining of the searched subnet", "train_net.py",
             cfgs["cls_subnet"], d["cls_subnet"], ["MODEL.DETNAS.ARCH", str(best_arch)] + q("cls_subnet"),
             d["cls_subnet"] / final),
        Step(5, "det_subnet", "detection fine-tuning of the subnet", "train_net.py", cfgs["det_subnet"],
             d["det_subnet"], ["MODEL.DETNAS.ARCH", str(best_arch), "MODEL.WEIGHTS",
                               str(d["cls_subnet"] / final)] + q("det_subnet"), d["det_subnet"] / final),
        Step(6, "eval", "evaluation of the subnet detector", "train_net.py", cfgs["det_subnet"], d["eval"],
             ["MODEL.DETNAS.ARCH", str(best_arch), "MODEL.WEIGHTS", str(d["det_subnet"] / final)],
             d["eval"] / "eval_results.json", eval_only=True),
    ]


def read_metric(step):
    """(name, value) of the step's headline metric, read from what the step wrote."""
    if step.name == "search":
        import yaml

        best = yaml.safe_load(step.artifact.read_text())
        return "best bbox AP", best.get("score")
    results = json.loads((step.out_dir / "eval_results.json").read_text())
    if "classification" in results:
        return "top-1", results["classification"]["top1"]
    return "bbox AP", results["bbox"]["AP"]


def run_step(step, args, log):
    done = step.out_dir / DONE_FILE
    if step.out_dir.exists():
        if args.reuse and done.exists() and step.artifact.exists():
            log(f"[step {step.number}] reusing {step.out_dir} (finished {json.loads(done.read_text())['finished']})")
            return
        log(f"[step {step.number}] removing the previous output in {step.out_dir}")
        shutil.rmtree(step.out_dir)
    step.out_dir.mkdir(parents=True)
    cmd = step.command(args.num_gpus)
    (step.out_dir / "command.txt").write_text(" ".join(cmd) + "\n")
    log(f"[step {step.number}] {step.title}\n  $ {' '.join(cmd)}")
    start = time.time()
    with open(step.out_dir / "stdout.txt", "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not step.artifact.exists():
        tail = (step.out_dir / "stdout.txt").read_text().splitlines()[-25:]
        raise SystemExit(
            f"[step {step.number}] failed (exit {proc.returncode}); earlier steps' outputs are kept.\n"
            f"Last lines of {step.out_dir / 'stdout.txt'}:\n" + "\n".join(tail)
        )
    seconds = time.time() - start
    done.write_text(json.dumps({"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": seconds}))
    log(f"[step {step.number}] done in {seconds:.0f}s")


def summarize(steps, out_dir):
    import yaml

    rows = []
    for step in steps:
        metric, value = read_metric(step)
        seconds = json.loads((step.out_dir / DONE_FILE).read_text())["seconds"]
        rows.append({"step": step.number, "what": step.title, "output": str(step.out_dir),
                     "metric": metric, "value": value, "seconds": round(seconds, 1)})
    best = yaml.safe_load(steps[2].artifact.read_text())
    subnet = {k: best.get(k) for k in ("space", "flops", "params", "score")}
    subnet["arch"] = best.get("arch")
    subnet["arch_file"] = str(steps[2].artifact)
    summary = {"steps": rows, "searched_subnet": subnet}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))

    from tabulate import tabulate

    table = tabulate(
        [[r["step"], r["what"], r["output"], r["metric"],
          "n/a" if r["value"] is None else f"{r['value']:.2f}", r["seconds"]] for r in rows],
        headers=["step", "what", "output folder", "metric", "value", "seconds"], tablefmt="pipe",
    )
    arch_line = (f"searched subnet ({subnet['space']} space): FLOPs {subnet['flops'] / 1e6:.2f}M, "
                 f"params {subnet['params'] / 1e6:.3f}M, arch {', '.join(map(str, subnet['arch']))}")
    text = table + "\n\n" + arch_line + "\n"
    (out_dir / "summary.md").write_text(text)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="toy")
    parser.add_argument("--output-dir", default="output/pipeline")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per step (CPU: gloo)")
    parser.add_argument("--quick", action="store_true", help="a few iterations per step")
    parser.add_argument("--reuse", action="store_true", help="reuse steps that finished before")
    args = parser.parse_args(argv)

    out_dir = Path(args.output_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    if args.preset == "toy":
        sys.path.insert(0, str(ROOT))
        from detnas_d2.data.toy import toy_root

        log(f"toy datasets: cache at {toy_root()} (generated on first use, reused after)")
    steps = build_steps(args)
    start = time.time()
    for step in steps:
        run_step(step, args, log)
    log(f"\nDetNAS pipeline ({args.preset}{', quick' if args.quick else ''}) finished in "
        f"{time.time() - start:.0f}s\n")
    log(summarize(steps, out_dir))


if __name__ == "__main__":
    main()
