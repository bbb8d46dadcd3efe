#!/usr/bin/env python
"""Training iteration time: supernet detector vs the standalone subnet of the same arch, side by side.

Both are DetNASTrainers on the toy detection configs (configs/Toy/det_supernet.yaml, det_subnet.yaml;
the subnet's arch is the one of det_subnet.yaml, the supernet runs that same path). Iterations alternate
between them (after warm-up), each a full `run_step` (data, forward, backward, SGD step, metrics), so
both see the same machine load. A third column times the supernet as it trains: RandomPathHook draws a
new path (FLOPs-uniform) before every step, so its cost varies with the path.

    python benchmarks/train_iteration.py [--iters 30] [--warmup 5] [--threads 1] [--batch 4]
"""

import argparse
import os
import statistics
import tempfile
import time

import detnas_d2  # noqa: F401  (first: compat shims, registrations)

import torch
from detectron2.utils.events import EventStorage

from detnas_d2.arch_io import load_arch
from detnas_d2.config import get_detnas_cfg
from detnas_d2.engine import DetNASTrainer
from detnas_d2.modeling import set_model_arch
from detnas_d2.search_space import arch_to_str, space_from_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_trainer(config, out_dir, batch):
    cfg = get_detnas_cfg(
        os.path.join(REPO, "configs", "Toy", config),
        ["OUTPUT_DIR", out_dir, "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", str(batch)],
    )
    return DetNASTrainer(cfg)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iters", type=int, default=30, help="timed iterations per variant")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        subnet = build_trainer("det_subnet.yaml", os.path.join(tmp, "sub"), args.batch)
        supernet = build_trainer("det_supernet.yaml", os.path.join(tmp, "super"), args.batch)
        arch = load_arch(subnet.cfg.MODEL.DETNAS.ARCH, space_from_cfg(subnet.cfg))
        path_hook = supernet._hooks[0]
        path_hook.before_train()

        def subnet_step():
            subnet.run_step()

        def supernet_fixed_step():
            set_model_arch(supernet.model, arch)
            supernet.run_step()

        def supernet_sampled_step():
            path_hook.before_step()
            supernet.run_step()

        variants = {
            "subnet": subnet_step,
            "supernet, same arch": supernet_fixed_step,
            "supernet, sampled paths": supernet_sampled_step,
        }
        times = {name: [] for name in variants}
        with EventStorage(0) as storage:
            for trainer in (subnet, supernet):
                trainer.storage = storage
            for i in range(args.warmup + args.iters):
                storage.iter = subnet.iter = supernet.iter = i
                for name, step in variants.items():
                    start = time.perf_counter()
                    step()
                    if i >= args.warmup:
                        times[name].append(time.perf_counter() - start)

    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"Toy detection, batch {args.batch}, {args.threads} thread(s), {args.iters} iterations each "
        f"(interleaved), arch {arch_to_str(arch)}"
    )
    print(f"{'variant':<26}{'median s/iter':>14}{'mean s/iter':>13}{'vs subnet':>11}")
    for name, t in times.items():
        print(
            f"{name:<26}{median[name]:>14.4f}{statistics.mean(t):>13.4f}{median[name] / median['subnet']:>10.2f}x"
        )


if __name__ == "__main__":
    main()
