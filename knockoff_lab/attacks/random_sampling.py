"""Knockoff's random policy (paper 3.1.2): pool images in a seeded random order."""

import numpy as np

from knockoff_lab.attacks.base import Queries, QueryStrategy, Seen, register_attack


@register_attack
class RandomSampling(QueryStrategy):
    """The pool in one seeded order, skipping what was asked: any budget takes a prefix of the
    same order, so a larger budget only asks the new queries."""

    adaptive = False

    def propose(self, seen: Seen, count: int) -> Queries:
        order = np.random.default_rng(seen.seed).permutation(len(seen.pool))
        if len(seen.indices):
            order = order[~np.isin(order, seen.indices)]
        return Queries(indices=order[:count])
