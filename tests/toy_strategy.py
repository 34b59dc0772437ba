"""A toy adaptive attack, added the way a user adds one (this file plus `toy_strategy.yaml`):
a random first round, then, each round, the pool images the current surrogate is least sure of
(uncertainty sampling, the simplest active-learning policy)."""

import numpy as np
import torch

from knockoff_lab.attacks import Queries, QueryStrategy, Seen, register_attack


@register_attack
class LeastConfident(QueryStrategy):
    def __init__(self, rounds: int = 3):
        super().__init__(rounds)

    def propose(self, seen: Seen, count: int) -> Queries:
        unasked = np.setdiff1d(np.arange(len(seen.pool)), seen.indices)
        if seen.round == 0 or seen.surrogate is None:
            return Queries(indices=np.random.default_rng(seen.seed).permutation(unasked)[:count])
        images = torch.stack([seen.pool[int(i)] for i in unasked])
        confidence = seen.surrogate_outputs(images).softmax(-1).max(-1).values
        return Queries(indices=unasked[confidence.argsort()[:count].numpy()])
