"""Arch sets of the audit: read from files or inline archs, or sampled stratified over FLOPs.

An arch set (--archs, one or more): a text file with one arch per line (comma-separated block ids or
names, `#` comments), a YAML list of archs, a JSON-lines file with an "arch" per line (a search's
candidates.jsonl, or a score file), a JSON list, one arch file (best_arch.yaml), or an inline arch
("0,1,2,...", "random:SEED").
"""

import json
import os
import random
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import yaml

from ..arch_io import load_arch
from ..config import get_detnas_cfg
from ..config_files import config_file
from ..file_io import read_json_lines
from ..flops import CACHE_ENV, get_flops_table
from ..search_space import space_from_cfg
from .console import log

__all__ = [
    "DEFAULT_SEARCH_CONFIG",
    "Arch",
    "arch_str",
    "flops_band",
    "flops_table",
    "read_archs",
    "sample_stratified",
    "search_space_and_table",
]

DEFAULT_SEARCH_CONFIG = "configs/Toy/search_det.yaml"
FLOPS_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "detnas-d2", "flops")

Arch = Tuple[int, ...]


def arch_str(arch: Sequence[int]) -> str:
    return ",".join(str(a) for a in arch)


def flops_table(space, input_size):
    """The FLOPs table, cached on disk ($DETNAS_FLOPS_CACHE_DIR, else ~/.cache/detnas-d2/flops)."""
    return get_flops_table(
        space, input_size, cache_dir=os.environ.get(CACHE_ENV) or FLOPS_CACHE_DIR
    )


def search_space_and_table(config: str, opts=()):
    """(cfg, space, FLOPs table at DETNAS.SEARCH.INPUT_SIZE) of a search config (a path, or one of the
    package's configs)."""
    cfg = get_detnas_cfg(config_file(config), list(opts))
    space = space_from_cfg(cfg)
    return cfg, space, flops_table(space, int(cfg.DETNAS.SEARCH.INPUT_SIZE))


def _arch_from_item(item, space, where: str) -> Arch:
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
    archs: List[Arch] = []
    for spec in specs:
        path = Path(spec)
        if not path.is_file():
            archs.append(load_arch(spec, space))
            continue
        if path.suffix == ".jsonl":
            records = read_json_lines(path, log=log)
            archs += [
                _arch_from_item(r, space, f"{spec}: line {i}")
                for i, r in enumerate(records, start=1)
            ]
            continue
        text = path.read_text()
        if path.suffix == ".json":  # a list of archs, or one
            data = json.loads(text)
            items = data if isinstance(data, list) else [data]
            archs += [
                _arch_from_item(item, space, f"{spec}: entry {i}")
                for i, item in enumerate(items, 1)
            ]
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
            if isinstance(data, list):
                archs += [
                    _arch_from_item(item, space, f"{spec}: entry {i}")
                    for i, item in enumerate(data, 1)
                ]
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


def flops_band(
    cfg, table, flops_min: Optional[float], flops_max: Optional[float]
) -> Tuple[float, float]:
    """The FLOPs band: the given bounds, else the search config's (0: no bound, i.e. the space's range)."""
    lo = cfg.DETNAS.SEARCH.FLOPS_MIN if flops_min is None else flops_min
    hi = cfg.DETNAS.SEARCH.FLOPS_MAX if flops_max is None else flops_max
    return float(lo or table.min_flops), float(hi or table.max_flops)


def sample_stratified(
    space, table, k: int, lo: float, hi: float, seed: int, draws: int = 20000
) -> List[Arch]:
    """K distinct archs, one per FLOPs stratum: [lo, hi] cut into K strata of equal width, each arch drawn
    uniformly among `draws` random archs that fall in its stratum; a stratum that none falls in (the ends
    of the space's range are rare under uniform sampling) gets a random arch moved there one layer at a
    time (each move a random layer to a random block that brings the FLOPs toward the stratum)."""
    if k < 1:
        raise ValueError(f"--num must be >= 1, got {k}")
    lo, hi = max(lo, table.min_flops), min(hi, table.max_flops)
    if lo >= hi:
        raise ValueError(
            f"empty FLOPs band [{lo / 1e6:.2f}M, {hi / 1e6:.2f}M] (the space spans "
            f"{table.min_flops / 1e6:.2f}M..{table.max_flops / 1e6:.2f}M)"
        )
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
                options = [
                    c for c in range(len(row)) if (row[c] > current if f < a else row[c] < current)
                ]
                if options:
                    arch[layer] = rng.choice(options)
            if stratum(table.flops(arch)) == s and tuple(arch) not in chosen:
                chosen.append(tuple(arch))
                break
        else:
            raise RuntimeError(f"no arch found with FLOPs in [{a / 1e6:.3f}M, {b / 1e6:.3f}M]")
    return chosen
