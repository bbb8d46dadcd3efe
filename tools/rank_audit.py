#!/usr/bin/env python
"""Does the supernet rank archs as stand-alone training does? Score a set of archs both ways and compare.

    # 1. an arch set: K archs stratified over FLOPs inside the search's FLOPs band (or give your own)
    python tools/rank_audit.py sample --num 12 --seed 0 --output output/audit/archs.txt
    # 2. supernet scores, with the search's own scorer and settings (KEY VALUE options as in search_net.py)
    python tools/rank_audit.py supernet --archs output/audit/archs.txt --output output/audit/supernet.jsonl \\
        MODEL.WEIGHTS output/toy/2/model_final.pth
    # 3. stand-alone scores: steps 4-5 of the pipeline for each arch and seed, 2 trainings at a time
    python tools/rank_audit.py standalone --archs output/audit/archs.txt --seeds 0 1 --jobs 2 \\
        --output output/audit/standalone.jsonl
    # 4. the figures: Kendall tau, Spearman rho, top-20% precision, seed noise, rank-by-FLOPs/params
    python tools/rank_audit.py compare --supernet output/audit/supernet.jsonl \\
        --standalone output/audit/standalone.jsonl --output-dir output/audit
    # a cheaper scoring protocol against a reference one (score files or searches' candidates.jsonl)
    python tools/rank_audit.py protocols --reference output/search_full/candidates.jsonl \\
        --cheap output/search_cheap/candidates.jsonl --topk 10

Arch sets (--archs, one or more): a text file with one arch per line (comma-separated block ids or
names, `#` comments), a YAML list of archs, a JSON-lines file with an "arch" per line (a search's
candidates.jsonl, or this tool's own output), a JSON list, one arch file (best_arch.yaml), or an inline arch
("0,1,2,...", "random:SEED").

Scores are JSON lines, one per scored arch (supernet) or per (arch, seed) (stand-alone), with the fields
arch (block ids), flops and params (the backbone's, at DETNAS.SEARCH.INPUT_SIZE of --config-file), score
(the task's headline metric: bbox AP), protocol (a label, --protocol), seed (the scoring seed, or the
training seed), seconds, images_recalib and images_eval (supernet: the image forwards), plus metadata: kind, metric, settings (everything that fixes the score; a file
only takes lines of one protocol and settings), timings, top-1 of the stand-alone classifier, ...

Both scoring parts resume: an arch (or (arch, seed)) with a line in the output is not scored again, so
stopping a run (Ctrl-C, kill) and starting it again ends with the same lines (timings aside), in the
order of the arch list. A line cut short by a kill is dropped on the next start. A stand-alone run that
was stopped halfway continues: a step that finished with the same command is kept, a training that was
stopped resumes from its last checkpoint (train_net.py --resume, exact).
"""
import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detnas_d2.output_files import EVAL_RESULTS_FILE  # noqa: E402
from detnas_d2.pipeline import QUICK_OVERRIDES, Step, StepFailed, split_opts  # noqa: E402

DEFAULT_SEARCH_CONFIG = "configs/Toy/search_det.yaml"
DEFAULT_CLS_CONFIG = "configs/Toy/cls_subnet.yaml"
DEFAULT_DET_CONFIG = "configs/Toy/det_subnet.yaml"
FLOPS_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "detnas-d2", "flops")

Arch = Tuple[int, ...]


def log(message: str, _lock=threading.Lock()):
    with _lock:
        print(message, flush=True)


def _config_path(path: str) -> str:
    """A config given relative to the repository root (as in the README) or to the current folder."""
    return path if os.path.isabs(path) or os.path.exists(path) else str(ROOT / path)


def arch_str(arch: Sequence[int]) -> str:
    return ",".join(str(a) for a in arch)


def flops_table(space, input_size):
    """The FLOPs table, cached on disk ($DETNAS_FLOPS_CACHE_DIR, else ~/.cache/detnas-d2/flops)."""
    from detnas_d2.flops import CACHE_ENV, get_flops_table

    return get_flops_table(space, input_size, cache_dir=os.environ.get(CACHE_ENV) or FLOPS_CACHE_DIR)


def search_space_and_table(config_file: str, opts=()):
    from detnas_d2.config import get_detnas_cfg
    from detnas_d2.search_space import space_from_cfg

    cfg = get_detnas_cfg(_config_path(config_file), list(opts))
    space = space_from_cfg(cfg)
    return cfg, space, flops_table(space, int(cfg.DETNAS.SEARCH.INPUT_SIZE))


# ---- arch sets ----------------------------------------------------------------------------------------


def _arch_from_item(item, space, where: str) -> Arch:
    from detnas_d2.arch_io import load_arch

    if isinstance(item, dict):
        if "arch" not in item:
            raise ValueError(f"{where}: an entry without 'arch'")
        item = item["arch"]
    if isinstance(item, (list, tuple)):
        item = ",".join(str(a) for a in item)
    try:
        return load_arch(str(item), space)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def read_archs(specs: Sequence[str], space) -> List[Arch]:
    """The archs of `specs` (files or inline archs, see the module doc), duplicates dropped."""
    import yaml

    from detnas_d2.arch_io import load_arch

    archs: List[Arch] = []
    for spec in specs:
        path = Path(spec)
        if not path.is_file():
            archs.append(load_arch(spec, space))
            continue
        text = path.read_text()
        if path.suffix == ".json":  # a list of archs, or one
            data = json.loads(text)
            items = data if isinstance(data, list) else [data]
            archs += [_arch_from_item(item, space, f"{spec}: entry {i}") for i, item in enumerate(items, 1)]
        elif path.suffix == ".jsonl":
            for i, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    archs.append(_arch_from_item(json.loads(line), space, f"{spec}: line {i}"))
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
            if isinstance(data, list):
                archs += [_arch_from_item(item, space, f"{spec}: entry {i}") for i, item in enumerate(data, 1)]
            else:  # one arch file, in any supported format
                archs.append(load_arch(str(path), space))
        else:
            for i, line in enumerate(text.splitlines(), start=1):
                line = line.split("#", 1)[0].strip()
                if line:
                    archs.append(_arch_from_item(line, space, f"{spec}: line {i}"))
    unique = list(dict.fromkeys(archs))
    if len(unique) < len(archs):
        log(f"{len(archs) - len(unique)} duplicate arch(s) dropped: {len(unique)} archs")
    if not unique:
        raise ValueError(f"no arch in {list(specs)}")
    return unique


