"""Adaptive misinformation (Kariyappa & Qureshi 2020, "Defending against model stealing attacks
with adaptive misinformation"): queries the victim is unsure about look out of distribution, as
most of an extraction attack's do, and get a misleading answer; confident (benign-looking)
queries get the true one. The blend is smooth in the top probability:

    alpha = sigmoid(-nu * (max p - tau)),    y = (1 - alpha) * p + alpha * misinformation(p)

Misinformation: the paper trains a second network to put its mass on wrong classes. Lacking one
here, the stand-in is softmax(-log p), the victim's posterior with its logits negated (log p is
the logits up to a constant), i.e. 1/p normalised: its most likely class is the victim's least
likely one, never its top class unless p is uniform. p is clamped at 1e-6 inside the log (the
posteriors are float16-rounded, so exact zeros occur), so a class the victim rules out gets
most of the mass. A trained misinformation model would be
less recognisable: this inversion is a function of p an attacker could undo once suspected.

Stateless (a function of the answers); an out-of-distribution detector's P(OOD) in place of
1 - max p would need the images (see `DetectorFilter`).
"""

import torch

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences.base import Defence, QueryBatch, register_defence


def misinformation(p: torch.Tensor) -> torch.Tensor:
    """softmax(-log p): the negated-logits posterior, its mode at the least likely class."""
    return torch.softmax(-torch.log(p.clamp_min(1e-6)), dim=-1)


@register_defence
class AdaptiveMisinformation(Defence):
    """`tau`: the top probability below which a query is treated as out of distribution;
    `nu`: how sharply the answer switches there (the paper's nu = 1000 is almost a step)."""

    def __init__(self, tau: float = 0.5, nu: float = 1000.0):
        self.tau, self.nu = tau, nu

    def check(self, num_classes: int) -> None:
        if not 0 <= self.tau <= 1:
            raise ConfigError(f"AdaptiveMisinformation: tau must be in [0, 1], got {self.tau}")
        if not self.nu > 0:
            raise ConfigError(f"AdaptiveMisinformation: nu must be > 0, got {self.nu}")

    def apply(self, batch: QueryBatch) -> None:
        p = batch.answers.double()
        alpha = torch.sigmoid(-self.nu * (p.max(-1, keepdim=True).values - self.tau))
        blended = (1 - alpha) * p + alpha * misinformation(p)
        batch.answers = blended.to(batch.answers.dtype)
