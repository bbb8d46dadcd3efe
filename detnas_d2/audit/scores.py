"""The audit's score files: JSON lines, one per scored arch (supernet) or per (arch, seed) (stand-alone).

Fields: arch (block ids), flops and params (the backbone's, at DETNAS.SEARCH.INPUT_SIZE of the search
config), score (the task's headline metric: bbox AP), protocol (a label), seed (the scoring seed, or the
training seed), seconds, images_recalib and images_eval (supernet: the image forwards), plus metadata:
kind, metric, settings (everything that fixes the score; a file only takes lines of one protocol and
settings), timings, top-1 of the stand-alone classifier, ...

Lines are appended as each score is done, so a run that stops keeps what it finished; a line cut short by
a kill is dropped on the next start.
"""

import json
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..file_io import atomic_write, read_json_lines
from ..user_errors import UserError
from .archs import arch_str
from .console import log

__all__ = [
    "append_score",
    "canonical_order",
    "check_protocol",
    "json_roundtrip",
    "read_scores",
    "score_arch_set",
]


def read_scores(path: Path, repair: bool = False) -> List[Dict]:
    """The lines of a score file. A last line cut short (a run killed while writing it) is dropped, and
    with `repair` the file is rewritten without it; any other unreadable line is an error."""
    return read_json_lines(path, repair=repair, log=log)


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
            diff = [
                k
                for k in sorted(set(settings) | set(r.get("settings") or {}))
                if settings.get(k) != (r.get("settings") or {}).get(k)
            ]
            raise UserError(
                f"{path} holds {theirs[0]} scores of protocol '{theirs[1]}' with other settings (differing: "
                f"{', '.join(diff) or 'kind/protocol'}); this run is {kind} '{protocol}'. Write to another "
                "--output, or remove the file to start over."
            )


def canonical_order(path: Path, keys: List, key_of: Callable):
    """Rewrite the file with its lines in the order of `keys` (then any others, as they were)."""
    records = read_scores(path)
    position = {k: i for i, k in enumerate(keys)}
    ordered = sorted(records, key=lambda r: position.get(key_of(r), len(keys)))
    if ordered != records:
        atomic_write(str(path), "".join(json.dumps(r) + "\n" for r in ordered))


def json_roundtrip(value):
    """`value` as it reads back from a score file (tuples become lists, ...)."""
    return json.loads(json.dumps(value))


def score_arch_set(
    *,
    archs: Sequence,
    table,
    output: str,
    protocol: str,
    metric: str,
    seed: int,
    settings: Dict,
    build_scorer: Callable,
    limit: Optional[int] = None,
    extra_fields: Sequence[str] = (),
) -> int:
    """Append a "supernet"-kind score line per arch of `archs` not yet in score file `output` (at most
    `limit` new ones), scored by `build_scorer()` (called only when there is something to score: loading
    a supernet takes a while) whose `score(arch)` returns score, images_recalib, images_eval, seconds_*
    and `extra_fields`. `table`: FLOPs and params. Returns the exit status."""
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
    scorer = build_scorer()
    for i, arch in enumerate(todo, start=1):
        start = time.perf_counter()
        result = scorer.score(arch)
        seconds = time.perf_counter() - start
        name = arch_str(arch)
        record = {
            "arch": list(arch),
            "flops": table.flops(arch),
            "params": table.params(arch),
            "score": result["score"],
            "protocol": protocol,
            "seed": seed,
            "seconds": round(seconds, 3),
            "images_recalib": result["images_recalib"],
            "images_eval": result["images_eval"],
            "kind": "supernet",
            "metric": metric,
            "arch_str": name,
            **{k: result[k] for k in extra_fields},
            **{k: round(v, 3) for k, v in result.items() if k.startswith("seconds_")},
            "settings": settings,
        }
        append_score(out, record)
        log(
            f"[{i}/{len(todo)}] {name}: {metric} {result['score']:.3f} "
            f"({table.flops(arch) / 1e6:.2f} MFLOPs, {seconds:.1f}s)"
        )
    return 0
