"""Supernet scores of an arch set, with the search's own scorer and settings (resumable: an arch with a
line in the score file is not scored again)."""

import hashlib
import os
import time
from pathlib import Path
from typing import Optional, Sequence

from ..search import ScoringSettings, build_scorer
from .archs import arch_str, read_archs, search_space_and_table
from .console import log
from .scores import append_score, check_protocol, json_roundtrip, read_scores

__all__ = ["file_sha1", "score_supernet"]


def file_sha1(path: str) -> Optional[str]:
    """The first 12 hex digits of a local file's SHA-1 (a checkpoint trained again in place is another
    protocol); None for a remote or missing file."""
    if not path or "://" in path or not os.path.isfile(path):
        return None
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def score_supernet(
    *,
    config: str,
    opts: Sequence[str],
    archs: Sequence[str],
    output: str,
    protocol: str,
    limit: Optional[int] = None,
) -> int:
    """Score the archs of `archs` (arch sets) on the supernet of search config `config` with KEY VALUE
    `opts` (MODEL.WEIGHTS, DETNAS.SEARCH.*, DETNAS.BN_RECALIB.*), appending to score file `output`; at most
    `limit` new archs. Returns the exit status."""
    cfg, space, table = search_space_and_table(config, opts)
    archs = read_archs(archs, space)
    scoring = ScoringSettings.from_cfg(cfg)
    weights = (
        scoring.weights
        if "://" in scoring.weights or not scoring.weights
        else os.path.abspath(scoring.weights)
    )
    settings = json_roundtrip(
        {
            "weights": weights,
            "weights_sha1": file_sha1(weights),
            "fitness": scoring.fitness,
            "space": space.name,
            "width_mult": space.width_mult,
            "input_size": int(cfg.DETNAS.SEARCH.INPUT_SIZE),
            "recalib_dataset": scoring.recalib.dataset,
            "recalib_images": scoring.recalib.images,
            "recalib_batch_size": scoring.recalib.batch_size,
            "eval_dataset": scoring.eval_dataset,
            "eval_images": scoring.eval_images,
            "eval_batch_size": scoring.eval_batch_size,
            "meta_architecture": scoring.meta_architecture,
            **({"eval_min_size": scoring.eval_min_size} if scoring.eval_min_size else {}),
        }
    )
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = read_scores(out, repair=True)
    check_protocol(records, "supernet", protocol, settings, out)
    done = {tuple(r["arch"]) for r in records}
    todo = [a for a in archs if a not in done]
    log(
        f"{len(archs)} archs: {len(archs) - len(todo)} already scored in {out}, {len(todo)} to score"
    )
    if limit is not None:
        todo = todo[:limit]
    if not todo:
        return 0
    scorer = build_scorer(
        cfg, scoring
    )  # only when there is something to score: loading takes a while
    for i, arch in enumerate(todo, start=1):
        start = time.perf_counter()
        result = scorer.score(arch)
        seconds = time.perf_counter() - start
        record = {
            "arch": list(arch),
            "flops": table.flops(arch),
            "params": table.params(arch),
            "score": result["score"],
            "protocol": protocol,
            "seed": scoring.seed,
            "seconds": round(seconds, 3),
            "images_recalib": result["images_recalib"],
            "images_eval": result["images_eval"],
            "kind": "supernet",
            "metric": scoring.fitness,
            "arch_str": arch_str(arch),
            **{k: round(v, 3) for k, v in result.items() if k.startswith("seconds_")},
            "settings": settings,
        }
        append_score(out, record)
        log(
            f"[{i}/{len(todo)}] {arch_str(arch)}: {scoring.fitness} {result['score']:.3f} "
            f"({table.flops(arch) / 1e6:.2f} MFLOPs, {seconds:.1f}s)"
        )
    return 0