def flops_band(cfg, table, flops_min: Optional[float], flops_max: Optional[float]) -> Tuple[float, float]:
    """The FLOPs band: the given bounds, else the search config's (0: no bound, i.e. the space's range)."""
    lo = cfg.DETNAS.SEARCH.FLOPS_MIN if flops_min is None else flops_min
    hi = cfg.DETNAS.SEARCH.FLOPS_MAX if flops_max is None else flops_max
    return float(lo or table.min_flops), float(hi or table.max_flops)


def sample_stratified(space, table, k: int, lo: float, hi: float, seed: int, draws: int = 20000) -> List[Arch]:
    """K distinct archs, one per FLOPs stratum: [lo, hi] cut into K strata of equal width, each arch drawn
    uniformly among `draws` random archs that fall in its stratum; a stratum that none falls in (the ends
    of the space's range are rare under uniform sampling) gets a random arch moved there one layer at a
    time (each move a random layer to a random block that brings the FLOPs toward the stratum)."""
    import random

    if k < 1:
        raise ValueError(f"--num must be >= 1, got {k}")
    lo, hi = max(lo, table.min_flops), min(hi, table.max_flops)
    if lo >= hi:
        raise ValueError(f"empty FLOPs band [{lo / 1e6:.2f}M, {hi / 1e6:.2f}M] (the space spans "
                         f"{table.min_flops / 1e6:.2f}M..{table.max_flops / 1e6:.2f}M)")
    rng = random.Random(seed)
    width = (hi - lo) / k
    edges = [(lo + i * width, lo + (i + 1) * width) for i in range(k)]

    def stratum(f):
        return min(int((f - lo) / width), k - 1) if lo <= f <= hi else None

    pools: List[List[Arch]] = [[] for _ in range(k)]
    for _ in range(draws):
        arch = space.random_arch(rng)
        s = stratum(table.flops(arch))
        if s is not None:
            pools[s].append(arch)
    chosen: List[Arch] = []
    for s, (a, b) in enumerate(edges):
        pool = [x for x in dict.fromkeys(pools[s]) if x not in chosen]
        if pool:
            chosen.append(pool[rng.randrange(len(pool))])
            continue
        for _ in range(200):  # restarts
            arch = list(space.random_arch(rng))
            for _ in range(20 * space.num_layers):
                f = table.flops(arch)
                if a <= f <= b and stratum(f) == s and tuple(arch) not in chosen:
                    break
                layer = rng.randrange(space.num_layers)
                row = table.layer_flops[layer]
                current = row[arch[layer]]
                options = [c for c in range(len(row)) if (row[c] > current if f < a else row[c] < current)]
                if options:
                    arch[layer] = rng.choice(options)
            if stratum(table.flops(arch)) == s and tuple(arch) not in chosen:
                chosen.append(tuple(arch))
                break
        else:
            raise RuntimeError(f"no arch found with FLOPs in [{a / 1e6:.3f}M, {b / 1e6:.3f}M]")
    return chosen


def cmd_sample(args):
    from detnas_d2.search_space import BLOCKS

    cfg, space, table = search_space_and_table(args.config_file)
    lo, hi = flops_band(cfg, table, args.flops_min, args.flops_max)
    archs = sample_stratified(space, table, args.num, lo, hi, args.seed)
    extra = read_archs(args.include, space) if args.include else []
    archs = list(dict.fromkeys(extra + archs))
    input_size = int(cfg.DETNAS.SEARCH.INPUT_SIZE)
    lines = [
        f"# {len(archs)} archs of space {space.name} (width {space.width_mult}): "
        + (f"{len(extra)} given (--include), then " if extra else "")
        + f"{args.num} stratified over backbone FLOPs at {input_size}x{input_size} in "
        f"[{lo / 1e6:.3f}M, {hi / 1e6:.3f}M], seed {args.seed}",
        f"# python tools/rank_audit.py {' '.join(sys.argv[1:])}",
        f"# one arch per line: block ids ({', '.join(f'{i} {b}' for i, b in enumerate(BLOCKS))})",
    ]
    lines += [f"{arch_str(a)}  # {table.flops(a) / 1e6:.3f} MFLOPs, {table.params(a) / 1e6:.4f} Mparams" for a in archs]
    text = "\n".join(lines) + "\n"
    if args.output:
        from detnas_d2.file_io import atomic_write

        atomic_write(args.output, text)
        log(f"{len(archs)} archs written to {args.output}")
    else:
        print(text, end="")


# ---- score files ----------------------------------------------------------------------------------------


