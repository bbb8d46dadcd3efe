"""The search state file (search_state.json): everything a search needs to resume exactly."""

import json
import os
import random
from typing import Dict, List, Tuple

from detectron2.utils.file_io import PathManager

from detnas_d2.file_io import atomic_write
from detnas_d2.user_errors import UserError

from .candidates import Arch

__all__ = ["SearchState", "SearchStateError", "diff_fingerprints"]

STATE_VERSION = 1


class SearchStateError(UserError):
    """A state file that cannot be resumed, or a folder that holds a search already."""


def _rng_state_to_json(state) -> list:
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


def _rng_state_from_json(data):
    version, internal, gauss_next = data
    if not isinstance(version, int) or not all(isinstance(v, int) for v in internal):
        raise ValueError("rng_state holds non-integers")
    return (version, tuple(internal), gauss_next)


class SearchState:
    """Everything a search needs to resume, as JSON (search_state.json).

    Fields: `fingerprint` (the settings that fix the search's sequence and scores), `generation`
    (the one in progress), `rng_state` (random.Random state at the start of that generation),
    `population` (that generation's candidates), `topk` (history indices of the best archs scored
    before it), `history` (every scored candidate, in scoring order), `race` (racing: the slice results of
    the generation in progress, by arch "0,1,..."), `finished`, `finalists` (finalists.py: one record per
    finalist and supernet scored).
    """

    def __init__(self, fingerprint: Dict, seed: int):
        self.fingerprint = fingerprint
        self.generation = 0
        self.rng_state = random.Random(seed).getstate()
        self.population: List[Tuple[Arch, str]] = []
        self.topk: List[int] = []
        self.history: List[Dict] = []
        self.race: Dict[str, List[Dict]] = {}
        self.finished = False
        self.finalists: List[Dict] = []

    def to_dict(self) -> Dict:
        return {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "generation": self.generation,
            "rng_state": _rng_state_to_json(self.rng_state),
            "population": [[list(arch), origin] for arch, origin in self.population],
            "topk": self.topk,
            "history": self.history,
            "race": self.race,
            "finished": self.finished,
            "finalists": self.finalists,
        }

    @classmethod
    def from_dict(cls, data: Dict) -> "SearchState":
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {STATE_VERSION}")
        state = cls(data["fingerprint"], 0)
        state.generation = int(data["generation"])
        state.rng_state = _rng_state_from_json(data["rng_state"])
        state.population = [(tuple(int(a) for a in arch), str(o)) for arch, o in data["population"]]
        state.topk = [int(i) for i in data["topk"]]
        state.history = list(data["history"])
        for record in state.history:
            record["arch"] = [int(a) for a in record["arch"]]
            record["generation"] = int(record["generation"])
            record["score"] = float(record["score"])
        state.race = dict(data.get("race", {}))  # absent in files of searches before racing
        state.finished = bool(data["finished"])
        state.finalists = list(
            data.get("finalists", [])
        )  # absent in files of searches before finalists
        return state

    def save(self, path: str):
        """Atomic write; the state it replaces is kept as `<path>.bak`."""
        # One C-encoded string: json.dump's streaming is 10x slower.
        atomic_write(path, json.dumps(self.to_dict()), backup=True)

    @classmethod
    def load(cls, path: str) -> "SearchState":
        local = PathManager.get_local_path(path)
        try:
            with PathManager.open(local, "r") as f:
                return cls.from_dict(json.load(f))
        except (ValueError, KeyError, TypeError, IndexError) as e:
            backup = local + ".bak"
            hint = (
                f" The state before the last write is in {backup}: copy it over {local} to resume"
                " from there."
                if os.path.exists(backup)
                else ""
            )
            raise SearchStateError(
                f"Search state file {local} is corrupt ({type(e).__name__}: {e}); it was left "
                f"untouched.{hint}"
            ) from e


def diff_fingerprints(saved: Dict, current: Dict) -> List[str]:
    keys = sorted(set(saved) | set(current))
    return [
        f"{k}: {saved.get(k)!r} -> {current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
    ]
