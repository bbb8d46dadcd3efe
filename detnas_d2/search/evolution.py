"""Evolutionary (and random) architecture search with exactly resumable state.

The algorithm is the one of SPOS/DetNAS: a first population of random archs; then every generation
is made of NUM_MUTATION mutations and NUM_CROSSOVER crossovers of the top-k archs scored so far,
filled up to POPULATION with random archs (candidates.py). Every arch meets the constraints and none
is scored twice.

Resume is exact. A generation's candidate list is a function of the RNG state at the start of the
generation, the top-k and the set of archs scored in earlier generations, all of which are kept in
the state file (state.py). A resumed search regenerates the list of the generation it was in, reuses
the scores of the candidates already scored and scores the rest: it ends with the same history as a
search never interrupted. The state is written after every scored chunk of candidates.

With racing (racing.py), a generation is scored rung by rung: the slice results so far are kept in the
state (`race`), and the generation's records are written when its race ends, in candidate order.
"""

import logging
import random
import time
from typing import Dict, List, Optional

from detectron2.utils.file_io import PathManager

from detnas_d2.search_space import SearchSpace

from .candidates import generate_candidates
from .constraints import ArchConstraints
from .predictor import screen_candidates
from .racing import SLICE_SCORES, is_full, promoted, rung_margin
from .settings import (
    FinalistSettings,
    ScoringSettings,
    SearchSettings,
    adopt_supernet_hashes,
    changed_supernets,
    search_fingerprint,
)
from .state import SearchState, SearchStateError, diff_fingerprints

__all__ = ["EvolutionSearch", "top_candidates"]

