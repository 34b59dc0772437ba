"""Jacobian-based dataset augmentation (Papernot et al., AsiaCCS 2017), with the reservoir and
the periodic step-sign flip that PRADA (Juuti et al., EuroS&P 2019) uses.

Round 0 asks a seed set: `seed_fraction` of the budget, pool images in a seeded random order.
Papernot's is small (150 MNIST images, a few percent of the queries): a few parents and many
near-copies, the shape PRADA catches; a seed set of a sixth of the budget is mostly natural
queries, which it does not. The
rest of the budget is split evenly over the later rounds, each synthesising its `count` queries:
a reservoir of `count` earlier queries drawn uniformly (without replacement while there are
enough answered ones), each moved one step along the sign of the gradient of the surrogate's
logit for the class the API answered for it,
    x' = clip(x + lambda_r * sign(d logit_{argmax O(x)}(x) / dx)),
with lambda_r = step * (-1) ** ((r - 1) // tau) (the sign flips every `tau` augmentation
rounds, so points do not drift off forever) and clipping to the images the pool's
normalisation can produce: per channel [(0 - mean) / std, (1 - mean) / std], ImageNet's by
default like every dataset here. The reservoir keeps each round at `count` queries instead of
Papernot's doubling, so the budget is exact: every synthetic image is a query of the API.

`target: random` is PRADA's T-RND (targeted randomised): the step climbs the logit of a class drawn
uniformly among the others than the answered one, fresh for each synthetic query, always
+`step` (a new random target each round already keeps points from drifting one way); the
queries probe the victim's boundaries towards every class rather than away from the known one.
"""

from typing import Literal

import numpy as np
import torch

from knockoff_lab.attacks.base import Queries, QueryStrategy, Seen, register_attack
from knockoff_lab.attacks.pool_views import answered_rows, asked_images, unasked
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.core.normalization import IMAGENET_MEAN, IMAGENET_STD


def logit_gradient(surrogate, images: torch.Tensor, classes: torch.Tensor, device) -> torch.Tensor:
    """d logit_c(x) / dx per image (surrogate in eval mode; its parameters' .grad untouched)."""
    grads = []
    for chunk, chunk_classes in zip(images.split(256), classes.split(256), strict=True):
        x = chunk.to(device).requires_grad_(True)
        with torch.enable_grad():
            logits = surrogate(x).float()
            chosen = logits.gather(1, chunk_classes.to(device).view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(chosen, x)
        grads.append(grad.cpu())
    return torch.cat(grads)


@register_attack
class JacobianAugmentation(QueryStrategy):
    """`seed_fraction`: round 0's share of the budget (pool images); `step`: lambda;
    `tau`: augmentation rounds between sign flips; `mean`/`std`: the pool's normalisation (for
    the valid image range); `target`: answered (Papernot's JbDA) or random (PRADA's T-RND)."""

    synthetic = True

    def __init__(
        self,
        rounds: int = 6,
        seed_fraction: float = 0.05,
        step: float = 0.1,
        tau: int = 3,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        target: Literal["answered", "random"] = "answered",
    ):
        super().__init__(rounds)
        if step <= 0 or tau < 1 or len(mean) != len(std):
            raise ConfigError("JacobianAugmentation needs step > 0, tau >= 1 and one std per mean")
        if not 0 < seed_fraction <= 1:
            raise ConfigError(
                f"JacobianAugmentation seed_fraction must be in (0, 1], got {seed_fraction}"
            )
        self.seed_fraction, self.step, self.tau = seed_fraction, step, tau
        self.mean, self.std, self.target = tuple(mean), tuple(std), target

    def round_sizes(self, budget: int) -> list[int]:
        return self.seeded_round_sizes(budget, self.seed_fraction)

    def check_budget(self, budget: int, pool_size: int) -> None:
        """Only the seed round reads the pool."""
        if self.round_sizes(budget)[0] > pool_size:
            raise ConfigError(
                f"the seed round of {self.round_sizes(budget)[0]} pool images "
                f"exceeds the pool's {pool_size}"
            )

    def lam(self, r: int) -> float:
        """lambda of round r >= 1: the sign flips every `tau` augmentation rounds."""
        return self.step * (-1) ** ((r - 1) // self.tau)

    def bounds(self, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = torch.tensor(self.mean), torch.tensor(self.std)
        if len(mean) != channels:
            raise ConfigError(
                f"JacobianAugmentation has {len(mean)} mean values for images "
                f"of {channels} channels"
            )
        shape = (1, channels, 1, 1)
        return ((0 - mean) / std).view(shape), ((1 - mean) / std).view(shape)

    def propose(self, seen: Seen, count: int) -> Queries:
        rng = np.random.default_rng([seen.seed, seen.round])
        answered = answered_rows(seen)
        if seen.round == 0 or seen.surrogate is None or not len(answered):
            return Queries(indices=rng.permutation(unasked(seen))[:count])  # the seed set
        sources = rng.choice(answered, count, replace=count > len(answered))
        images = asked_images(seen, np.sort(sources))
        classes = seen.answers[np.sort(sources)].float().argmax(-1)
        step = self.lam(seen.round)
        if self.target == "random":  # any class but the answered one, uniformly
            others = torch.from_numpy(rng.integers(1, seen.answers.shape[-1], len(classes)))
            classes, step = (classes + others) % seen.answers.shape[-1], self.step
        grad = logit_gradient(seen.surrogate, images, classes, seen.device)
        moved = images + step * grad.sign()
        low, high = self.bounds(images.shape[1])
        return Queries(images=torch.maximum(torch.minimum(moved, high), low))
