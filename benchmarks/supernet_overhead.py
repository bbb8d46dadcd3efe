"""Supernet overhead: forward+backward of ShuffleNetV2Supernet set to an arch vs the standalone subnet.

Goal: the supernet costs at most 5% more than the subnet of the same arch. Both run in train mode on the
same inputs; timings are interleaved (alternating order every round) in one run, so machine load affects
both alike. Cases: detection-like (backbone only, batch 2 at 320x320) and classification (backbone +
ClassifierHead at 224x224), plus a tiny input where per-module Python dispatch dominates the time.

    python benchmarks/supernet_overhead.py [--device cuda] [--repeats 30] [--cls-batch 16] [--threads 1]

On a shared CPU, `--threads 1` gives much steadier timings than torch's default thread count.
"""

import argparse
import random
import statistics
import time

import detnas_d2  # noqa: F401  (compat shims)

import torch

from detnas_d2.modeling import (
    ClassifierHead,
    ShuffleNetV2Subnet,
    ShuffleNetV2Supernet,
    subnet_state_dict_from_supernet,
)
from detnas_d2.search_space import arch_to_str, get_space


def _step(backbone, head, x):
    features = backbone(x)
    loss = (
        head(features["res5"]).mean()
        if head is not None
        else sum(f.mean() for f in features.values())
    )
    loss.backward()


def _time_once(backbone, head, x, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    _step(backbone, head, x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _zero_grads(*modules):
    for module in modules:
        if module is not None:
            module.zero_grad(set_to_none=True)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--space", default="small")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--det-batch", type=int, default=2)
    parser.add_argument("--det-size", type=int, default=320)
    parser.add_argument("--cls-batch", type=int, default=16)
    parser.add_argument("--cls-size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for torch; 0: torch's default"
    )
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    space = get_space(args.space, args.width)
    arch = space.random_arch(random.Random(args.seed))
    supernet = ShuffleNetV2Supernet(space).to(device).train()
    supernet.set_arch(arch)
    subnet = ShuffleNetV2Subnet(space, arch).to(device).train()
    subnet.load_state_dict(subnet_state_dict_from_supernet(supernet.state_dict(), space, arch))
    print(
        f"space {space.name} width {space.width_mult}, arch {arch_to_str(arch)}, device {device}, "
        f"torch threads {torch.get_num_threads()}"
    )

    cases = [
        ("dispatch-bound 1x3x64x64", None, torch.randn(1, 3, 64, 64, device=device)),
        (
            f"detection  {args.det_batch}x3x{args.det_size}x{args.det_size}",
            None,
            torch.randn(args.det_batch, 3, args.det_size, args.det_size, device=device),
        ),
        (
            f"classify   {args.cls_batch}x3x{args.cls_size}x{args.cls_size} +head",
            "head",
            torch.randn(args.cls_batch, 3, args.cls_size, args.cls_size, device=device),
        ),
    ]
    rows = []
    for name, with_head, x in cases:
        heads = {
            "supernet": ClassifierHead(space.stage_out[-1], 1000).to(device) if with_head else None,
            "subnet": ClassifierHead(space.stage_out[-1], 1000).to(device) if with_head else None,
        }
        models = {"supernet": supernet, "subnet": subnet}
        times = {"supernet": [], "subnet": []}
        for round_idx in range(args.warmup + args.repeats):
            order = ["supernet", "subnet"] if round_idx % 2 == 0 else ["subnet", "supernet"]
            for key in order:
                _zero_grads(models[key], heads[key])
                elapsed = _time_once(models[key], heads[key], x, device)
                if round_idx >= args.warmup:
                    times[key].append(elapsed)
        sup, sub = statistics.median(times["supernet"]), statistics.median(times["subnet"])
        rows.append((name, sub, sup, sup / sub, min(times["supernet"]) / min(times["subnet"])))

    print(f"\nforward+backward, median of {args.repeats} interleaved runs (ms)")
    print(f"{'case':<42}{'subnet':>10}{'supernet':>10}{'ratio':>8}{'ratio(min)':>12}")
    for name, sub, sup, ratio, ratio_min in rows:
        print(f"{name:<42}{sub * 1e3:>10.1f}{sup * 1e3:>10.1f}{ratio:>8.3f}{ratio_min:>12.3f}")


if __name__ == "__main__":
    main()
