"""Dataset inference (Maini et al., ICLR 2021, "Dataset Inference: Ownership Resolution in
Machine Learning"): a model built from the owner's model or data sits far from its decision
boundary around the owner's private training points, an independent model does not.

1. Features: for each point, how far one must move it before the model changes its label.
   `walk: blind` (black-box, labels only: the suspect may sit behind a URL): from the point,
   `starts` random directions of each of three noises (uniform, the L-inf walk; Gaussian, L2;
   Laplace, L1; DI's magnitudes times `noise_scale`), stepped k = 1, 2, ... `steps` times the
   direction until the label is no longer the true one; the feature is the norm of the last
   step. `walk: mingd` (white-box, a suspect in this process): for each target class, the
   smallest L-inf / L2 / L1 perturbation gradient descent finds that makes the model predict
   it. Pixels stay in [0, 1]. Each point's distances are sorted within a norm (the starts,
   or the targets, are exchangeable), then standardised with the owner's statistics.
2. The confidence regressor (DI's: Linear-ReLU-Linear-Tanh, SGD 0.1, 1,000 full-batch steps,
   loss -mean(sign * output)) learns, from the owner's own model, to score private points
   (+1) above public ones (-1): on `regressor_points` of each, never used again.
3. The suspect's features on `test_points` other private and public points are scored; a
   one-sided Welch t-test (private > public) on `sample_size` of each, repeated `repeats`
   times on random samples, and the p-values combined by their harmonic mean, as the paper's
   tables do. Accused when that is below `alpha`. `points_needed`: the smallest sample size
   (of 5, 10, 20, 30, 40, 50) at which it would have been.

Not a calibrated p-value: the repeats share points, and the harmonic mean of dependent
p-values is not one. How often it accuses independent models is measured, not assumed
(the negative controls of `configs/reproduce/ownership.yaml`).
"""

from typing import Literal

import numpy as np
import torch
from scipy.special import logsumexp
from scipy.stats import ttest_ind
from torch import nn

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.core.normalization import denormalize, normalize
from knockoff_lab.ownership.base import Evidence, Suspect, Verdict, Verifier

NORMS = ("linf", "l2", "l1")
BLIND_NOISE = {"linf": 0.005, "l2": 0.005, "l1": 0.01}  # DI's uniform bound, std, scale
MINGD_ALPHA = {"linf": 0.001, "l2": 0.01, "l1": 1.0}  # DI's step sizes
SAMPLE_SIZES = (5, 10, 20, 30, 40, 50)


def norms(delta: torch.Tensor, kind: str) -> torch.Tensor:
    flat = delta.flatten(1)
    if kind == "linf":
        return flat.abs().amax(1)
    return flat.norm(dim=1) if kind == "l2" else flat.abs().sum(1)


