"""Stand-alone scores of an arch set: pipeline steps 4-5 (classification from scratch, then detection from
it) for each arch and seed, several trainings at a time.

Resumable: an (arch, seed) with a line in the score file is not trained again, so stopping a run (Ctrl-C,
kill) and starting it again ends with the same lines (timings aside), in the order of the arch list. A
run that was stopped halfway continues: a step that finished with the same command is kept, a training
that was stopped resumes from its last checkpoint (--resume, exact). Stopped by SIGINT / SIGTERM, the
runner passes the signal on to the trainings (detnas_d2.process), which also die with it.
"""

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Dict, Optional, Sequence

from ..arch_io import save_arch
from ..config import get_detnas_cfg
from ..config_files import config_file
from ..output_files import EVAL_RESULTS_FILE
from ..pipeline import QUICK_OVERRIDES, TRAIN, Step, StepFailed
from ..process import raising_stop_signals, stop_children, stop_signal_of
from ..search_space import space_from_cfg
from ..user_errors import UserError
from .archs import Arch, arch_str, read_archs, search_space_and_table
from .console import log
from .scores import append_score, canonical_order, check_protocol, json_roundtrip, read_scores

__all__ = ["DEFAULT_CLS_CONFIG", "DEFAULT_DET_CONFIG", "score_standalone"]

DEFAULT_CLS_CONFIG = "configs/Toy/cls_subnet.yaml"
DEFAULT_DET_CONFIG = "configs/Toy/det_subnet.yaml"


def _run_step(step: Step, num_gpus: int, logger=log) -> float:
    """Run a step; one that finished earlier with the same command is kept, one that was stopped continues."""
    return step.run(num_gpus, reuse=True, log=logger)


