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
           for every candidate in batches (`deepfool_distance`), toward each image's
           `dfal_classes` likeliest classes (10, as ART's and Foolbox's DeepFool: on 256 classes
           9 backward passes a step instead of 255);
  random   the seeded random order (the baseline inside the same schedule).
"""

from typing import Literal

import numpy as np
import torch

from knockoff_lab.attacks.base import Queries, QueryStrategy, Seen, register_attack
from knockoff_lab.attacks.pool_views import pool_chunks, unasked
from knockoff_lab.core.errors import ConfigError

# DFAL's pool chunk: its Jacobian holds (chunk, classes - 1, pixels) floats; 32 images at 224 px
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


def other_classes(label: torch.Tensor, classes: int) -> torch.Tensor:
    """(N, C - 1): every class but each row's `label`, ascending."""
    k = torch.arange(classes - 1, device=label.device).expand(len(label), -1)
    return k + (k >= label[:, None]).long()


def logits(surrogate, images: torch.Tensor, device, batch: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([surrogate(x.to(device)).float().cpu() for x in images.split(batch)])


def likeliest_others(scores: torch.Tensor, label: torch.Tensor, classes: int) -> torch.Tensor:
    """(N, k - 1), ascending: the `classes` - 1 likeliest classes of each row after its `label`,
    its top one (every other class where there are no more)."""
    if classes >= scores.shape[1]:
        return other_classes(label, scores.shape[1])
    masked = scores.scatter(1, label[:, None], float("-inf"))
    return masked.topk(classes - 1, -1).indices.sort(-1).values


def boundary_gradients(
    surrogate, images: torch.Tensor, label: torch.Tensor, others: torch.Tensor, device, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image and each class k of its row of `others`: (f_k - f_label (N, K), its
    gradient d(f_k - f_label)/dx (N, K, ...)): one forward pass per `batch` images and one
    backward pass per column of `others`."""
    gaps, grads = [], []
    for chunk, chunk_label, chunk_others in zip(
        images.split(batch), label.split(batch), others.split(batch), strict=True
    ):
        x = chunk.to(device).requires_grad_(True)
        chunk_label, chunk_others = chunk_label.to(device), chunk_others.to(device)
        with torch.enable_grad():
            out = surrogate(x).float()
            gap = out.gather(1, chunk_others) - out.gather(1, chunk_label[:, None])
            rows = [
                torch.autograd.grad(gap[:, k].sum(), x, retain_graph=k + 1 < gap.shape[1])[0]
                for k in range(gap.shape[1])
            ]
        gaps.append(gap.detach().cpu())
        grads.append(torch.stack(rows, 1).cpu())
    return torch.cat(gaps), torch.cat(grads)


def deepfool_distance(
    surrogate,
    images: torch.Tensor,
    device,
    steps: int = 10,
    overshoot: float = 0.02,
    batch: int = 256,
    classes: int = 10,
) -> torch.Tensor:
    """L2 norm of the multi-class DeepFool perturbation flipping `surrogate`'s label of each
    image: each step moves every unflipped image to the nearest linearised boundary,
    r = (|f_l| / ||w_l||^2) w_l with l = argmin_k |f_k - f_label| / ||w_k - w_label||, k among
    the `classes` - 1 likeliest other classes of the image (fixed at the start, as in ART's
    `nb_grads` and Foolbox's `candidates`, both 10: all of them on 10 classes, 9 of 255
    backward passes on 256); images still unflipped after `steps` keep the distance travelled
    (they are far anyway). A step checks which images flipped with a forward pass alone, so
    gradients are taken only of those still to move (an image's last step costs no Jacobian)."""
    scores = logits(surrogate, images, device, batch)
    label = scores.argmax(-1)
    others = likeliest_others(scores, label, classes)
    total = torch.zeros_like(images)
    active = torch.arange(len(images))
    for step in range(steps):
        x = images[active] + (1 + overshoot) * total[active]
        if step:  # the first step starts at the images: none has flipped
            still = logits(surrogate, x, device, batch).argmax(-1) == label[active]
            active, x = active[still], x[still]
        if not len(active):
            break
        gap, w = boundary_gradients(surrogate, x, label[active], others[active], device, batch)
        w = w.flatten(2)  # (n, classes - 1, D)
        norm = w.norm(dim=-1).clamp_min(1e-8)
        nearest = (gap.abs() / norm).argmin(-1)
        rows = torch.arange(len(x))
        move = ((gap[rows, nearest].abs() + 1e-4) / norm[rows, nearest] ** 2)[:, None]
        total[active] += (move * w[rows, nearest]).view_as(x)
    return ((1 + overshoot) * total).flatten(1).norm(dim=-1)


@register_attack
class ActiveThief(QueryStrategy):
    """`selection`: entropy, kcenter, dfal or random; `seed_fraction`: the random first
    round's share of the budget (the paper's initial seed set, 10%); `dfal_classes`: the
    classes DFAL's DeepFool steps toward, each image's label and its next likeliest
    (`deepfool_distance`)."""

    def __init__(
        self,
        rounds: int = 5,
        selection: Literal["entropy", "kcenter", "dfal", "random"] = "kcenter",
        seed_fraction: float = 0.1,
        dfal_classes: int = 10,
    ):
        super().__init__(rounds)
        if selection not in ("entropy", "kcenter", "dfal", "random"):
            raise ConfigError(
                f"ActiveThief selection must be entropy, kcenter, dfal or random, got {selection!r}"
            )
        if not 0 < seed_fraction <= 1:
            raise ConfigError(f"ActiveThief seed_fraction must be in (0, 1], got {seed_fraction}")
        if dfal_classes < 2:
            raise ConfigError(f"ActiveThief dfal_classes must be >= 2, got {dfal_classes}")
        self.selection, self.seed_fraction = selection, seed_fraction
        self.dfal_classes = dfal_classes

    def round_sizes(self, budget: int) -> list[int]:
        return self.seeded_round_sizes(budget, self.seed_fraction)

    def propose(self, seen: Seen, count: int) -> Queries:
        candidates = unasked(seen)
        if seen.round == 0 or seen.surrogate is None or self.selection == "random":
            order = np.random.default_rng([seen.seed, seen.round]).permutation(candidates)
            return Queries(indices=order[:count])
        if self.selection == "dfal":  # nearest the boundary first; ties to the lower index
            classes = min(self.dfal_classes, seen.answers.shape[1])
            chunk = dfal_chunk(classes, seen.pool[0].shape)
            distance = torch.cat(
                [
                    deepfool_distance(seen.surrogate, images.float(), seen.device, classes=classes)
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
