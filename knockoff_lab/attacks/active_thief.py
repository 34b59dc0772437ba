"""ActiveThief (Pal et al., AAAI 2020): pool-based active learning against the API.

A random seed round (`seed_fraction` of the budget), then `rounds - 1` rounds each choosing
from the unasked pool with the current surrogate:
  entropy  the images whose surrogate softmax has the highest entropy (most uncertain);
  kcenter  greedy k-center (farthest-point) on the surrogate's softmax outputs, the space the
           paper uses: each pick is the unasked image farthest from everything asked or picked
           so far, so the round covers the pool instead of piling onto one uncertain region;
  dfal     DeepFool active learning (Ducoffe and Precioso 2018, ActiveThief's third): the
           images closest to the surrogate's decision boundary, measured by the L2 norm of the
           DeepFool perturbation (Moosavi-Dezfooli et al. 2016) that flips its label, computed
           for every candidate in batches (`deepfool_distance`);
  random   the seeded random order (the baseline inside the same schedule).
"""

from typing import Literal

import numpy as np
import torch

from knockoff_lab.attacks.base import Queries, QueryStrategy, Seen, register_attack
from knockoff_lab.attacks.pool_views import pool_chunks, unasked
from knockoff_lab.core.errors import ConfigError

# DFAL's pool chunk: its Jacobian holds (chunk, classes, pixels) floats; 32 images at 224 px
# against 256 classes, and as many more (up to 256) as fit in the same memory at smaller sizes
# (on 16 px digits, 32 at a time took 2.4x as long as 256)
DFAL_CHUNK = 32
DFAL_JACOBIAN_FLOATS = DFAL_CHUNK * 256 * 3 * 224 * 224