def into_box(delta: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """`delta` clipped so that pixels + delta stays in [0, 1]."""
    return torch.minimum(torch.maximum(delta, -pixels), 1 - pixels)


def noise(kind: str, shape: tuple, scale: float, generator: torch.Generator) -> torch.Tensor:
    size = BLIND_NOISE[kind] * scale
    if kind == "linf":
        return (torch.rand(shape, generator=generator) * 2 - 1) * size
    if kind == "l2":
        return torch.randn(shape, generator=generator) * size
    uniform = torch.rand(shape, generator=generator) - 0.5  # Laplace by inversion
    return -size * uniform.sign() * torch.log1p(-2 * uniform.abs().clamp(max=0.4999999))


def blind_walk(
    labels_of,
    images: torch.Tensor,
    labels: torch.Tensor,
    starts: int,
    steps: int,
    scale: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """(N, 3, starts) walk lengths: per norm, per random direction, the norm of the first
    multiple of the direction whose label is not the true one (or of the last one tried).
    Every walk still on its label is asked once per step: the queries a black-box owner pays."""
    pixels = denormalize(images)
    n, shape = len(images), tuple(pixels.shape[1:])
    base = torch.stack([noise(k, (n, starts, *shape), scale, generator) for k in NORMS], 1)
    base = base.flatten(0, 2)  # rows: point, norm, start
    x = pixels.repeat_interleave(len(NORMS) * starts, 0)
    y = labels.repeat_interleave(len(NORMS) * starts, 0)
    delta = into_box(base, x)
    walking = torch.arange(len(x))
    for step in range(steps):
        if len(walking) == 0:
            break
        walking = walking[labels_of(normalize(x[walking] + delta[walking])) == y[walking]]
        delta[walking] = into_box(base[walking] * (step + 2), x[walking])
    delta = delta.view(n, len(NORMS), starts, *shape)
    return torch.stack(
        [norms(delta[:, i].flatten(0, 1), k).view(n, starts) for i, k in enumerate(NORMS)], 1
    )


def direction(grad: torch.Tensor, kind: str) -> torch.Tensor:
    """The unit steepest-ascent step of each row in `kind`'s norm (L1: the top 1% of
    coordinates by gradient size, sharing the step)."""
    flat = grad.flatten(1)
    if kind == "linf":
        return grad.sign()
    if kind == "l2":
        return grad / flat.norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.ndim - 1))
    k = max(1, flat.shape[1] // 100)
    top = flat.abs().topk(k, dim=1).indices
    step = torch.zeros_like(flat).scatter_(1, top, flat.gather(1, top).sign() / k)
    return step.view_as(grad)


def mingd(
    network: nn.Module, images: torch.Tensor, num_classes: int, steps: int, scale: float
) -> torch.Tensor:
    """(N, 3, C): per norm and target class, the size of the perturbation that steepest
    descent on (top logit - target logit) needs before the network predicts the target (or
    after `steps` steps). White-box only: it needs the network's gradients."""
    network.eval()
    pixels = denormalize(images).repeat_interleave(num_classes, 0)
    targets = torch.arange(num_classes).repeat(len(images))
    features = []
    for kind in NORMS:
        alpha = MINGD_ALPHA[kind] * scale
        delta, active = torch.zeros_like(pixels), torch.arange(len(pixels))
        for _ in range(steps):
            if len(active) == 0:
                break
            step = delta[active].clone().requires_grad_(True)
            logits = network(normalize(pixels[active] + step))
            wanted = targets[active]
            missing = logits.argmax(-1) != wanted
            gap = logits.max(-1).values - logits.gather(-1, wanted[:, None]).squeeze(-1)
            (grad,) = torch.autograd.grad(gap.sum(), step)
            active, grad = active[missing], grad[missing]
            delta[active] = into_box(delta[active] - alpha * direction(grad, kind), pixels[active])
        features.append(norms(delta, kind).view(len(images), num_classes))
    return torch.stack(features, 1)


def harmonic_mean(p_values: np.ndarray) -> float:
    """n / sum(1 / p), in log space: a p-value of 1e-300 does not overflow."""
    logs = -np.log(np.maximum(p_values, 1e-300))
    return float(np.exp(np.log(len(p_values)) - logsumexp(logs)))


class DatasetInference(Verifier):
    """`walk`: blind (black-box) or mingd (white-box); `noise_scale` multiplies DI's noise
    magnitudes (blind) or step sizes (mingd), for images whose boundaries sit farther than
    CIFAR's; `steps`: the walk's longest; `chunk`: points walked at once (memory)."""

    def __init__(
        self,
        walk: Literal["blind", "mingd"] = "blind",
        regressor_points: int = 100,
        test_points: int = 100,
        sample_size: int = 10,
        repeats: int = 100,
        alpha: float = 0.01,
        starts: int = 10,
        steps: int = 50,
        noise_scale: float = 1.0,
        chunk: int = 64,
        seed: int = 0,
    ):
        if walk not in ("blind", "mingd"):
            raise ConfigError(f"DatasetInference: walk must be blind or mingd, got {walk!r}")
        for key, value in {
            "regressor_points": regressor_points,
            "starts": starts,
            "steps": steps,
            "repeats": repeats,
            "chunk": chunk,
        }.items():
            if value < 1:
                raise ConfigError(f"DatasetInference: {key} must be >= 1, got {value}")
        if not 2 <= sample_size <= test_points:
            raise ConfigError(
                f"DatasetInference: sample_size must be in [2, test_points={test_points}], "
                f"got {sample_size}"
            )
        if not 0 < alpha < 1 or noise_scale <= 0:
            raise ConfigError(
                f"DatasetInference: alpha must be in (0, 1) and noise_scale > 0, got "
                f"{alpha} and {noise_scale}"
            )
        self.walk, self.regressor_points, self.test_points = walk, regressor_points, test_points
        self.sample_size, self.repeats, self.alpha = sample_size, repeats, alpha
        self.starts, self.steps, self.noise_scale = starts, steps, noise_scale
        self.chunk, self.seed = chunk, seed
        self.name = f"di_{walk}"

    def check(self, suspect: Suspect, evidence: Evidence) -> None:
        needed = self.regressor_points + self.test_points
        for side in ("private", "public"):
            if (have := len(getattr(evidence, side)[0])) < needed:
                raise ConfigError(
                    f"DatasetInference needs {needed} {side} points (regressor_points + "
                    f"test_points), the owner gave {have}"
                )
        if self.walk == "mingd" and suspect.network() is None:
            raise ConfigError(
                f"DatasetInference walk mingd needs the suspect's weights; "
                f"{suspect.api.victim_name} answers only queries: use walk: blind"
            )

    def features(self, labels_of, network: nn.Module | None, images, labels, classes):
        """(N, 3 * starts or 3 * C) sorted walk lengths, `chunk` points at a time."""
        generator = torch.Generator().manual_seed(self.seed)
        parts = []
        for batch, truth in zip(images.split(self.chunk), labels.split(self.chunk), strict=True):
            if self.walk == "blind":
                lengths = blind_walk(
                    labels_of, batch, truth, self.starts, self.steps, self.noise_scale, generator
                )
            else:
                lengths = mingd(network, batch, classes, self.steps, self.noise_scale)
            parts.append(lengths.sort(-1).values)
        return torch.cat(parts)

    def owner_features(self, evidence: Evidence, images, labels) -> torch.Tensor:
        owner = evidence.owner.eval()

        def labels_of(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return torch.cat([owner(c).argmax(-1) for c in x.split(1024)])

        return self.features(labels_of, owner, images, labels, evidence.num_classes)

    def regressor(self, private: torch.Tensor, public: torch.Tensor) -> nn.Module:
        inputs = torch.cat([private, public]).flatten(1)
        signs = torch.cat([torch.ones(len(private)), -torch.ones(len(public))])
        with torch.random.fork_rng():  # seeded here, the caller's random state untouched
            torch.manual_seed(self.seed)
            model = nn.Sequential(
                nn.Linear(inputs.shape[1], 100), nn.ReLU(), nn.Linear(100, 1), nn.Tanh()
            )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(1000):
            optimizer.zero_grad()
            (-(signs * model(inputs).squeeze(-1)).mean()).backward()
            optimizer.step()
        return model.eval()

    def combined_p(self, private: np.ndarray, public: np.ndarray, size: int) -> float:
        rng = np.random.default_rng(self.seed)
        p_values = []
        for _ in range(self.repeats):
            rows = rng.permutation(len(private))[:size]
            p = ttest_ind(private[rows], public[rows], equal_var=False, alternative="greater")
            p_values.append(1.0 if np.isnan(p.pvalue) else p.pvalue)  # no spread: no evidence
        return harmonic_mean(np.array(p_values))

    def verify(self, suspect: Suspect, evidence: Evidence) -> Verdict:
        r, t = self.regressor_points, self.test_points
        order = torch.Generator().manual_seed(self.seed)
        sides = {}
        for side in ("private", "public"):
            images, labels = getattr(evidence, side)
            rows = torch.randperm(len(images), generator=order)[: r + t]
            sides[side] = (images[rows], labels[rows])
        owner = [self.owner_features(evidence, x[:r], y[:r]) for x, y in sides.values()]
        mean = torch.cat(owner).mean(dim=(0, 2), keepdim=True)
        std = torch.cat(owner).std(dim=(0, 2), keepdim=True).clamp_min(1e-12)
        regressor = self.regressor(*[(f - mean) / std for f in owner])
        before = suspect.queries
        scores = []
        for x, y in sides.values():
            found = self.features(
                suspect.labels, suspect.network(), x[r:], y[r:], evidence.num_classes
            )
            with torch.inference_mode():
                scores.append(regressor(((found - mean) / std).flatten(1)).squeeze(-1).numpy())
        private, public = scores
        p_value = self.combined_p(private, public, self.sample_size)
        extra = {"mean_diff": float(private.mean() - public.mean())}
        needed = [
            m for m in SAMPLE_SIZES if m <= t and self.combined_p(private, public, m) < self.alpha
        ]
        if needed:
            extra["points_needed"] = float(needed[0])
        return Verdict(self.name, p_value, p_value < self.alpha, suspect.queries - before, t, extra)
