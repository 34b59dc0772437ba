"""Reverse sigmoid (Lee et al. 2018, "Defending against NN model stealing attacks using
deceptive perturbations"): every probability p is moved by a perturbation built from the
sigmoid of its own logit, so that inverting the answers to logits (what a surrogate trained on
them does, through its softmax) is ill-posed and its gradients mislead, while the benign user
keeps the label:

    r = beta * (sigmoid(gamma * logit(p)) - 1/2),    y = normalise(max(p - r, 0))

Why the clamp: the victim's posteriors are float16-rounded, so 0 and 1 are common and logit()
would be infinite there; p is clamped to [eps, 1 - eps] inside the logit only. max(., 0) only
acts when beta > 1 (for beta <= 1, p - r >= 0 everywhere).

Top-1: when gamma >= 1 and beta * gamma < 1 the map p -> p - r is strictly increasing (its
derivative is 1 - beta * gamma * s'(gamma z) / s'(z) with s'(gamma z) <= s'(z)), so the label is
kept exactly. Lee et al.'s more deceptive settings (gamma < 1) can reorder classes; with
`preserve_top1` (default) the victim's top class and the answer's new top class swap values in
such rows, so the benign label (and accuracy) never changes. `beta = 0` leaves the answers as
they are, bit for bit (float16-rounded posteriors do not sum to exactly 1, so renormalising
would change them). Stateless: a function of the answers alone.
"""

import torch

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences.base import Defence, QueryBatch, register_defence

EPS = 1e-6


def reverse_sigmoid(p: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """The perturbed, renormalised answers for probabilities `p` (N, C), in float64."""
    q = p.double()
    logit = torch.logit(q.clamp(EPS, 1 - EPS))
    perturbed = (q - beta * (torch.sigmoid(gamma * logit) - 0.5)).clamp_min(0)
    total = perturbed.sum(-1, keepdim=True)
    uniform = torch.full_like(perturbed, 1 / p.shape[-1])
    return torch.where(total > 0, perturbed / total.clamp_min(1e-300), uniform)


@register_defence
class ReverseSigmoid(Defence):
    """`beta`: the perturbation's size (0: none); `gamma`: its shape (the sigmoid's steepness in
    logit space). `preserve_top1`: swap the top class back where the perturbation moved it."""

    def __init__(self, beta: float = 0.6, gamma: float = 1.5, preserve_top1: bool = True):
        self.beta, self.gamma, self.preserve_top1 = beta, gamma, preserve_top1

    def check(self, num_classes: int) -> None:
        if not self.beta >= 0:
            raise ConfigError(f"ReverseSigmoid: beta must be >= 0, got {self.beta}")
        if not self.gamma > 0:
            raise ConfigError(f"ReverseSigmoid: gamma must be > 0, got {self.gamma}")

    def apply(self, batch: QueryBatch) -> None:
        answers = batch.answers
        if self.beta == 0:  # no perturbation: not even the renormalisation of float16 sums
            return
        perturbed = reverse_sigmoid(answers, self.beta, self.gamma)
        if self.preserve_top1:
            top, new = answers.argmax(-1, keepdim=True), perturbed.argmax(-1, keepdim=True)
            at_top, at_new = perturbed.gather(-1, top), perturbed.gather(-1, new)
            perturbed = perturbed.scatter(-1, new, at_top).scatter(-1, top, at_new)
        batch.answers = perturbed.to(answers.dtype)
