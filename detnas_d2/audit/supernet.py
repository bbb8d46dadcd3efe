"""Supernet scores of an arch set, with the search's own scorer and settings (resumable: an arch with a
line in the score file is not scored again)."""

import hashlib
import os
from typing import Optional, Sequence

from ..search import ScoringSettings, build_scorer
from .archs import read_archs, search_space_and_table
from .scores import json_roundtrip, score_arch_set

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
    return score_arch_set(
        archs=archs,
        table=table,
        output=output,
        protocol=protocol,
        metric=scoring.fitness,
        seed=scoring.seed,
        settings=settings,
        build_scorer=lambda: build_scorer(cfg, scoring),
        limit=limit,
    )