def score_standalone(
    *,
    config: str,
    archs: Sequence[str],
    seeds: Sequence[int],
    output: str,
    work_dir: Optional[str],
    cls_config: str,
    det_config: str,
    opts: Sequence[str],
    cls_opts: Sequence[str],
    det_opts: Sequence[str],
    quick: bool,
    jobs: int,
    threads: Optional[int],
    num_gpus: int,
    protocol: str,
) -> int:
    """Train each arch of `archs` (arch sets) with each of `seeds`, `jobs` trainings at a time, appending
    to score file `output`. `config`: the search config (space, FLOPs); `cls_config` / `det_config`: steps 4
    and 5 with KEY VALUE `opts` (both) and `cls_opts` / `det_opts` (one); `work_dir`: the training folders
    (default: <output without .jsonl>_runs); `threads`: OMP_NUM_THREADS per training (default: the cores /
    `jobs`, unless OMP_NUM_THREADS is set). Returns the exit status (1 if a run failed)."""
    cfg, space, table = search_space_and_table(config)
    det_space = space_from_cfg(get_detnas_cfg(config_file(det_config)))
    if (det_space.name, det_space.width_mult) != (space.name, space.width_mult):
        raise UserError(
            f"--det-config trains space {det_space.name} x{det_space.width_mult}, but --config-file "
            f"({config}) has {space.name} x{space.width_mult}: FLOPs would be of another network"
        )
    archs = read_archs(archs, space)
    seeds = list(dict.fromkeys(seeds))
    quick_opts = {k: list(v) if quick else [] for k, v in QUICK_OVERRIDES.items()}
    cls_opts = quick_opts["cls_subnet"] + list(opts) + list(cls_opts)
    det_opts = quick_opts["det_subnet"] + list(opts) + list(det_opts)
    settings = json_roundtrip(
        {
            "cls_config": cls_config,
            "det_config": det_config,
            "cls_opts": cls_opts,
            "det_opts": det_opts,
            "space": space.name,
            "width_mult": space.width_mult,
            "input_size": int(cfg.DETNAS.SEARCH.INPUT_SIZE),
        }
    )
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(work_dir) if work_dir else out.parent / (out.stem + "_runs")
    records = read_scores(out, repair=True)
    check_protocol(records, "standalone", protocol, settings, out)
    done = {(tuple(r["arch"]), r["seed"]) for r in records}
    runs = [(a, s) for a in archs for s in seeds]
    todo = [(a, s) for a, s in runs if (a, s) not in done]
    log(
        f"{len(archs)} archs x {len(seeds)} seeds: {len(runs) - len(todo)} runs already in {out}, "
        f"{len(todo)} to train, {jobs} at a time"
    )
    if not todo:
        canonical_order(out, runs, lambda r: (tuple(r["arch"]), r["seed"]))
        return 0
    # Each training process gets its share of the cores, unless told otherwise.
    threads_each = threads or max(1, (os.cpu_count() or 1) // jobs)
    if threads or "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads_each)
    arch_files = {}
    for arch in dict.fromkeys(a for a, _ in todo):
        arch_files[arch] = work / ("a" + "".join(map(str, arch))) / "arch.yaml"
        save_arch(
            str(arch_files[arch]), arch, space, flops=table.flops(arch), params=table.params(arch)
        )
    write_lock = threading.Lock()

    def train(arch: Arch, seed: int) -> Dict:
        d = arch_files[arch].parent / f"seed{seed}"
        name = f"{arch_str(arch)} seed {seed}"
        cls = Step(
            "cls_subnet",
            f"{name}: classification (step 4)",
            TRAIN,
            cls_config,
            d / "cls_subnet",
            ["MODEL.DETNAS.ARCH", arch_files[arch]] + cls_opts + ["SEED", seed],
            d / "cls_subnet/model_final.pth",
        )
        det = Step(
            "det_subnet",
            f"{name}: detection (step 5)",
            TRAIN,
            det_config,
            d / "det_subnet",
            ["MODEL.DETNAS.ARCH", arch_files[arch], "MODEL.WEIGHTS", cls.artifact]
            + det_opts
            + ["SEED", seed],
            d / "det_subnet/model_final.pth",
        )

        def prefixed(message):  # concurrent trainings: say whose output a line is
            log(
                f"(arch {archs.index(arch) + 1}/{len(archs)} seed {seed}) {message}"
                if jobs > 1
                else message
            )

        cls_seconds = _run_step(cls, num_gpus, prefixed)
        det_seconds = _run_step(det, num_gpus, prefixed)
        results = json.loads((det.out_dir / EVAL_RESULTS_FILE).read_text())
        if "bbox" not in results:
            raise StepFailed(
                f"{det.out_dir / EVAL_RESULTS_FILE} has no bbox results: {sorted(results)}"
            )
        bbox = results["bbox"]
        record = {
            "arch": list(arch),
            "flops": table.flops(arch),
            "params": table.params(arch),
            "score": bbox["AP"],
            "protocol": protocol,
            "seed": seed,
            "seconds": round(cls_seconds + det_seconds, 1),
            "kind": "standalone",
            "metric": "bbox_AP",
            "arch_str": arch_str(arch),
            "AP50": bbox.get("AP50"),
            "top1": cls.metric()[1],
            "seconds_cls": round(cls_seconds, 1),
            "seconds_det": round(det_seconds, 1),
            "run_dir": str(d),
            "settings": settings,
        }
        with write_lock:
            append_score(out, record)
        return record

    failures = []
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        with raising_stop_signals():
            futures = {pool.submit(train, a, s): (a, s) for a, s in todo}
            for n, future in enumerate(as_completed(futures), start=1):
                arch, seed = futures[future]
                try:
                    r = future.result()
                    log(
                        f"[{n}/{len(todo)}] {arch_str(arch)} seed {seed}: bbox AP {r['score']:.2f} "
                        f"(top-1 {r['top1']:.1f}, {r['seconds']:.0f}s)"
                    )
                except Exception as e:  # noqa: BLE001  (StepFailed, or unreadable results: the others go on)
                    failures.append((arch, seed))
                    log(f"[{n}/{len(todo)}] {arch_str(arch)} seed {seed} FAILED:\n{e}")
    except (
        KeyboardInterrupt
    ) as stop:  # Ctrl-C or SIGTERM: stop the trainings too, then leave (a new start resumes)
        stop_children(stop_signal_of(stop))
        pool.shutdown(wait=True, cancel_futures=True)
        log(f"stopped; {out} keeps the finished runs and a new start resumes")
        raise
    pool.shutdown(wait=True)
    canonical_order(out, runs, lambda r: (tuple(r["arch"]), r["seed"]))
    if failures:
        log(
            f"{len(failures)} run(s) failed (not in {out}; a new start retries them): "
            + "; ".join(f"{arch_str(a)} seed {s}" for a, s in failures)
        )
        return 1
    return 0
