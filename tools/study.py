#!/usr/bin/env python
"""Small-scale check of DetNAS's claim: searching the backbone on detection beats searching it on
classification. On the toy data, four archs are retrained the same way (step 4: classification from
scratch, step 5: detection from that, as in the pipeline) and compared by bbox AP:

- det-search: the arch searched on detection AP (step 3 of a pipeline run);
- cls-search: the arch searched on classification top-1 of the step-1 supernet, same FLOPs limit;
- all-3x3: every layer shuffle_3x3;
- random: a random arch with FLOPs within 2% of det-search's.

    python tools/run_pipeline.py --output-dir output/pipeline      # if not done yet
    python tools/study.py --pipeline-dir output/pipeline --output-dir output/study [--seeds 0 1 2]

Writes <output-dir>/study.md (a table, with one-sided permutation tests of det-search against each other
arch over the seeds, unpaired and paired by seed) and study.json, again after each seed (the archs are
trained seed by seed). Each training step is the user's command (see
<output-dir>/<arch>/seed<k>/<step>/command.txt); --reuse keeps the steps that finished before and
continues a stopped one.
--cls-opts / --det-opts "KEY VALUE ..." change steps 4 / 5 (e.g. a longer or less noisy schedule).
"""

import argparse
import sys
from pathlib import Path

from detnas_d2.arch_io import load_arch_record, save_arch
from detnas_d2.audit.claim import similar_flops_arch, write_report
from detnas_d2.config import get_detnas_cfg
from detnas_d2.config_files import config_file
from detnas_d2.flops import get_flops_table
from detnas_d2.pipeline import QUICK_OVERRIDES, SEARCH, TRAIN, Step, StepFailed, split_opts
from detnas_d2.process import Stopped, raising_stop_signals, resend_signal
from detnas_d2.search_space import get_space
from detnas_d2.user_errors import UserError, reporting_user_errors

CLS_SUBNET = "configs/Toy/cls_subnet.yaml"
DET_SUBNET = "configs/Toy/det_subnet.yaml"
CLS_SEARCH = "configs/Toy/search_cls.yaml"
DET_SEARCH = "configs/Toy/search_det.yaml"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pipeline-dir", required=True, help="output of tools/run_pipeline.py (steps 1-3)"
    )
    parser.add_argument("--output-dir", default="output/study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds per arch")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the steps that finished before, continue a stopped one",
    )
    parser.add_argument(
        "--cls-opts", action="append", help='"KEY VALUE ..." options of every step 4 (repeatable)'
    )
    parser.add_argument(
        "--det-opts", action="append", help='"KEY VALUE ..." options of every step 5 (repeatable)'
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few iterations per step (a smoke test)"
    )
    args = parser.parse_args(argv)
    cls_opts, det_opts = split_opts(args.cls_opts), split_opts(args.det_opts)
    protocol = "; ".join(
        f"step {k} with {' '.join(v)}" for k, v in ((4, cls_opts), (5, det_opts)) if v
    )
    pipeline, out = Path(args.pipeline_dir).resolve(), Path(args.output_dir).resolve()
    det_best = pipeline / "3_search/best_arch.yaml"
    for needed in (pipeline / "1_cls_supernet/model_final.pth", det_best):
        if not needed.exists():
            raise UserError(
                f"{needed} is missing: run tools/run_pipeline.py --output-dir {pipeline} first"
            )
    out.mkdir(parents=True, exist_ok=True)
    quick = {k: v if args.quick else [] for k, v in QUICK_OVERRIDES.items()}
    log = lambda m: print(m, flush=True)  # noqa: E731

    # The classification search uses the detection search's FLOPs limit, measured the same way.
    cfg = get_detnas_cfg(config_file(DET_SEARCH))
    det_record = load_arch_record(str(det_best))
    space = get_space(det_record.space, cfg.MODEL.DETNAS.WIDTH_MULT)
    table = get_flops_table(space, cfg.DETNAS.SEARCH.INPUT_SIZE)
    cls_search = Step(
        "cls_search",
        "search on classification top-1 (step-1 supernet)",
        SEARCH,
        CLS_SEARCH,
        out / "cls_search",
        [
            "MODEL.WEIGHTS",
            pipeline / "1_cls_supernet/model_final.pth",
            "DETNAS.SEARCH.INPUT_SIZE",
            cfg.DETNAS.SEARCH.INPUT_SIZE,
            "DETNAS.SEARCH.FLOPS_MIN",
            cfg.DETNAS.SEARCH.FLOPS_MIN,
            "DETNAS.SEARCH.FLOPS_MAX",
            cfg.DETNAS.SEARCH.FLOPS_MAX,
        ]
        + quick["search"],
        out / "cls_search/best_arch.yaml",
    )
    try:
        cls_search.run(reuse=args.reuse, log=log)
    except StepFailed as e:
        sys.exit(str(e))

    archs = {
        "det-search": det_record.arch,
        "cls-search": load_arch_record(str(cls_search.artifact)).arch,
        "all-3x3": space.default_arch(),
    }
    archs["random"] = similar_flops_arch(
        space,
        table,
        table.flops(det_record.arch),
        seed=0,
        exclude=[tuple(a) for a in archs.values()],
    )
    arch_files = {}
    for name, arch in archs.items():
        arch_files[name] = out / name / "arch.yaml"
        arch_files[name].parent.mkdir(parents=True, exist_ok=True)
        save_arch(
            str(arch_files[name]), arch, space, flops=table.flops(arch), params=table.params(arch)
        )
    # Seed by seed, so that a stopped study already has a table over all archs.
    runs = {name: [] for name in archs}
    for seed in args.seeds:
        for name in archs:
            d = out / name / f"seed{seed}"
            cls = Step(
                "cls_subnet",
                f"{name} seed {seed}: classification",
                TRAIN,
                CLS_SUBNET,
                d / "cls_subnet",
                ["MODEL.DETNAS.ARCH", arch_files[name], "SEED", seed]
                + quick["cls_subnet"]
                + cls_opts,
                d / "cls_subnet/model_final.pth",
            )
            det = Step(
                "det_subnet",
                f"{name} seed {seed}: detection",
                TRAIN,
                DET_SUBNET,
                d / "det_subnet",
                ["MODEL.DETNAS.ARCH", arch_files[name], "MODEL.WEIGHTS", cls.artifact, "SEED", seed]
                + quick["det_subnet"]
                + det_opts,
                d / "det_subnet/model_final.pth",
            )
            try:
                cls.run(reuse=args.reuse, log=log)
                det.run(reuse=args.reuse, log=log)
            except StepFailed as e:
                sys.exit(str(e))
            runs[name].append({"seed": seed, "top1": cls.metric()[1], "AP": det.metric()[1]})
        text = write_report(out, archs, runs, table, cfg.DETNAS.SEARCH.INPUT_SIZE, protocol)
    print(text)


if __name__ == "__main__":
    try:
        # SIGTERM too: the running step gets it and time to stop; bad input: one line, exit status 2
        with raising_stop_signals(), reporting_user_errors():
            main()
    except Stopped as stop:
        resend_signal(stop.signum)
