"""Evolutionary (and random) architecture search with exactly resumable state.

The algorithm is the one of SPOS/DetNAS: a first population of random archs; then every generation
is made of NUM_MUTATION mutations and NUM_CROSSOVER crossovers of the top-k archs scored so far,
filled up to POPULATION with random archs. Every arch meets the constraints and none is scored twice.

Resume is exact. A generation's candidate list is a function of the RNG state at the start of the
generation, the top-k and the set of archs scored in earlier generations, all of which are kept in
the state file. A resumed search regenerates the list of the generation it was in, reuses the scores
of the candidates already scored and scores the rest: it ends with the same history as a search
never interrupted. The state is written after every scored chunk of candidates.
"""
import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from detectron2.utils.file_io import PathManager

from detnas_d2.search_space import NUM_CHOICES, SearchSpace

__all__ = [
    "ArchConstraints",
    "SearchSettings",
    "SearchState",
    "SearchStateError",
    "EvolutionSearch",
    "generate_candidates",
]

logger = logging.getLogger(__name__)

Arch = Tuple[int, ...]

STATE_VERSION = 1
# Bounded retries: a mutation or crossover is tried at most this many times per wanted child,
# a random arch at most RANDOM_ATTEMPTS times per wanted arch.
MUTATION_ATTEMPTS = 10
RANDOM_ATTEMPTS = 1000
FEASIBILITY_DRAWS = 20000


class ArchConstraints:
    """FLOPs/params limits of the backbone, read from a FLOPs table (0 disables a bound)."""

    def __init__(
        self, table, space: SearchSpace, input_size: int, flops_min=0.0, flops_max=0.0, params_max=0.0
    ):
        self.table = table
        self.space = space
        self.input_size = input_size
        self.flops_min = float(flops_min)
        self.flops_max = float(flops_max)
        self.params_max = float(params_max)

    @classmethod
    def from_cfg(cls, cfg, space: SearchSpace):
        from detnas_d2.flops import get_flops_table

        table = get_flops_table(space, cfg.SEARCH.INPUT_SIZE, head="none")
        s = cfg.SEARCH
        return cls(table, space, s.INPUT_SIZE, s.FLOPS_MIN, s.FLOPS_MAX, s.PARAMS_MAX)

    def measure(self, arch: Sequence[int]) -> Tuple[float, float]:
        return float(self.table.flops(arch)), float(self.table.params(arch))

    def __call__(self, arch: Sequence[int]) -> bool:
        flops, params = self.measure(arch)
        if self.flops_min and flops < self.flops_min:
            return False
        if self.flops_max and flops > self.flops_max:
            return False
        return not (self.params_max and params > self.params_max)

    def describe(self) -> str:
        lo = f"{self.flops_min / 1e6:.1f}M" if self.flops_min else "-"
        hi = f"{self.flops_max / 1e6:.1f}M" if self.flops_max else "-"
        params = f"{self.params_max / 1e6:.3f}M" if self.params_max else "-"
        return f"FLOPs in [{lo}, {hi}], params <= {params}"

    def check_feasible(self, seed: int = 0):
        """Raise ValueError, giving the space's ranges, if no arch can meet the limits."""
        flops_lo, flops_hi = float(self.table.min_flops), float(self.table.max_flops)
        params_lo, params_hi = float(self.table.min_params), float(self.table.max_params)
        ranges = (
            f"space '{self.space.name}' (width {self.space.width_mult}) at input "
            f"{self.input_size}: backbone FLOPs {flops_lo / 1e6:.2f}M..{flops_hi / 1e6:.2f}M, "
            f"params {params_lo / 1e6:.3f}M..{params_hi / 1e6:.3f}M"
        )
        problems = []
        if self.flops_min and self.flops_max and self.flops_min > self.flops_max:
            problems.append(f"SEARCH.FLOPS_MIN={self.flops_min:g} > SEARCH.FLOPS_MAX={self.flops_max:g}")
        if self.flops_max and self.flops_max < flops_lo:
            problems.append(f"SEARCH.FLOPS_MAX={self.flops_max:g} is below the smallest FLOPs")
        if self.flops_min and self.flops_min > flops_hi:
            problems.append(f"SEARCH.FLOPS_MIN={self.flops_min:g} is above the largest FLOPs")
        if self.params_max and self.params_max < params_lo:
            problems.append(f"SEARCH.PARAMS_MAX={self.params_max:g} is below the smallest params")
        if not problems:
            rng = random.Random(seed)
            if not any(self(self.space.random_arch(rng)) for _ in range(FEASIBILITY_DRAWS)):
                problems.append(
                    f"no arch out of {FEASIBILITY_DRAWS} random draws meets {self.describe()}"
                )
        if problems:
            raise ValueError("Impossible search constraints: " + "; ".join(problems) + f". {ranges}.")


