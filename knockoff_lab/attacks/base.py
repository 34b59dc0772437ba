"""What an attack is: a query strategy run in rounds through the prediction API.

Before each round the strategy sees what the attacker has (`Seen`: its pool, the queries asked
so far and the API's answers, the current surrogate) and proposes the round's queries: pool
indices, or images it synthesised. The transfer set sends them through the API, stores the
answers, and the surrogate trains for the round (`epochs_per_round` epochs, or one optimiser
step when `round_unit` is "step"); `lightning_modules.AttackRounds` asks each round from
Lightning's hooks.
A one-round strategy that ignores the surrogate (random sampling) is the Knockoff attack of
paper 3.1.2.

Add one: subclass `QueryStrategy` in any module, decorate it with `@register_attack`, and name
its class path in a YAML (`data.init_args.attack`).
"""

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from knockoff_lab.core.errors import ConfigError

ATTACKS: dict[str, type["QueryStrategy"]] = {}


def register_attack(cls: type["QueryStrategy"]) -> type["QueryStrategy"]:
    """Class decorator: list the strategy in `list_attacks()` (and its parametrised test)."""
    ATTACKS[cls.__name__] = cls
    return cls


def list_attacks() -> list[str]:
    return sorted(ATTACKS)


@dataclass
class Seen:
    """What the attacker has when it plans a round."""

    pool: Dataset  # its unlabelled images
    indices: np.ndarray  # (N,) pool index of every query asked so far, -1 for a synthetic one
    images: torch.Tensor | None  # (N, ...) the synthetic queries asked so far (None if none)
    answers: torch.Tensor  # (N, C) float32: the API's answers, a NaN row where it refused
    surrogate: nn.Module | None  # the current surrogate, in eval mode (None outside training)
    device: torch.device
    round: int
    seed: int

    def surrogate_outputs(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """The current surrogate's logits (N, C) on the CPU, computed without gradients."""
        outputs = []
        with torch.no_grad():
            for chunk in images.split(batch_size):
                outputs.append(self.surrogate(chunk.to(self.device)).float().cpu())
        return torch.cat(outputs)


@dataclass
class Queries:
    """A round's proposal: pool indices, or synthesised images (exactly one of the two)."""

    indices: np.ndarray | None = None
    images: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.images)


class QueryStrategy(ABC):
    """Base class. `rounds` splits the budget into rounds of (nearly) equal size; override
    `round_sizes` for another schedule (`seeded_round_sizes`: an initial seed set).

    `round_unit` says what a round is to the surrogate: "epoch" (it trains on everything asked
    so far for `epochs_per_round` epochs before the next round) or "step" (one optimiser step
    on exactly the round's queries, then the next round: a generator-based attack)."""

    adaptive: ClassVar[bool] = True  # proposals depend on answers or the surrogate
    synthetic: ClassVar[bool] = False  # proposes images, not pool indices
    round_unit: ClassVar[Literal["epoch", "step"]] = "epoch"
    replay: int = 0  # a step round's step also trains on this many earlier queries (seeded)

    def __init__(self, rounds: int = 1):
        if rounds < 1:
            raise ConfigError(f"attack rounds must be >= 1, got {rounds}")
        self.rounds = rounds

    def round_sizes(self, budget: int) -> list[int]:
        if budget < self.rounds:
            raise ConfigError(
                f"data.budget {budget} is smaller than the attack's {self.rounds} rounds"
            )
        base, extra = divmod(budget, self.rounds)
        return [base + (r < extra) for r in range(self.rounds)]

    def seeded_round_sizes(self, budget: int, seed_fraction: float) -> list[int]:
        """A seed round of `seed_fraction` of the budget (at least 1 query), the rest split
        evenly over the other rounds."""
        even = QueryStrategy.round_sizes(self, budget)  # budget >= rounds, else the usual error
        if self.rounds == 1:
            return even
        first = min(max(1, round(budget * seed_fraction)), budget - (self.rounds - 1))
        base, extra = divmod(budget - first, self.rounds - 1)
        return [first] + [base + (r < extra) for r in range(self.rounds - 1)]

    def trains_on(self, r: int) -> bool:
        """Whether the surrogate takes an optimiser step on step round `r`. A data-free attack's
        gradient probes are asked, paid for and stored like any round, but are not training
        data: `AttackRounds` asks the next round right after such a round, and the step trains
        on that one. Epoch-round strategies train on everything; this is not asked of them."""
        return True

    def check_api(self, api: Any) -> None:
        """Raise a one-line ConfigError, before any query, when the API cannot serve this
        strategy (one that needs probabilities, asking an API that answers labels)."""
        return None

    def check_budget(self, budget: int, pool_size: int) -> None:
        """Fail before any query when the pool cannot supply the budget."""
        if not self.synthetic and budget > pool_size:
            raise ConfigError(f"data.budget {budget} exceeds the pool's {pool_size} images")

    @abstractmethod
    def propose(self, seen: Seen, count: int) -> Queries:
        """The next `count` queries."""

    def state_dict(self) -> dict[str, Any]:
        """What the strategy learnt across rounds (JSON-able values, or tensors: a generator's
        weights, stored as .npy beside the JSON), saved with each round, so a
        resumed attack continues where it stopped; stateless strategies keep nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`."""
        return None

    def metrics(self) -> dict[str, float]:
        """What to log after each round (as `attack/<name>`), e.g. an adaptive policy's entropy;
        read after the round's state is loaded, so a round read back from the cache logs too."""
        return {}

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def describe(self) -> str:
        cls = type(self)
        return json.dumps(
            [f"{cls.__module__}.{cls.__qualname__}", self.settings()], sort_keys=True, default=str
        )