def read_scores(path: Path, repair: bool = False) -> List[Dict]:
    """The lines of a score file. A last line cut short (a run killed while writing it) is dropped, and
    with `repair` the file is rewritten without it; any other unreadable line is an error."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    records, kept = [], []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
            kept.append(line)
        except json.JSONDecodeError:
            if any(rest.strip() for rest in lines[i + 1:]):
                raise ValueError(f"{path}: line {i + 1} is not JSON: {line[:80]!r}") from None
            log(f"{path}: the last line was cut short (a run stopped while writing it): dropped")
    if repair and "".join(line + "\n" for line in kept) != text:
        from detnas_d2.file_io import atomic_write

        atomic_write(str(path), "".join(line + "\n" for line in kept))
    return records


def append_score(path: Path, record: Dict):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def check_protocol(records: List[Dict], kind: str, protocol: str, settings: Dict, path: Path):
    """A score file holds one protocol with one set of settings: refuse to add to another."""
    for r in records:
        theirs = (r.get("kind"), r.get("protocol"), r.get("settings"))
        if theirs != (kind, protocol, settings):
            diff = [k for k in sorted(set(settings) | set(r.get("settings") or {}))
                    if settings.get(k) != (r.get("settings") or {}).get(k)]
            sys.exit(
                f"{path} holds {theirs[0]} scores of protocol '{theirs[1]}' with other settings (differing: "
                f"{', '.join(diff) or 'kind/protocol'}); this run is {kind} '{protocol}'. Write to another "
                "--output, or remove the file to start over."
            )


def _canonical_order(path: Path, keys: List, key_of):
    """Rewrite the file with its lines in the order of `keys` (then any others, as they were)."""
    from detnas_d2.file_io import atomic_write

    records = read_scores(path)
    position = {k: i for i, k in enumerate(keys)}
    ordered = sorted(records, key=lambda r: position.get(key_of(r), len(keys)))
    if ordered != records:
        atomic_write(str(path), "".join(json.dumps(r) + "\n" for r in ordered))


def _json_roundtrip(value):
    return json.loads(json.dumps(value))


# ---- supernet scores ------------------------------------------------------------------------------------


def _file_sha1(path: str) -> Optional[str]:
    """The first 12 hex digits of a local file's SHA-1 (a checkpoint trained again in place is another
    protocol); None for a remote or missing file."""
    import hashlib

    if not path or "://" in path or not os.path.isfile(path):
        return None
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def cmd_supernet(args):
    from detnas_d2.search import ScoringSettings, build_scorer

    cfg, space, table = search_space_and_table(args.config_file, args.opts)
    archs = read_archs(args.archs, space)
    scoring = ScoringSettings.from_cfg(cfg)
    weights = scoring.weights if "://" in scoring.weights or not scoring.weights else os.path.abspath(scoring.weights)
    settings = _json_roundtrip({
        "weights": weights, "weights_sha1": _file_sha1(weights), "fitness": scoring.fitness, "space": space.name, "width_mult": space.width_mult,
        "input_size": int(cfg.DETNAS.SEARCH.INPUT_SIZE), "recalib_dataset": scoring.recalib.dataset,
        "recalib_images": scoring.recalib.images, "recalib_batch_size": scoring.recalib.batch_size,
        "eval_dataset": scoring.eval_dataset, "eval_images": scoring.eval_images,
        "eval_batch_size": scoring.eval_batch_size, "meta_architecture": scoring.meta_architecture,
        **({"eval_min_size": scoring.eval_min_size} if scoring.eval_min_size else {}),
    })
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = read_scores(out, repair=True)
    check_protocol(records, "supernet", args.protocol, settings, out)
    done = {tuple(r["arch"]) for r in records}
    todo = [a for a in archs if a not in done]
    log(f"{len(archs)} archs: {len(archs) - len(todo)} already scored in {out}, {len(todo)} to score")
    if args.limit is not None:
        todo = todo[: args.limit]
    if not todo:
        return 0
    scorer = build_scorer(cfg, scoring)  # only when there is something to score: loading takes a while
    for i, arch in enumerate(todo, start=1):
        start = time.perf_counter()
        result = scorer.score(arch)
        seconds = time.perf_counter() - start
        record = {
            "arch": list(arch), "flops": table.flops(arch), "params": table.params(arch),
            "score": result["score"], "protocol": args.protocol, "seed": scoring.seed,
            "seconds": round(seconds, 3), "images_recalib": result["images_recalib"],
            "images_eval": result["images_eval"], "kind": "supernet", "metric": scoring.fitness, "arch_str": arch_str(arch),
            **{k: round(v, 3) for k, v in result.items() if k.startswith("seconds_")},
            "settings": settings,
        }
        append_score(out, record)
        log(f"[{i}/{len(todo)}] {arch_str(arch)}: {scoring.fitness} {result['score']:.3f} "
            f"({table.flops(arch) / 1e6:.2f} MFLOPs, {seconds:.1f}s)")
    return 0


# ---- stand-alone scores ----------------------------------------------------------------------------------


def _raise_on_sigterm():
    """SIGTERM raises KeyboardInterrupt in the main thread (as Ctrl-C does); returns the previous handler
    (None where it cannot be set: not the main thread)."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:
        return None


def _stop_children():
    """SIGTERM to this process's own child processes (the training commands; their launchers stop their
    workers). Linux (/proc); elsewhere a no-op."""
    me = str(os.getpid())
    for entry in Path("/proc").glob("[0-9]*/stat") if Path("/proc").is_dir() else []:
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == me:  # the parent pid
            try:
                os.kill(int(entry.parent.name), signal.SIGTERM)
            except OSError:
                pass


def _run_step(step: Step, num_gpus: int, logger=log) -> float:
    """Run a step; one that finished earlier with the same command is kept, one that was stopped continues."""
    return step.run(num_gpus, reuse=True, log=logger)


