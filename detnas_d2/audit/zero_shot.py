"""Zero-shot scores of an arch set (no supernet, no data), as score lines that `compare` and `protocols`
read as they read supernet scores: kind "supernet" (a predictor's score), metric and protocol the
scorer's name (zero_shot_entropy, zero_shot_zen), images_recalib 0 and images_eval the random images
forwarded. Resumable: an arch with a line in the score file is not scored again."""

from typing import Optional, Sequence

from ..zero_shot import ZeroShotScorer, ZeroShotSettings
from .archs import read_archs, search_space_and_table
from .scores import json_roundtrip, score_arch_set

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
    return score_arch_set(
        archs=archs,
        table=table,
        output=output,
        protocol=protocol,
        metric=zero_shot.fitness,
        seed=zero_shot.seed,
        settings=settings,
        build_scorer=lambda: ZeroShotScorer(cfg, zero_shot),
        limit=limit,
        extra_fields=("seed_scores",),
    )