@dataclass(frozen=True)
class SearchSettings:
    mode: str = "evolution"
    population: int = 50
    generations: int = 20
    topk: int = 10
    num_mutation: int = 25
    mutation_prob: float = 0.1
    num_crossover: int = 25
    max_candidates: int = 1000
    seed: int = 0

    @classmethod
    def from_cfg(cls, cfg):
        s = cfg.SEARCH
        settings = cls(
            s.MODE, s.POPULATION, s.GENERATIONS, s.TOPK, s.NUM_MUTATION, s.MUTATION_PROB,
            s.NUM_CROSSOVER, s.MAX_CANDIDATES, s.SEED,
        )
        settings.validate()
        return settings

    def validate(self):
        if self.mode not in ("evolution", "random"):
            raise ValueError(f"SEARCH.MODE must be 'evolution' or 'random', got '{self.mode}'")
        for key in ("population", "generations", "topk", "max_candidates"):
            if getattr(self, key) < 1:
                raise ValueError(f"SEARCH.{key.upper()} must be >= 1, got {getattr(self, key)}")
        for key in ("num_mutation", "num_crossover"):
            if getattr(self, key) < 0:
                raise ValueError(f"SEARCH.{key.upper()} must be >= 0, got {getattr(self, key)}")
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise ValueError(f"SEARCH.MUTATION_PROB must be in [0, 1], got {self.mutation_prob}")

    @property
    def budget(self) -> int:
        return min(self.max_candidates, self.population * self.generations)


def generate_candidates(
    rng: random.Random,
    space: SearchSpace,
    settings: SearchSettings,
    generation: int,
    parents: Sequence[Arch],
    accept: Callable[[Arch], bool],
    seen: set,
) -> List[Tuple[Arch, str]]:
    """The candidate list of one generation as (arch, origin) pairs, all unseen and accepted.

    Consumes `rng` deterministically: the same inputs and RNG state give the same list.
    """
    out: List[Tuple[Arch, str]] = []
    taken = set(seen)

    def try_add(arch, origin):
        if arch in taken or not accept(arch):
            return False
        taken.add(arch)
        out.append((arch, origin))
        return True

    if settings.mode == "evolution" and generation > 0 and parents:
        added = 0
        for _ in range(settings.num_mutation * MUTATION_ATTEMPTS):
            if added == settings.num_mutation:
                break
            parent = parents[rng.randrange(len(parents))]
            child = tuple(
                rng.randrange(NUM_CHOICES) if rng.random() < settings.mutation_prob else gene
                for gene in parent
            )
            added += try_add(child, "mutation")
        added = 0
        for _ in range(settings.num_crossover * MUTATION_ATTEMPTS):
            if added == settings.num_crossover:
                break
            a = parents[rng.randrange(len(parents))]
            b = parents[rng.randrange(len(parents))]
            child = tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))
            added += try_add(child, "crossover")
    wanted = settings.population - len(out)
    for _ in range(wanted * RANDOM_ATTEMPTS):
        if len(out) == settings.population:
            break
        try_add(space.random_arch(rng), "random")
    return out


