"""Latency table accuracy and BN folding speed-up, measured side by side in one run.

1. Predicted vs measured end-to-end backbone latency of random archs: the table is calibrated on the
   first `--fit-archs` (a line through their measured backbones against the table's sums,
   detnas_d2/latency/calibration.py), and the other `--archs` are held out of the fit: their error before
   (the table's sum: stem + every layer's chosen block) and after the calibration. Goal on CPU: mean
   absolute error <= 5%, worst <= 10%.
2. The same backbones with BatchNorms folded into the convs (detnas_d2.modeling.bn_fold) vs
   unfolded, eval mode: speed ratio unfolded / folded.

Every module and every backbone (folded and unfolded) is timed in one round-robin (one timing of each
per round, the median of `--repeats` rounds), so that a load change on a shared machine hits all of
them alike. Each timing reads two clocks: wall time (perf_counter, the latency) and the thread's CPU
time, which does not count the time other processes take from a shared CPU (valid with one thread).

    python benchmarks/latency_table.py [--input-size 224x224] [--fit-archs 12] [--archs 20] [--repeats 30]
    python benchmarks/latency_table.py --device cuda --threads 0
"""

import argparse
import random
import statistics
import time

import detnas_d2  # noqa: F401  (compat shims)

import torch

from detnas_d2.input_size import parse_input_size
from detnas_d2.latency import LatencyTable
from detnas_d2.latency.calibration import CalibrationError
from detnas_d2.latency.timing import (
    blocks_and_inputs,
    default_min_repeat_ms,
    device_name,
    measure_clocks,
    table_meta,
)
from detnas_d2.modeling import ShuffleNetV2Subnet
from detnas_d2.modeling.bn_fold import fold_batchnorm
from detnas_d2.search_space import arch_to_str, get_space


def kendall_tau(a, b):
    """Kendall's tau-a of two equally long sequences (ties count as neither concordant nor discordant)."""
    n, s = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += ((a[i] > a[j]) - (a[i] < a[j])) * ((b[i] > b[j]) - (b[i] < b[j]))
    return 2 * s / (n * (n - 1)) if n > 1 else float("nan")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--space", default="small")
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--input-size", default="224x224")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--fit-archs", type=int, default=12, help="archs the calibration is fitted on"
    )
    parser.add_argument("--archs", type=int, default=20, help="archs held out of the fit")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    space = get_space(args.space, args.width_mult)
    size = parse_input_size(args.input_size)
    clocks = ["wall"] + (["cpu"] if device.type == "cpu" and torch.get_num_threads() == 1 else [])
    min_repeat_ms = default_min_repeat_ms(device)

    image, stem, blocks, inputs, _ = blocks_and_inputs(
        space, size, args.batch, device, "BN", True, args.seed
    )
    entries = [(stem, image)] + [
        (b, inputs[i]) for i, choices in enumerate(blocks) for b in choices
    ]
    rng = random.Random(args.seed)
    archs = [space.random_arch(rng) for _ in range(args.fit_archs + args.archs)]
    folded, unfolded = [], []
    for arch in archs:
        model = ShuffleNetV2Subnet(space, arch).to(device).eval()
        with torch.no_grad():  # non-trivial statistics, so that folding changes the weights
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_var.uniform_(0.5, 1.5)
                    m.running_mean.uniform_(-0.1, 0.1)
        unfolded.append(model)
        folded.append(fold_batchnorm(model)[0])
    n_table = len(entries)
    entries += [(m, image) for m in folded] + [(m, image) for m in unfolded]

    print(
        f"{space.name} space x{space.width_mult}, input {size[0]}x{size[1]}, batch {args.batch}, {device.type} "
        f"({device_name(device)}), {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"Timing {n_table} table modules and {len(archs)} backbones ({args.fit_archs} to fit the calibration, "
        f"{args.archs} held out) folded + unfolded, round-robin: "
        f"{args.warmup} warm-up, median of {args.repeats}; clocks: {', '.join(clocks)}"
    )
    t0 = time.perf_counter()
    results = measure_clocks(entries, device, args.warmup, args.repeats, min_repeat_ms, clocks)
    print(f"measured in {time.perf_counter() - t0:.0f} s\n")

    summary = {}
    for clock in clocks:
        times = results[clock]
        meta = table_meta(
            space,
            size,
            args.batch,
            device,
            "BN",
            True,
            args.warmup,
            args.repeats,
            "none",
            clock,
            min_repeat_ms,
        )
        table = LatencyTable(
            meta,
            times[0],
            [
                times[1 + sum(space.num_choices[:i]) : 1 + sum(space.num_choices[: i + 1])]
                for i in range(space.num_layers)
            ],
        )
        measured_all = times[n_table : n_table + len(archs)]
        measured_unfolded = times[n_table + len(archs) :]
        ratios = [u / f for u, f in zip(measured_unfolded, measured_all)]
        try:
            calibration = table.calibrate(archs[: args.fit_archs], measured_all[: args.fit_archs])
        except CalibrationError as e:
            print(f"[{clock} clock] no calibration ({e}): 'calibrated' below is the table's sum")
            calibration = {"scale": 1.0, "offset_ms": 0.0}
        held_out, measured = archs[args.fit_archs :], measured_all[args.fit_archs :]
        sums, predicted = [table.sum_ms(a) for a in held_out], [table.predict(a) for a in held_out]
        errors = {
            name: [100 * (p - m) / m for p, m in zip(values, measured)]
            for name, values in (("table sum", sums), ("calibrated", predicted))
        }
        summary[clock] = (errors, ratios, kendall_tau(predicted, measured), measured, calibration)
        print(
            f"[{clock} clock] calibration: measured = {calibration['scale']:.4f} x sum + "
            f"{calibration['offset_ms']:.4f} ms (fitted on {args.fit_archs} archs); held-out archs:"
        )
        print(
            f"{'arch':<41}{'sum ms':>10}{'calibrated':>12}{'measured ms':>13}{'error %':>9}{'after %':>9}"
        )
        for a, x, p, m, e, f in zip(
            held_out, sums, predicted, measured, errors["table sum"], errors["calibrated"]
        ):
            print(f"{arch_to_str(a):<41}{x:>10.3f}{p:>12.3f}{m:>13.3f}{e:>+9.2f}{f:>+9.2f}")
        print()
    for clock, (errors, ratios, tau, measured, calibration) in summary.items():
        spread = 100 * (max(measured) - min(measured)) / statistics.median(measured)
        for name, errs in errors.items():
            abs_err = [abs(e) for e in errs]
            print(
                f"[{clock}] {name} vs measured, {len(errs)} held-out archs: mean |error| "
                f"{statistics.mean(abs_err):.2f}% (goal <= 5), worst {max(abs_err):.2f}% (goal <= 10), mean signed "
                f"{statistics.mean(errs):+.2f}%"
            )
        print(
            f"[{clock}] Kendall tau {tau:.2f} (measured latencies span {spread:.0f}% of their median)"
        )
        print(
            f"[{clock}] BN folding speed-up (unfolded / folded backbone): median {statistics.median(ratios):.3f}x, "
            f"range {min(ratios):.3f}-{max(ratios):.3f}x"
        )


if __name__ == "__main__":
    main()