def dfal_chunk(classes: int, image: torch.Size) -> int:
    """Pool images per DeepFool chunk: the Jacobian's memory of 32 paper-scale images."""
    return min(256, max(DFAL_CHUNK, DFAL_JACOBIAN_FLOATS // (classes * image.numel())))


def surrogate_outputs(seen: Seen, indices: np.ndarray) -> torch.Tensor:
    """The current surrogate's logits on the pool images at `indices`, streamed."""
    return torch.cat([seen.surrogate_outputs(chunk) for chunk in pool_chunks(seen.pool, indices)])


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits), per row."""
    log_p = logits.float().log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1)


def kcenter_greedy(
    candidates: torch.Tensor, centers: torch.Tensor, count: int, chunk: int = 4096
) -> np.ndarray:
    """Greedy k-center: `count` rows of `candidates` (N, D), each the one farthest from its
    nearest center so far, the pick then joining the centers. A running min-distance keeps it
    O(N * (M + count)) with one cdist per pick; with no centers the first pick is row 0."""
    centers = centers.to(candidates.dtype)
    if len(centers):
        nearest = torch.cat(
            [torch.cdist(part, centers).min(-1).values for part in candidates.split(chunk)]
        )
    else:
        nearest = torch.full((len(candidates),), float("inf"))
    picks: list[int] = []
    for _ in range(count):
        pick = int(nearest.argmax()) if len(centers) or picks else 0
        picks.append(pick)
        distance = torch.cdist(candidates, candidates[pick : pick + 1]).squeeze(-1)
        nearest = torch.minimum(nearest, distance)
        nearest[pick] = -1.0  # never picked twice, even where points coincide
    return np.asarray(picks, np.int64)


def logits_and_jacobian(
    surrogate, images: torch.Tensor, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, C), d logit_c / dx (N, C, ...)): one forward pass per chunk, not C + 1."""
    logits, grads = [], []
    for chunk in images.split(256):
        x = chunk.to(device).requires_grad_(True)
        with torch.enable_grad():
            out = surrogate(x).float()
            rows = [
                torch.autograd.grad(out[:, c].sum(), x, retain_graph=c + 1 < out.shape[1])[0]
                for c in range(out.shape[1])
            ]
        logits.append(out.detach().cpu())
        grads.append(torch.stack(rows, 1).cpu())
    return torch.cat(logits), torch.cat(grads)


def deepfool_distance(
    surrogate, images: torch.Tensor, device, steps: int = 10, overshoot: float = 0.02
) -> torch.Tensor:
    """L2 norm of the multi-class DeepFool perturbation flipping `surrogate`'s label of each
    image: each step moves every unflipped image to the nearest linearised boundary,
    r = (|f_l| / ||w_l||^2) w_l with l = argmin_k |f_k - f_label| / ||w_k - w_label||; images
    still unflipped after `steps` keep the distance travelled (they are far anyway)."""
    label = None  # the surrogate's label of each image, from the first step's forward pass
    total = torch.zeros_like(images)
    active = torch.ones(len(images), dtype=torch.bool)
    for _ in range(steps):
        x = images[active] + (1 + overshoot) * total[active]
        if not len(x):
            break
        f, grads = logits_and_jacobian(surrogate, x, device)
        label = f.argmax(-1) if label is None else label
        mine = label[active]
        if (still := f.argmax(-1) == mine).logical_not().any():  # flipped: stop moving them
            done = active.nonzero().squeeze(1)[~still]
            active[done] = False
            x, grads, f, mine = x[still], grads[still], f[still], mine[still]
        rows = torch.arange(len(x))
        w = (grads - grads[rows, mine][:, None]).flatten(2)  # (n, C, D)
        gap = (f - f[rows, mine][:, None]).abs()
        norm = w.norm(dim=-1).clamp_min(1e-8)
        ratio = gap / norm
        ratio[rows, mine] = float("inf")
        nearest = ratio.argmin(-1)
        step = ((gap[rows, nearest] + 1e-4) / norm[rows, nearest] ** 2)[:, None]
        total[active] += (step * w[rows, nearest]).view_as(x)
    return ((1 + overshoot) * total).flatten(1).norm(dim=-1)


@register_attack
class ActiveThief(QueryStrategy):
    """`selection`: entropy, kcenter, dfal or random; `seed_fraction`: the random first
    round's share of the budget (the paper's initial seed set, 10%)."""

    def __init__(
        self,
        rounds: int = 5,
        selection: Literal["entropy", "kcenter", "dfal", "random"] = "kcenter",
        seed_fraction: float = 0.1,
    ):
        super().__init__(rounds)
        if selection not in ("entropy", "kcenter", "dfal", "random"):
            raise ConfigError(
                f"ActiveThief selection must be entropy, kcenter, dfal or random, got {selection!r}"
            )
        if not 0 < seed_fraction <= 1:
            raise ConfigError(f"ActiveThief seed_fraction must be in (0, 1], got {seed_fraction}")
        self.selection, self.seed_fraction = selection, seed_fraction

    def round_sizes(self, budget: int) -> list[int]:
        return self.seeded_round_sizes(budget, self.seed_fraction)

    def propose(self, seen: Seen, count: int) -> Queries:
        candidates = unasked(seen)
        if seen.round == 0 or seen.surrogate is None or self.selection == "random":
            order = np.random.default_rng([seen.seed, seen.round]).permutation(candidates)
            return Queries(indices=order[:count])
        if self.selection == "dfal":  # nearest the boundary first; ties to the lower index
            chunk = dfal_chunk(seen.answers.shape[1], seen.pool[0].shape)
            distance = torch.cat(
                [
                    deepfool_distance(seen.surrogate, images.float(), seen.device)
                    for images in pool_chunks(seen.pool, candidates, chunk)
                ]
            )
            return Queries(indices=candidates[np.argsort(distance.numpy(), kind="stable")[:count]])
        logits = surrogate_outputs(seen, candidates)
        if self.selection == "entropy":
            # stable sort on -entropy: ties go to the lower pool index
            order = np.argsort(-entropy(logits).numpy(), kind="stable")
            return Queries(indices=candidates[order[:count]])
        asked = seen.indices[seen.indices >= 0]
        centers = surrogate_outputs(seen, asked) if len(asked) else None
        centers = centers.softmax(-1) if centers is not None else torch.empty(0, logits.shape[1])
        picks = kcenter_greedy(logits.softmax(-1), centers, count)
        return Queries(indices=candidates[picks])
