"""The output granularities of paper 5.1.2 as defences: what a commercial API returns instead
of the full probability vector. Each is a pure function of the answers it is given, so they
compose with any defence before them (a perturbation, then top-3)."""

import torch
from torch import nn

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences.base import Defence, QueryBatch, register_defence


@register_defence
class TopK(Defence):
    """The k highest probabilities, every other entry zero (not renormalised)."""

    def __init__(self, k: int = 1):
        self.k = k

    @property
    def keeps_probabilities(self) -> bool:  # the top-1 value alone leaves no logits to recover
        return self.k > 1

    def check(self, num_classes: int) -> None:
        if not 1 <= self.k <= num_classes:
            raise ConfigError(f"TopK: k must be in 1..{num_classes} (num_classes), got {self.k}")

    def apply(self, batch: QueryBatch) -> None:
        values, indices = batch.answers.topk(self.k, dim=-1)
        batch.answers = torch.zeros_like(batch.answers).scatter_(-1, indices, values)


@register_defence
class Rounded(Defence):
    """Every probability rounded to `decimals` decimals."""

    def __init__(self, decimals: int = 2):
        self.decimals = decimals

    def check(self, num_classes: int) -> None:
        if self.decimals < 0:
            raise ConfigError(f"Rounded: decimals must be an integer >= 0, got {self.decimals}")

    def apply(self, batch: QueryBatch) -> None:
        scale = 10.0**self.decimals
        answers = batch.answers
        batch.answers = torch.round(answers.double() * scale).div(scale).to(answers.dtype)


@register_defence
class LabelOnly(Defence):
    """The one-hot vector of the predicted class (A_c of Table 6)."""

    keeps_probabilities = False

    def apply(self, batch: QueryBatch) -> None:
        labels = batch.answers.argmax(dim=-1)
        batch.answers = nn.functional.one_hot(labels, batch.answers.shape[-1]).to(
            batch.answers.dtype
        )