class SearchStateError(RuntimeError):
    pass


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
    before it), `history` (every scored candidate, in scoring order), `finished`.
    """

    def __init__(self, fingerprint: Dict, seed: int):
        self.fingerprint = fingerprint
        self.generation = 0
        self.rng_state = random.Random(seed).getstate()
        self.population: List[Tuple[Arch, str]] = []
        self.topk: List[int] = []
        self.history: List[Dict] = []
        self.finished = False

    def to_dict(self) -> Dict:
        return {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "generation": self.generation,
            "rng_state": _rng_state_to_json(self.rng_state),
            "population": [[list(arch), origin] for arch, origin in self.population],
            "topk": self.topk,
            "history": self.history,
            "finished": self.finished,
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
        state.finished = bool(data["finished"])
        return state

    def save(self, path: str):
        """Atomic write (tmp file + os.replace); the state it replaces is kept as `<path>.bak`."""
        PathManager.mkdirs(os.path.dirname(path) or ".")
        local = PathManager.get_local_path(path)
        tmp = local + ".tmp"
        text = json.dumps(self.to_dict())  # one C-encoded string: json.dump's streaming is 10x slower
        with PathManager.open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(local):  # back up the old state; `local` itself never goes missing
            shutil.copyfile(local, tmp + ".bak")
            os.replace(tmp + ".bak", local + ".bak")
        os.replace(tmp, local)

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
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


class EvolutionSearch:
    """Runs a search; rank 0 only. Scoring is delegated to `score_fn(archs) -> list of dicts`.

    Each dict returned by `score_fn` holds at least "score"; other keys (timings) are stored in the
    history record as they are.
    """

    def __init__(
        self,
        settings: SearchSettings,
        space: SearchSpace,
        constraints: ArchConstraints,
        state_path: Optional[str],
        fingerprint: Optional[Dict] = None,
        resume: bool = False,
    ):
        self.settings = settings
        self.space = space
        self.constraints = constraints
        self.state_path = state_path
        fingerprint = dict(fingerprint or {})
        # MAX_CANDIDATES and GENERATIONS only say when to stop: a resumed search may extend them.
        fingerprint.update(
            {k: v for k, v in asdict(settings).items() if k not in ("max_candidates", "generations")}
        )
        fingerprint["space"] = [space.name, space.width_mult]
        fingerprint["constraints"] = [constraints.flops_min, constraints.flops_max, constraints.params_max]
        fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from the file
        self.state = self._initial_state(fingerprint, resume)

    def _initial_state(self, fingerprint, resume) -> SearchState:
        path = self.state_path
        exists = path is not None and PathManager.exists(path)
        if exists and not resume:
            raise SearchStateError(
                f"{path} already holds a search: pass --resume to continue it, or choose another "
                "OUTPUT_DIR (or delete the file) to start a new one."
            )
        if not exists:
            if resume:
                logger.info(f"No search state at {path}: starting a new search.")
            return SearchState(fingerprint, self.settings.seed)
        state = SearchState.load(path)
        changes = diff_fingerprints(state.fingerprint, fingerprint)
        if changes:
            raise SearchStateError(
                f"{path} was written by a search with other settings, so it cannot be resumed "
                f"with these: {'; '.join(changes)}"
            )
        logger.info(
            f"Resuming the search of {path}: generation {state.generation}, "
            f"{len(state.history)} candidates scored."
        )
        if state.finished:
            state.finished = False  # a larger budget (MAX_CANDIDATES/GENERATIONS) may continue it
        return state

    # ---- helpers -------------------------------------------------------------------------------
    @property
    def history(self) -> List[Dict]:
        return self.state.history

    def _select_topk(self) -> List[int]:
        order = sorted(range(len(self.history)), key=lambda i: (-self.history[i]["score"], i))
        return order[: self.settings.topk]

    def best(self) -> Optional[Dict]:
        top = self._select_topk()
        return self.history[top[0]] if top else None

    def _save(self):
        if self.state_path is not None:
            self.state.save(self.state_path)

    def _start_generation(self):
        """The current generation's candidates, generated from the state at its start, and the RNG
        state after generating them (the next generation's)."""
        g = self.state.generation
        rng = random.Random()
        rng.setstate(self.state.rng_state)
        seen = {tuple(r["arch"]) for r in self.history if r["generation"] < g}
        parents = [tuple(self.history[i]["arch"]) for i in self.state.topk]
        population = generate_candidates(
            rng, self.space, self.settings, g, parents, self.constraints, seen
        )
        if self.state.population and population != self.state.population:
            raise SearchStateError(
                f"{self.state_path}: generation {g} regenerates other candidates than the state "
                "file records (was it written by another version of detnas-d2?); start a new search."
            )
        return population, rng.getstate()

    # ---- the loop ------------------------------------------------------------------------------
    def run(self, score_fn, chunk_size: int = 1, callbacks=()) -> SearchState:
        """Score candidates until GENERATIONS generations or MAX_CANDIDATES are done.

        callbacks: objects with optional `after_candidate(search, record)` and
        `after_generation(search, generation)` methods.
        """
        s, state = self.settings, self.state
        mark = time.perf_counter()
        while state.generation < s.generations and len(self.history) < s.max_candidates:
            g = state.generation
            population, next_rng_state = self._start_generation()
            if not population:
                logger.warning(
                    f"Generation {g}: no new arch meets {self.constraints.describe()} within the "
                    "bounded attempts; stopping the search."
                )
                break
            if not state.population:
                state.population = population
                self._save()
            scored = {tuple(r["arch"]) for r in self.history if r["generation"] == g}
            pending = [(a, o) for a, o in population if a not in scored]
            budget = s.max_candidates - len(self.history)
            complete = len(pending) <= budget
            pending = pending[:budget]
            for start in range(0, len(pending), chunk_size):
                chunk = pending[start : start + chunk_size]
                results = score_fn([arch for arch, _ in chunk])
                now = time.perf_counter()
                # Wall time per candidate since the previous chunk was scored: its saving, outputs
                # and (at a generation's start) selection and candidate generation included.
                seconds_wall, mark = (now - mark) / len(chunk), now
                records = []
                for (arch, origin), result in zip(chunk, results):
                    flops, params = self.constraints.measure(arch)
                    record = {
                        "index": len(self.history),
                        "generation": g,
                        "origin": origin,
                        "arch": list(arch),
                        "flops": flops,
                        "params": params,
                    }
                    record.update(result)
                    record["score"] = float(record["score"])
                    record["seconds_wall"] = seconds_wall
                    self.history.append(record)
                    records.append(record)
                self._save()
                for record in records:
                    _call(callbacks, "after_candidate", self, record)
            if not complete:
                break  # the budget ends inside this generation; a larger budget resumes it here
            state.generation = g + 1
            state.rng_state = next_rng_state
            state.population = []
            state.topk = self._select_topk()
            self._save()
            _call(callbacks, "after_generation", self, g)
        state.finished = True
        self._save()
        return state


def _call(callbacks, name, *args):
    for cb in callbacks:
        fn = getattr(cb, name, None)
        if fn is not None:
            fn(*args)