def cmd_standalone(args):
    from detnas_d2.arch_io import save_arch
    from detnas_d2.config import get_detnas_cfg
    from detnas_d2.search_space import space_from_cfg

    cfg, space, table = search_space_and_table(args.config_file)
    det_space = space_from_cfg(get_detnas_cfg(_config_path(args.det_config)))
    if (det_space.name, det_space.width_mult) != (space.name, space.width_mult):
        sys.exit(f"--det-config trains space {det_space.name} x{det_space.width_mult}, but --config-file "
                 f"({args.config_file}) has {space.name} x{space.width_mult}: FLOPs would be of another network")
    archs = read_archs(args.archs, space)
    seeds = list(dict.fromkeys(args.seeds))
    quick = {k: list(v) if args.quick else [] for k, v in QUICK_OVERRIDES.items()}
    cls_opts = quick["cls_subnet"] + list(args.opts) + list(args.cls_opts)
    det_opts = quick["det_subnet"] + list(args.opts) + list(args.det_opts)
    settings = _json_roundtrip({
        "cls_config": args.cls_config, "det_config": args.det_config, "cls_opts": cls_opts, "det_opts": det_opts,
        "space": space.name, "width_mult": space.width_mult, "input_size": int(cfg.DETNAS.SEARCH.INPUT_SIZE),
    })
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir) if args.work_dir else out.parent / (out.stem + "_runs")
    records = read_scores(out, repair=True)
    check_protocol(records, "standalone", args.protocol, settings, out)
    done = {(tuple(r["arch"]), r["seed"]) for r in records}
    runs = [(a, s) for a in archs for s in seeds]
    todo = [(a, s) for a, s in runs if (a, s) not in done]
    log(f"{len(archs)} archs x {len(seeds)} seeds: {len(runs) - len(todo)} runs already in {out}, "
        f"{len(todo)} to train, {args.jobs} at a time")
    if not todo:
        _canonical_order(out, runs, lambda r: (tuple(r["arch"]), r["seed"]))
        return 0
    # Each training process gets its share of the cores, unless told otherwise.
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    if args.threads or "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    arch_files = {}
    for arch in dict.fromkeys(a for a, _ in todo):
        arch_files[arch] = work / ("a" + "".join(map(str, arch))) / "arch.yaml"
        save_arch(str(arch_files[arch]), arch, space, flops=table.flops(arch), params=table.params(arch))
    write_lock = threading.Lock()

    def train(arch: Arch, seed: int) -> Dict:
        d = arch_files[arch].parent / f"seed{seed}"
        name = f"{arch_str(arch)} seed {seed}"
        cls = Step("cls_subnet", f"{name}: classification (step 4)", "train_net.py", _config_path(args.cls_config),
                   d / "cls_subnet", ["MODEL.DETNAS.ARCH", arch_files[arch]] + cls_opts + ["SEED", seed],
                   d / "cls_subnet/model_final.pth")
        det = Step("det_subnet", f"{name}: detection (step 5)", "train_net.py", _config_path(args.det_config),
                   d / "det_subnet",
                   ["MODEL.DETNAS.ARCH", arch_files[arch], "MODEL.WEIGHTS", cls.artifact] + det_opts + ["SEED", seed],
                   d / "det_subnet/model_final.pth")

        def prefixed(message):  # concurrent trainings: say whose output a line is
            log(f"(arch {archs.index(arch) + 1}/{len(archs)} seed {seed}) {message}" if args.jobs > 1 else message)

        cls_seconds = _run_step(cls, args.num_gpus, prefixed)
        det_seconds = _run_step(det, args.num_gpus, prefixed)
        results = json.loads((det.out_dir / EVAL_RESULTS_FILE).read_text())
        if "bbox" not in results:
            raise StepFailed(f"{det.out_dir / EVAL_RESULTS_FILE} has no bbox results: {sorted(results)}")
        bbox = results["bbox"]
        record = {
            "arch": list(arch), "flops": table.flops(arch), "params": table.params(arch), "score": bbox["AP"],
            "protocol": args.protocol, "seed": seed, "seconds": round(cls_seconds + det_seconds, 1),
            "kind": "standalone", "metric": "bbox_AP", "arch_str": arch_str(arch), "AP50": bbox.get("AP50"),
            "top1": cls.metric()[1], "seconds_cls": round(cls_seconds, 1), "seconds_det": round(det_seconds, 1),
            "run_dir": str(d), "settings": settings,
        }
        with write_lock:
            append_score(out, record)
        return record

    failures = []
    pool = ThreadPoolExecutor(max_workers=args.jobs)
    previous_handler = _raise_on_sigterm()
    try:
        futures = {pool.submit(train, a, s): (a, s) for a, s in todo}
        for n, future in enumerate(as_completed(futures), start=1):
            arch, seed = futures[future]
            try:
                r = future.result()
                log(f"[{n}/{len(todo)}] {arch_str(arch)} seed {seed}: bbox AP {r['score']:.2f} "
                    f"(top-1 {r['top1']:.1f}, {r['seconds']:.0f}s)")
            except Exception as e:  # noqa: BLE001  (StepFailed, or unreadable results: the others go on)
                failures.append((arch, seed))
                log(f"[{n}/{len(todo)}] {arch_str(arch)} seed {seed} FAILED:\n{e}")
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the trainings too, then leave (a new start resumes)
        _stop_children()
        pool.shutdown(wait=True, cancel_futures=True)
        log(f"stopped; {out} keeps the finished runs and a new start resumes")
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    pool.shutdown(wait=True)
    _canonical_order(out, runs, lambda r: (tuple(r["arch"]), r["seed"]))
    if failures:
        log(f"{len(failures)} run(s) failed (not in {out}; a new start retries them): "
            + "; ".join(f"{arch_str(a)} seed {s}" for a, s in failures))
        return 1
    return 0


# ---- compare ----------------------------------------------------------------------------------------------


def _fmt(value, digits=2):
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _fmt_ci(point, ci, digits=2):
    return f"{_fmt(point, digits)} [{_fmt(ci['low'], digits)}, {_fmt(ci['high'], digits)}]"


