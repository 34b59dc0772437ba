"""A toy generator-style attack whose rounds are single training steps, added the way a user adds
one (this file plus `toy_step_strategy.yaml`): each round it synthesises `batch` images (seeded
noise, then one signed-gradient step that raises the current surrogate's entropy, where a DFME
generator would raise the surrogate-victim disagreement), the API answers them, and the
surrogate takes one optimiser step on exactly those answers before the next round."""

import hashlib

import torch

from knockoff_lab.attacks import Queries, QueryStrategy, Seen, register_attack
from knockoff_lab.core.errors import ConfigError


@register_attack
class EntropyNoise(QueryStrategy):
    synthetic = True
    round_unit = "step"

    def __init__(self, batch: int = 16, step: float = 0.5):
        super().__init__(rounds=1)
        if batch < 1:
            raise ConfigError(f"attack batch must be >= 1, got {batch}")
        self.batch, self.step = batch, step
        self._seen_surrogates: list[str] = []  # a digest of the surrogate each round saw

    def round_sizes(self, budget: int) -> list[int]:
        """`batch` queries a round, the remainder in a last, smaller one: exactly the budget."""
        full, rest = divmod(budget, self.batch)
        return [self.batch] * full + ([rest] if rest else [])

    def propose(self, seen: Seen, count: int) -> Queries:
        shape = seen.pool[0].shape
        generator = torch.Generator().manual_seed(seen.seed * 100_003 + seen.round)
        images = torch.randn(count, *shape, generator=generator)
        if seen.surrogate is not None:
            params = torch.cat([p.detach().flatten().cpu() for p in seen.surrogate.parameters()])
            self._seen_surrogates.append(hashlib.sha256(params.numpy().tobytes()).hexdigest())
            x = images.to(seen.device).requires_grad_(True)
            with torch.enable_grad():
                p = seen.surrogate(x).float().softmax(-1)
                entropy = -(p * p.clamp_min(1e-12).log()).sum()
                (gradient,) = torch.autograd.grad(entropy, x)
            images = (x + self.step * gradient.sign()).detach().cpu()
        return Queries(images=images)
