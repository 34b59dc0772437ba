"""What an attacker who knows (or guesses) the defence does with what it paid for (Chen et al.,
"D-DAE", S&P 2023; Tang et al., "ModelGuard", USENIX Security 2024). Nothing on the owner's side
changes: both pieces run on the attacker's side of the API, chosen in YAML beside the strategy
(`data.init_args.reader`, `data.init_args.smoothing`).

- An `AnswerReader` turns the answers into the rows the surrogate trains on. `AsGiven` is the
  naive attacker; `TopOne` trains on the answer's top class, which undoes every perturbation
  that keeps the top class (reverse sigmoid, MAD under its argmax constraint, rounding, top-k)
  down to the label. The transfer set stores the answers as the API gave them, so readers
  compare on the very same paid queries.
- `QuerySmoothing` asks each image `queries_per_input` times (the image itself, then copies
  under a small random `transform`) and averages the answers: a perturbation that depends on
  the exact input, or is random, partly averages out. Every copy is a paid query: a budget of B
  queries buys B / queries_per_input images.
"""

import hashlib
from abc import ABC, abstractmethod

import torch
from torch import nn
from torchvision.transforms import v2

from knockoff_lab.core.errors import ConfigError


class AnswerReader(ABC):
    """The surrogate's training targets (N, C) from the API's answers (N, C); a refused row (NaN)
    stays NaN. A reader that learns from the asked images first (`attacks.ddae.DDAE`) sets
    `max_images`: the transfer set then calls `fit` with up to that many asked images and their
    answers after each round, before `read`."""

    max_images: int = 0

    @abstractmethod
    def read(self, answers: torch.Tensor) -> torch.Tensor: ...

    def fit(self, images: torch.Tensor, answers: torch.Tensor) -> None:
        return None

    def metrics(self) -> dict[str, float]:
        """What to log beside the surrogate's test metrics (as `attack/<name>`)."""
        return {}


class AsGiven(AnswerReader):
    """The naive attacker: trains on the answers as the API gave them."""

    def read(self, answers: torch.Tensor) -> torch.Tensor:
        return answers


class TopOne(AnswerReader):
    """Top-1 relabelling: a one-hot of each answer's top class (hard-label distillation)."""

    def read(self, answers: torch.Tensor) -> torch.Tensor:
        refused = answers.isnan().any(dim=-1, keepdim=True)
        top = answers.nan_to_num(0.0).argmax(dim=-1, keepdim=True)
        labels = torch.zeros_like(answers).scatter_(-1, top, 1.0)
        return labels.masked_fill(refused, float("nan"))


class QuerySmoothing:
    """`queries_per_input`: how many times each image is asked (1: plain queries). `transform`:
    what makes each copy after the first (a torchvision transform of one (C, H, W) image that
    keeps its size; default: shifts of up to 1/16 of the side and rotations of up to 5 degrees).
    The copies are drawn from a generator seeded by the attack's seed and the batch's position,
    so a resumed attack asks exactly the copies it asked before."""

    def __init__(self, queries_per_input: int = 4, transform: nn.Module | None = None):
        if queries_per_input < 1:
            raise ConfigError(
                f"data.smoothing.queries_per_input must be >= 1, got {queries_per_input}"
            )
        self.queries_per_input = queries_per_input
        self.transform = transform or v2.RandomAffine(degrees=5, translate=(1 / 16, 1 / 16))

    def describe(self) -> str:
        return f"QuerySmoothing({self.queries_per_input}, {self.transform!r})"

    def check(self, image: torch.Tensor) -> None:
        """One line naming the key when `transform` changes an image's shape (before a query)."""
        copy = self.transform(image)
        if not isinstance(copy, torch.Tensor) or copy.shape != image.shape:
            shape = tuple(copy.shape) if isinstance(copy, torch.Tensor) else type(copy).__name__
            raise ConfigError(
                f"data.smoothing.transform {self.transform!r} must keep an image's shape "
                f"{tuple(image.shape)}, got {shape}"
            )

    def expand(self, images: torch.Tensor, name: str) -> torch.Tensor:
        """(N * k, C, H, W): each image followed by its k - 1 transformed copies, drawn from a
        generator seeded by `name` (the batch's stable name)."""
        k = self.queries_per_input
        seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            copies = [
                image if c == 0 else self.transform(image) for image in images for c in range(k)
            ]
        return torch.stack(copies)

    def combine(self, answers: torch.Tensor) -> torch.Tensor:
        """(N, C): the mean of each image's answered copies (NaN where all were refused)."""
        grouped = answers.view(-1, self.queries_per_input, answers.shape[-1])
        return grouped.nanmean(dim=1)