def json_safe(value):
    """Strict JSON: NaN (undefined) -> null, infinity (e.g. no number of seeds suffices) -> "inf"."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def predictor_figures(predicted, truth, fraction, samples, seed, baselines=None) -> Dict:
    """tau-b, rho (with bootstrap intervals) and top-fraction precision of `predicted` against `truth`;
    for each of `baselines` ({name: another predictor's values}), tau(predicted) - tau(baseline) with its
    interval over the same resamples (a paired comparison)."""
    import numpy as np

    from detnas_d2 import rank_stats as rs

    predicted, truth = np.asarray(predicted, dtype=float), np.asarray(truth, dtype=float)
    figures = {
        "n": len(truth),
        "tau": rs.kendall_tau_b(predicted, truth),
        "tau_ci": rs.bootstrap_ci(rs.kendall_tau_b, predicted, truth, samples=samples, seed=seed),
        "rho": rs.spearman_rho(predicted, truth),
        "rho_ci": rs.bootstrap_ci(rs.spearman_rho, predicted, truth, samples=samples, seed=seed),
        "top": rs.top_k_overlap(predicted, truth, fraction),
        "tau_gain": {},
    }

    def gain(p, t, b):
        return rs.kendall_tau_b(p, t) - rs.kendall_tau_b(b, t)

    for name, baseline in (baselines or {}).items():
        baseline = np.asarray(baseline, dtype=float)
        figures["tau_gain"][name] = {
            "value": figures["tau"] - rs.kendall_tau_b(baseline, truth),
            "ci": rs.bootstrap_ci(gain, predicted, truth, baseline, samples=samples, seed=seed),
        }
    return figures


def load_compare_inputs(supernet_files: Sequence[str], standalone_file: str):
    """({label: {arch: score}} per supernet protocol, {arch: {seed: AP}}, {arch: (flops, params)})."""
    predictors: Dict[str, Dict[Arch, float]] = {}
    info: Dict[Arch, Tuple[int, int]] = {}
    for path in supernet_files:
        records = read_scores(Path(path))
        if not records:
            sys.exit(f"{path}: no scores")
        for label in dict.fromkeys(r.get("protocol") for r in records):
            key = label if label not in predictors else f"{label} ({Path(path).stem})"
            predictors[key] = {}
            for r in records:
                if r.get("kind") != "supernet":
                    sys.exit(f"{path}: a line of kind '{r.get('kind')}' where supernet scores were expected")
                if r["protocol"] == label:
                    if math.isnan(float(r["score"])):
                        log(f"{path}: {r['arch_str']} has no score (NaN): left out")
                        continue
                    predictors[key][tuple(r["arch"])] = float(r["score"])
                    info[tuple(r["arch"])] = (r["flops"], r["params"])
    truth: Dict[Arch, Dict[int, float]] = {}
    mismatch = False
    records = read_scores(Path(standalone_file))
    if not records:
        sys.exit(f"{standalone_file}: no scores")
    for r in records:
        if r.get("kind") != "standalone":
            sys.exit(f"{standalone_file}: a line of kind '{r.get('kind')}' where stand-alone scores were expected")
        score = float(r["score"])
        if math.isnan(score):
            log(f"{standalone_file}: {r['arch_str']} seed {r['seed']} has no score (NaN): left out")
            continue
        truth.setdefault(tuple(r["arch"]), {})[int(r["seed"])] = score
        if info.get(tuple(r["arch"]), (r["flops"], r["params"])) != (r["flops"], r["params"]) and not mismatch:
            mismatch = True
            log(f"FLOPs/params differ between the supernet and stand-alone files (another input size or space "
                f"in --config-file?): those of {standalone_file} are used")
        info[tuple(r["arch"])] = (r["flops"], r["params"])
    return predictors, truth, info


def _subset_figures(archs, predictors, truth, info, args) -> Dict:
    import numpy as np

    from detnas_d2 import rank_stats as rs

    mean = [float(np.mean(list(truth[a].values()))) for a in archs]
    flops = [info[a][0] for a in archs]
    params = [info[a][1] for a in archs]
    figures = {}
    for label, scores in predictors.items():
        baselines = {"FLOPs": flops}
        if args.baseline and label != args.baseline:
            baselines[args.baseline] = [predictors[args.baseline][a] for a in archs]
        figures[label] = predictor_figures([scores[a] for a in archs], mean, args.top_fraction, args.bootstrap,
                                           args.seed, baselines=baselines)
    figures["rank by FLOPs"] = predictor_figures(flops, mean, args.top_fraction, args.bootstrap, args.seed)
    figures["rank by params"] = predictor_figures(params, mean, args.top_fraction, args.bootstrap, args.seed)
    noise = rs.seed_noise([truth[a] for a in archs], args.bootstrap, args.seed)
    noise["arch_effect"] = rs.arch_effect([truth[a] for a in archs], seed=args.seed)
    noise["arch_effect_seed_blocks"] = rs.arch_effect_seed_blocks([truth[a] for a in archs], seed=args.seed)
    return {"n": len(archs), "predictors": figures, "noise": noise}


def plot_compare(path: Path, predictors, archs, truth, info, band, summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = list(predictors) + ["rank by FLOPs"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), dpi=100, squeeze=False)
    mean = np.array([np.mean(list(truth[a].values())) for a in archs])
    std = np.array([np.std(list(truth[a].values()), ddof=1) if len(truth[a]) > 1 else 0.0 for a in archs])
    inside = np.array([band[0] <= info[a][0] <= band[1] for a in archs], dtype=bool)
    for ax, label in zip(axes[0], panels):
        if label == "rank by FLOPs":
            x, xlabel = np.array([info[a][0] / 1e6 for a in archs]), "backbone MFLOPs"
        else:
            x, xlabel = np.array([predictors[label][a] for a in archs]), f"supernet score ({label})"
        if inside.any():
            ax.errorbar(x[inside], mean[inside], yerr=std[inside], fmt="o", color="tab:blue", capsize=3,
                        label="inside the FLOPs band")
        if (~inside).any():
            ax.errorbar(x[~inside], mean[~inside], yerr=std[~inside], fmt="o", mfc="none", color="tab:gray",
                        capsize=3, label="outside the band")
        taus = [summary["subsets"][s]["predictors"][label]["tau"] for s in ("all", "band")]
        ax.set_title(f"{label}\nKendall tau {_fmt(taus[0])} (all), {_fmt(taus[1])} (band)", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("stand-alone score, mean ± std over seeds")
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    plt.close(fig)


def cmd_compare(args):
    import numpy as np
    from tabulate import tabulate

    from detnas_d2.config import get_detnas_cfg
    from detnas_d2.file_io import atomic_write

    predictors, truth, info = load_compare_inputs(args.supernet, args.standalone)
    if args.baseline and args.baseline not in predictors:
        sys.exit(f"--baseline '{args.baseline}' is none of the supernet protocols {sorted(predictors)}")
    archs = [a for a in truth if all(a in p for p in predictors.values())]
    if len(archs) < len(truth):
        log(f"{len(truth) - len(archs)} of the {len(truth)} stand-alone archs have no supernet score: left out")
    if len(archs) < 2:
        sys.exit(f"{len(archs)} arch(s) with both scores: nothing to compare")
    cfg = get_detnas_cfg(_config_path(args.config_file))
    lo = args.flops_min if args.flops_min is not None else float(cfg.DETNAS.SEARCH.FLOPS_MIN)
    hi = args.flops_max if args.flops_max is not None else float(cfg.DETNAS.SEARCH.FLOPS_MAX)
    band = (lo or 0.0, hi or float("inf"))
    subsets = {"all": archs, "band": [a for a in archs if band[0] <= info[a][0] <= band[1]]}
    seeds = sorted({s for a in archs for s in truth[a]})
    summary = {
        "supernet_files": list(args.supernet), "standalone_file": args.standalone,
        "flops_band": [band[0], band[1] if math.isfinite(band[1]) else None],
        "top_fraction": args.top_fraction, "bootstrap": {"samples": args.bootstrap, "seed": args.seed, "level": 0.95},
        "seeds": seeds, "subsets": {name: _subset_figures(sub, predictors, truth, info, args)
                                    for name, sub in subsets.items()},
    }
    if band[0] > 0 and math.isfinite(band[1]):
        band_text = f"FLOPs in [{band[0] / 1e6:.2f}M, {band[1] / 1e6:.2f}M]"
    elif math.isfinite(band[1]):
        band_text = f"FLOPs <= {band[1] / 1e6:.2f}M"
    else:
        band_text = f"FLOPs >= {band[0] / 1e6:.2f}M"
    names = {"all": "all archs", "band": band_text}
    pct = f"top-{args.top_fraction:.0%}"
    rows, noise_rows, block_rows = [], [], []
    gain_columns = ["FLOPs"] + ([args.baseline] if args.baseline else [])
    for name, sub in summary["subsets"].items():
        for label, f in sub["predictors"].items():
            gains = [_fmt_ci(f["tau_gain"][b]["value"], f["tau_gain"][b]["ci"]) if b in f["tau_gain"] else ""
                     for b in gain_columns]
            rows.append([names[name], label, f["n"], _fmt_ci(f["tau"], f["tau_ci"]), _fmt_ci(f["rho"], f["rho_ci"]),
                         f"{f['top']['hits']}/{f['top']['k']}"] + gains)
        nz = sub["noise"]
        pair, effect = nz["seed_pair"], nz["arch_effect"]
        noise_rows.append([
            names[name], sub["n"], nz["archs_with_2_seeds"], f"{_fmt(nz['std_mean'])} / {_fmt(nz['std_max'])}",
            _fmt(nz["between_arch_std"]),
            (f"seeds {pair[0]} vs {pair[1]} ({nz['archs_in_pair']} archs): "
             + _fmt_ci(nz["tau_between_seeds"], nz["tau_between_seeds_ci"])) if pair else "n/a (one seed)",
            _fmt(effect["arch_std"]), _fmt(effect["icc"]), _fmt(effect["reliability"]), _fmt(effect["tau_ceiling"]),
            _fmt(effect["seeds_for_tau_07"], 1), _fmt(effect["p_value"], 4),
        ])
        blocks = nz["arch_effect_seed_blocks"]
        block_rows.append([names[name], blocks["archs"], " ".join(map(str, blocks["seeds"])) or "n/a",
                           _fmt(blocks["seed_block_std"]), _fmt(blocks["seed_std"]), _fmt(blocks["arch_std"]),
                           _fmt(blocks["icc"]), _fmt(blocks["reliability"]), _fmt(blocks["tau_ceiling"]),
                           _fmt(blocks["seeds_for_tau_07"], 1), _fmt(blocks["p_value"], 4)])
    table = tabulate(rows, headers=["archs", "predictor", "n", "Kendall tau-b [95% CI]", "Spearman rho [95% CI]",
                                    f"{pct} precision"] + [f"tau - tau({b}) [95% CI]" for b in gain_columns],
                     tablefmt="pipe", disable_numparse=True)
    noise = tabulate(noise_rows, headers=["archs", "n", "with >= 2 seeds", "seed std per arch (mean / max)",
                                          "std of arch means", "Kendall tau between seeds [95% CI]",
                                          "true arch std (est.)", "ICC", "reliability of the mean", "tau ceiling",
                                          "seeds for tau 0.7", "p (archs differ)"],
                     tablefmt="pipe", disable_numparse=True)
    blocks = tabulate(block_rows, headers=["archs", "n", "common seeds", "seed offset std (shared)",
                                           "seed std left", "true arch std (est.)", "ICC", "reliability of the mean",
                                           "tau ceiling", "seeds for tau 0.7", "p (archs differ)"], tablefmt="pipe",
                     disable_numparse=True)
    per_arch = tabulate(
        [[arch_str(a), f"{info[a][0] / 1e6:.3f}", f"{info[a][1] / 1e6:.4f}",
          "yes" if a in subsets["band"] else "no"]
         + [_fmt(p[a], 3) for p in predictors.values()]
         + [f"{np.mean(list(truth[a].values())):.2f}"
            + (f" ± {np.std(list(truth[a].values()), ddof=1):.2f}" if len(truth[a]) > 1 else ""),
            " ".join(_fmt(truth[a][s]) for s in sorted(truth[a]))]
         for a in sorted(archs, key=lambda a: info[a][0])],
        headers=["arch", "MFLOPs", "Mparams", "in band"] + [f"supernet ({p})" for p in predictors]
        + ["stand-alone mean ± std", "per seed"], tablefmt="pipe", disable_numparse=True)
    text = (
        f"## Supernet ranking vs stand-alone training\n\n{table}\n\n"
        f"Predictors ranked against the stand-alone score averaged over seeds {seeds}. 95% intervals: "
        f"percentile bootstrap over archs ({args.bootstrap} resamples, seed {args.seed}; the same resamples "
        f"for every predictor, so tau - tau(...) is a paired difference). {pct} precision: how many of the "
        f"predictor's top {args.top_fraction:.0%} "
        f"(ceil, at least 1) are in the stand-alone top {args.top_fraction:.0%}.\n\n"
        f"## Stand-alone seed noise\n\n{noise}\n\n"
        "The tau between two seeds is how well one training run ranks the archs as another does: a bound on "
        "what any predictor can reach against a single-seed ground truth (a mean over seeds is steadier). "
        "The last six columns are a one-way random-effects ANOVA over the archs with >= 2 seeds: the "
        "estimated std of the archs' true scores (free of seed noise), ICC (the share of one run's variance "
        "that is the arch's), the reliability r of an arch's mean over its seeds, the tau that a perfect "
        "predictor would reach against those means ((2 / pi) asin(sqrt(r)), normal scores), the seeds per "
        "arch whose mean would allow a tau of 0.7 (Spearman-Brown from the ICC; inf: the archs do not differ "
        "measurably), and a permutation test of whether the archs differ at all beyond seed noise.\n\n"
        f"{blocks}\n\nThe same with each seed as a block (two-way ANOVA over the seeds every arch has): a seed's "
        "offset shared by all archs (the same data order, say) moves every arch's mean alike and so no ranking; "
        "what is left is the arch x seed interaction. The permutation test shuffles archs within each seed.\n\n"
        f"## Archs\n\n{per_arch}\n"
    )
    out = Path(args.output_dir) if args.output_dir else Path(args.standalone).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(str(out / "compare.md"), text)
    summary["archs"] = [
        {"arch": list(a), "flops": info[a][0], "params": info[a][1], "in_band": a in subsets["band"],
         "supernet": {label: p[a] for label, p in predictors.items()},
         "standalone": {str(s): v for s, v in truth[a].items()}}
        for a in archs
    ]
    atomic_write(str(out / "compare.json"), json.dumps(json_safe(summary), indent=2) + "\n")
    plot_compare(out / "compare.png", predictors, archs, truth, info, band, summary)
    print(text)
    log(f"written: {out / 'compare.md'}, {out / 'compare.json'}, {out / 'compare.png'}")
    return 0


# ---- protocols ------------------------------------------------------------------------------------------


def read_protocol(path: str) -> Dict[Arch, Dict]:
    """{arch: {"score": float, or None when raced out on a slice, "images": int or None, "seconds"}} of a
    score file or a search's candidates.jsonl (images: recalibration + evaluation forwards; seconds: the
    candidate's wall time, or its scoring time)."""
    records = read_scores(Path(path))
    if not records:
        raise ValueError(f"{path}: no scores (a score file of this tool or a search's candidates.jsonl)")
    out = {}
    for r in records:
        if "arch" not in r or "score" not in r:
            raise ValueError(f"{path}: a line without arch/score: {json.dumps(r)[:80]}")
        arch = tuple(int(a) for a in r["arch"])
        if arch in out:
            raise ValueError(f"{path}: arch {arch_str(arch)} is scored twice; give one protocol run per file")
        images = [r[k] for k in ("images_recalib", "images_eval") if k in r]
        seconds = r.get("seconds_wall", r.get("seconds"))
        if seconds is None and any(k.startswith("seconds_") for k in r):
            seconds = sum(v for k, v in r.items() if k.startswith("seconds_"))
        out[arch] = {"score": float(r["score"]) if r.get("full", True) else None,
                     "images": sum(images) if images else None, "seconds": seconds}
    return out


def _total(records: Dict[Arch, Dict], key: str) -> Optional[float]:
    values = [r[key] for r in records.values()]
    return None if any(v is None for v in values) else float(sum(values))


def protocol_figures(reference: Dict[Arch, Dict], cheap: Dict[Arch, Dict], topk: int) -> Dict:
    """The cheap protocol's ranking of the archs both scored against the reference's: Kendall tau-b and
    Spearman rho over the archs with a full score in both, top-k overlap (a raced-out arch is not in the
    cheap top-k), whether the two bests agree (each file's best full score), and the cost ratios (whole files)."""
    from detnas_d2 import rank_stats as rs

    common = [a for a in reference if a in cheap and reference[a]["score"] is not None]
    scored = [a for a in common if cheap[a]["score"] is not None]
    ref, chp = [reference[a]["score"] for a in scored], [cheap[a]["score"] for a in scored]
    k = min(topk, len(common))
    ref_top = sorted(common, key=lambda a: -reference[a]["score"])[:k]
    cheap_top = sorted(scored, key=lambda a: -cheap[a]["score"])[:k]
    best = {name: max((a for a in p if p[a]["score"] is not None), key=lambda a: p[a]["score"])
            for name, p in (("reference", reference), ("cheap", cheap))}
    figures = {
        "archs_common": len(common), "archs_compared": len(scored), "raced_out": len(common) - len(scored),
        "tau": rs.kendall_tau_b(chp, ref) if len(scored) >= 2 else float("nan"),
        "rho": rs.spearman_rho(chp, ref) if len(scored) >= 2 else float("nan"),
        "topk": {"k": k, "hits": len(set(ref_top) & set(cheap_top)),
                 "reference_top_raced_out": sum(cheap[a]["score"] is None for a in ref_top)},
        "best_reference": list(best["reference"]), "best_cheap": list(best["cheap"]),
        "best_agrees": best["reference"] == best["cheap"],
        "best_cheap_reference_score": reference.get(best["cheap"], {}).get("score"),
        "best_reference_score": reference[best["reference"]]["score"],
    }
    for key in ("images", "seconds"):
        r, c = _total(reference, key), _total(cheap, key)
        figures[key] = {"reference": r, "cheap": c, "ratio": c / r if r and c is not None else None}
    return figures


def cmd_protocols(args):
    from tabulate import tabulate

    from detnas_d2.file_io import atomic_write

    figures = protocol_figures(read_protocol(args.reference), read_protocol(args.cheap), args.topk)
    if figures["archs_common"] < 2:
        sys.exit(f"{figures['archs_common']} arch(s) scored by both protocols: nothing to compare")
    top, gap = figures["topk"], None
    if figures["best_cheap_reference_score"] is not None:
        gap = figures["best_reference_score"] - figures["best_cheap_reference_score"]
    rows = [
        ["archs scored by both (with a full score in both)", f"{figures['archs_common']} ({figures['archs_compared']})"],
        ["Kendall tau-b", _fmt(figures["tau"], 3)], ["Spearman rho", _fmt(figures["rho"], 3)],
        [f"top-{top['k']} overlap", f"{top['hits']}/{top['k']} ({top['reference_top_raced_out']} of the reference "
                                    "top-k raced out)"],
        ["best arch agrees", "yes" if figures["best_agrees"] else
         f"no: the cheap best scores {_fmt(gap, 3)} below the reference best under the reference"
         if gap is not None else "no (the cheap best is not in the reference file)"],
    ]
    for key, unit in (("images", "image forwards"), ("seconds", "seconds")):
        f = figures[key]
        rows.append([f"{unit}: cheap / reference",
                     f"{_fmt(f['cheap'], 0)} / {_fmt(f['reference'], 0)} = {_fmt(f['ratio'], 3)}"
                     if f["ratio"] is not None else "n/a (not in both files)"])
    text = (f"## Scoring protocols: {args.cheap} against {args.reference}\n\n"
            + tabulate(rows, headers=["", "value"], tablefmt="pipe", disable_numparse=True) + "\n")
    print(text)
    if args.output:
        atomic_write(args.output, json.dumps(json_safe(
            dict(figures, reference_file=args.reference, cheap_file=args.cheap)), indent=2) + "\n")
        log(f"written: {args.output}")
    return 0


# ---- command line ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = (f"the search config: space, FLOPs input size (DETNAS.SEARCH.INPUT_SIZE) and FLOPs band "
                   f"(default {DEFAULT_SEARCH_CONFIG})")
    archs_help = "archs: a file (see above) or an inline arch; repeat to add more"

    p = sub.add_parser("sample", help="K archs stratified over FLOPs inside a band, written as an arch list")
    p.add_argument("--config-file", default=DEFAULT_SEARCH_CONFIG, help=config_help)
    p.add_argument("--num", "-k", type=int, default=12, help="archs to sample, one per FLOPs stratum")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flops-min", type=float, help="default: DETNAS.SEARCH.FLOPS_MIN (0: the space's min)")
    p.add_argument("--flops-max", type=float, help="default: DETNAS.SEARCH.FLOPS_MAX (0: the space's max)")
    p.add_argument("--include", action="append", help="archs to list first (e.g. a searched best_arch.yaml)")
    p.add_argument("--output", help="arch list file (default: stdout)")

    p = sub.add_parser("supernet", help="score archs on a supernet with the search's scorer (resumable)",
                       description="Trailing KEY VALUE options go to the search config, as for search_net.py "
                                   "(MODEL.WEIGHTS, DETNAS.SEARCH.*, DETNAS.BN_RECALIB.*).")
    p.add_argument("--config-file", default=DEFAULT_SEARCH_CONFIG, help="the search config (scoring protocol)")
    p.add_argument("--archs", action="append", required=True, help=archs_help)
    p.add_argument("--output", required=True, help="score file (JSON lines); its archs are not scored again")
    p.add_argument("--protocol", default="supernet", help="label of these scores (e.g. the supernet recipe)")
    p.add_argument("--limit", type=int, help="score at most this many new archs, then stop")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config options")

    p = sub.add_parser("standalone", help="retrain archs as pipeline steps 4-5, several seeds (resumable)")
    p.add_argument("--config-file", default=DEFAULT_SEARCH_CONFIG, help=config_help)
    p.add_argument("--archs", action="append", required=True, help=archs_help)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (SEED) per arch")
    p.add_argument("--output", required=True, help="score file (JSON lines); its (arch, seed) are not run again")
    p.add_argument("--work-dir", help="training folders (default: <output without .jsonl>_runs)")
    p.add_argument("--cls-config", default=DEFAULT_CLS_CONFIG, help="step 4 config")
    p.add_argument("--det-config", default=DEFAULT_DET_CONFIG, help="step 5 config")
    p.add_argument("--opts", action="append", help='"KEY VALUE ..." options for both steps (repeatable)')
    p.add_argument("--cls-opts", action="append", help='"KEY VALUE ..." options for step 4 only')
    p.add_argument("--det-opts", action="append", help='"KEY VALUE ..." options for step 5 only')
    p.add_argument("--quick", action="store_true", help="a few iterations per step (smoke test)")
    p.add_argument("--jobs", type=int, default=1, help="trainings at a time (concurrent processes)")
    p.add_argument("--threads", type=int,
                   help="OMP_NUM_THREADS per training (default: the cores / --jobs, unless OMP_NUM_THREADS is set)")
    p.add_argument("--num-gpus", type=int, default=1, help="--num-gpus of each training command")
    p.add_argument("--protocol", default="standalone", help="label of these scores")

    p = sub.add_parser("compare", help="rank correlations, top-k precision, seed noise, table and plot")
    p.add_argument("--supernet", action="append", required=True, help="supernet score file (repeat to compare several)")
    p.add_argument("--standalone", required=True, help="stand-alone score file")
    p.add_argument("--config-file", default=DEFAULT_SEARCH_CONFIG, help="where the default FLOPs band is read")
    p.add_argument("--flops-min", type=float, help="band (default: DETNAS.SEARCH.FLOPS_MIN; 0: none)")
    p.add_argument("--flops-max", type=float, help="band (default: DETNAS.SEARCH.FLOPS_MAX; 0: none)")
    p.add_argument("--top-fraction", type=float, default=0.2)
    p.add_argument("--baseline", help="a supernet protocol label: every other one's tau minus its tau, with interval")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--output-dir",
                   help="compare.md, compare.json, compare.png (default: the stand-alone file's folder)")

    p = sub.add_parser("protocols", help="a cheaper scoring protocol against a reference: ranking, best, cost")
    p.add_argument("--reference", required=True, help="score file or candidates.jsonl of the reference protocol")
    p.add_argument("--cheap", required=True, help="score file or candidates.jsonl of the cheaper protocol")
    p.add_argument("--topk", type=int, default=10, help="top-k overlap (default 10, the search's TOPK)")
    p.add_argument("--output", help="the figures as JSON")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "standalone":
        if args.jobs < 1:
            sys.exit(f"--jobs must be >= 1, got {args.jobs}")
        args.opts, args.cls_opts, args.det_opts = (split_opts(args.opts), split_opts(args.cls_opts),
                                                   split_opts(args.det_opts))
    commands = {"sample": cmd_sample, "supernet": cmd_supernet, "standalone": cmd_standalone, "compare": cmd_compare,
                "protocols": cmd_protocols}
    try:
        return commands[args.command](args) or 0
    except ValueError as e:  # bad archs, files, options: say what, without a traceback
        sys.exit(f"rank_audit {args.command}: {e}")
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM: what finished is in the output, a new start resumes
        return 130


if __name__ == "__main__":
    sys.exit(main())
