"""One generation's candidate list: mutations and crossovers of the top-k, filled with random archs drawn
uniformly among those that meet the constraints (constraints.py: exact, however narrow the band)."""

import random
from typing import List, Sequence, Tuple

from .constraints import ArchConstraints
from .settings import SearchSettings

__all__ = ["Arch", "generate_candidates"]

Arch = Tuple[int, ...]

# Bounded retries: a mutation or crossover is tried at most this many times per wanted child (children
# outside the constraints or seen before are dropped), a random arch (which meets the constraints) at
# most RANDOM_ATTEMPTS times per wanted arch (draws of an arch seen before are dropped).
MUTATION_ATTEMPTS = 10
RANDOM_ATTEMPTS = 1000


def generate_candidates(
    rng: random.Random,
    settings: SearchSettings,
    generation: int,
    parents: Sequence[Arch],
    constraints: ArchConstraints,
    seen: set,
) -> List[Tuple[Arch, str]]:
    """The candidate list of one generation as (arch, origin) pairs, all unseen and accepted.

    Consumes `rng` deterministically: the same inputs and RNG state give the same list.
    """
    out: List[Tuple[Arch, str]] = []
    taken = set(seen)

    def try_add(arch, origin):
        if arch in taken or not constraints(arch):
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
                rng.randrange(n) if rng.random() < settings.mutation_prob else gene
                for gene, n in zip(parent, constraints.space.num_choices)
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
        try_add(constraints.sample(rng), "random")
    return out