logger = logging.getLogger(__name__)


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
        scoring: Optional[ScoringSettings] = None,
        resume: bool = False,
        finalists: Optional[FinalistSettings] = None,
    ):
        self.settings = settings
        self.space = space
        self.constraints = constraints
        self.state_path = state_path
        self._predicted: Dict = {}  # this generation's predicted scores (arch -> value), if screened
        fingerprint = search_fingerprint(settings, space, constraints, scoring, finalists)
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
        changed = changed_supernets(state.fingerprint, fingerprint)
        if changed:
            raise SearchStateError(
                f"{path} was written by a search on other supernet weights: {'; '.join(changed)}. "
                "Resume with the weights it started with, or start a new search in another OUTPUT_DIR"
            )
        for option in adopt_supernet_hashes(state.fingerprint, fingerprint):
            logger.warning(
                f"{path} was written before searches recorded their supernets' contents: {option} "
                "cannot be checked to be the file the search started with (it is from now on)"
            )
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
        return top_candidates(self.history, self.settings.topk)

    def best(self) -> Optional[Dict]:
        top = self._select_topk()
        return self.history[top[0]] if top else None

    def save(self):
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
        population = generate_candidates(rng, self.settings, g, parents, self.constraints, seen)
        predicted = {}
        earlier = [
            r for r in self.history if r["generation"] < g and is_full(r)
        ]  # what the generation started with
        if self.settings.predictor and g > 0 and len(earlier) >= self.settings.predictor_min_scored:
            population, values = screen_candidates(
                population, earlier, self.settings.predictor_keep, self.space
            )
            predicted = {arch: value for (arch, _), value in zip(population, values)}
        self._predicted = predicted
        if self.state.population and population != self.state.population:
            raise SearchStateError(
                f"{self.state_path}: generation {g} regenerates other candidates than the state "
                "file records (was it written by another version of detnas-d2?); start a new search."
            )
        return population, rng.getstate()

    # ---- the loop ------------------------------------------------------------------------------
    def run(self, score_fn, chunk_size: int = 1, callbacks=()) -> SearchState:
        """Score candidates until GENERATIONS generations or MAX_CANDIDATES are done.

        `score_fn(archs)` scores on the whole evaluation set; with racing, `score_fn(archs, fraction)` on
        its first `fraction` (1.0: the whole set). callbacks: objects with optional
        `after_candidate(search, record)` and `after_generation(search, generation)` methods.
        """
        s, state = self.settings, self.state
        self._mark = time.perf_counter()
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
                self.save()
            scored = {tuple(r["arch"]) for r in self.history if r["generation"] == g}
            pending = [(a, o) for a, o in population if a not in scored]
            budget = s.max_candidates - len(self.history)
            complete = len(pending) <= budget
            pending = pending[:budget]
            if s.racing_slices:
                self._race(g, pending, score_fn, chunk_size, callbacks)
            else:
                for chunk, results in self._score_chunks(pending, chunk_size, score_fn):
                    records = [
                        self._record(g, arch, origin, result)
                        for (arch, origin), result in zip(chunk, results)
                    ]
                    self.history.extend(records)
                    self.save()
                    _call_each(callbacks, "after_candidate", self, records)
            if not complete:
                break  # the budget ends inside this generation; a larger budget resumes it here
            state.generation = g + 1
            state.rng_state = next_rng_state
            state.population = []
            state.topk = self._select_topk()
            self.save()
            _call(callbacks, "after_generation", self, g)
        state.finished = True
        self.save()
        return state

    def _score_chunks(self, candidates, chunk_size, score_fn, *fraction):
        """(chunk, results) for consecutive chunks of `candidates`; each result gets "seconds_wall": the wall
        time per candidate since the previous chunk (saving, outputs and, at a generation's start,
        selection and candidate generation included)."""
        for start in range(0, len(candidates), chunk_size):
            chunk = candidates[start : start + chunk_size]
            results = score_fn([arch for arch, _ in chunk], *fraction)
            now = time.perf_counter()
            seconds_wall, self._mark = (now - self._mark) / len(chunk), now
            yield chunk, [dict(result, seconds_wall=seconds_wall) for result in results]

    def _record(self, g, arch, origin, result) -> Dict:
        record = {"index": len(self.history), "generation": g, "origin": origin, "arch": list(arch)}
        record.update(self.constraints.measure(arch))
        if arch in self._predicted:
            record["predicted"] = self._predicted[arch]
        record.update(result)
        record["score"] = float(record["score"])
        return record

    def _race(self, g, pending, score_fn, chunk_size, callbacks):
        """Score `pending` rung by rung (racing.py) and add their records, in candidate order, at the end."""
        s, race = (
            self.settings,
            self.state.race,
        )  # race: arch key -> the results of the rungs run so far
        fractions = list(s.racing_slices) + [1.0]
        alive = pending
        for rung, fraction in enumerate(fractions):
            todo = [(a, o) for a, o in alive if len(race.get(_key(a), ())) <= rung]
            for chunk, results in self._score_chunks(todo, chunk_size, score_fn, fraction):
                for (arch, _), result in zip(chunk, results):
                    race.setdefault(_key(arch), []).append(result)
                self.save()
            if rung == len(fractions) - 1:
                break
            margin = rung_margin(self.history, rung, s.racing_margin, s.racing_margin_mode)
            scores = [race[_key(a)][rung]["score"] for a, _ in alive]
            alive = [
                c
                for c, go in zip(alive, promoted(scores, self.history, rung, s.topk, margin))
                if go
            ]
        records = []
        for arch, origin in pending:
            results = race[_key(arch)]
            spent = {}
            for result in results:
                for k, v in result.items():
                    if k != "score":
                        spent[k] = spent.get(k, 0) + v
            record = self._record(g, arch, origin, dict(spent, score=results[-1]["score"]))
            record[SLICE_SCORES] = [float(r["score"]) for r in results[: len(fractions) - 1]]
            record["full"] = len(results) == len(fractions)
            records.append(record)
            self.history.append(record)
        race.clear()
        self.save()
        _call_each(callbacks, "after_candidate", self, records)


def top_candidates(history: List[Dict], k: int) -> List[int]:
    """History indices of the `k` best fully scored candidates (a record raced out on a slice is not
    comparable), best first; ties: the earlier first."""
    full = [i for i, r in enumerate(history) if is_full(r)]
    return sorted(full, key=lambda i: (-history[i]["score"], i))[:k]


def _key(arch) -> str:
    return ",".join(str(a) for a in arch)


def _call_each(callbacks, name, search, records):
    for record in records:
        _call(callbacks, name, search, record)


def _call(callbacks, name, *args):
    for cb in callbacks:
        fn = getattr(cb, name, None)
        if fn is not None:
            fn(*args)
