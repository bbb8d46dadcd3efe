"""Zero-shot scores of an arch set (no supernet, no data), as score lines that `compare` and `protocols`
read as they read supernet scores: kind "supernet" (a predictor's score), metric and protocol the
scorer's name (zero_shot_entropy, zero_shot_zen), images_recalib 0 and images_eval the random images
forwarded. Resumable: an arch with a line in the score file is not scored again."""

import time
from pathlib import Path
from typing import Optional, Sequence

from ..zero_shot import ZeroShotScorer, ZeroShotSettings
from .archs import arch_str, read_archs, search_space_and_table
from .console import log
from .scores import append_score, check_protocol, json_roundtrip, read_scores

__all__ = ["score_zero_shot"]


def score_zero_shot(
    *,
    config: str,
    opts: Sequence[str],
    archs: Sequence[str],
    method: str,
    output: str,
    protocol: Optional[str] = None,
    limit: Optional[int] = None,
) -> int:
    """Score the archs of `archs` (arch sets) of the space of search config `config` with KEY VALUE `opts`
    (DETNAS.SEARCH.ZERO_SHOT.*, DETNAS.SEARCH.SEED, MODEL.DEVICE, ...) by zero-shot `method` (entropy,
    zen), appending to score file `output`; at most `limit` new archs. `protocol`: the label (default
    the scorer's name). Returns the exit status."""
    cfg, space, table = search_space_and_table(config, opts)
    archs = read_archs(archs, space)
    zero_shot = ZeroShotSettings.from_cfg(cfg, method)
    protocol = protocol or zero_shot.fitness
    fingerprint = zero_shot.fingerprint()
    settings = json_roundtrip(
        {
            "scorer": fingerprint["scorer"],
            **fingerprint["zero_shot"],
            "space": space.name,
            "width_mult": space.width_mult,
            "block_style": space.block_style,
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
    scorer = ZeroShotScorer(cfg, zero_shot)
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
            "seed": zero_shot.seed,
            "seconds": round(seconds, 3),
            "images_recalib": result["images_recalib"],
            "images_eval": result["images_eval"],
            "kind": "supernet",
            "metric": zero_shot.fitness,
            "arch_str": arch_str(arch),
            "seed_scores": result["seed_scores"],
            **{k: round(v, 3) for k, v in result.items() if k.startswith("seconds_")},
            "settings": settings,
        }
        append_score(out, record)
        log(
            f"[{i}/{len(todo)}] {arch_str(arch)}: {zero_shot.fitness} {result['score']:.3f} "
            f"({table.flops(arch) / 1e6:.2f} MFLOPs, {seconds:.1f}s)"
        )
    return 0
