"""What a defence is: a small transform between the victim's posteriors and the client's answer.

The prediction API runs its defences in order on every batch of queries. Each one sees a
`QueryBatch` (the images, the victim's posteriors, the answers so far, what earlier defences
flagged or refused, and its own per-client state) and may replace the answers, flag queries or
refuse them. Output granularities (top-k, rounding, label only) are defences too, so they
compose: a perturbation, then top-3.

A defence declares `stateless = True` when its answer is a pure function of the posteriors
(so the owner may derive it offline from cached posteriors, e.g. to measure its cost to benign
users); one that reads the images or keeps per-client history says `stateless = False`.

Add one: subclass `Defence` in any module, decorate it with `@register_defence`, and name its
class path in a YAML (`api.init_args.defences`).
"""

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

DEFENCES: dict[str, type["Defence"]] = {}


def register_defence(cls: type["Defence"]) -> type["Defence"]:
    """Class decorator: list the defence in `list_defences()` (and its parametrised test)."""
    DEFENCES[cls.__name__] = cls
    return cls


def list_defences() -> list[str]:
    return sorted(DEFENCES)


@dataclass
class QueryBatch:
    """One batch of queries on its way through the API's defences, on the API's device."""

    images: torch.Tensor  # (N, 3, H, W) as the client sent them
    posteriors: torch.Tensor  # (N, C) the victim's; never modified
    answers: torch.Tensor  # (N, C) what the client will receive; defences replace it
    flagged: torch.Tensor  # (N,) bool: a defence took the query for an attack
    refused: torch.Tensor  # (N,) bool: no answer is returned (a NaN row)
    client: str
    state: dict[str, Any]  # the running defence's state for this client (tensors, numbers)

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def arriving(cls, images: torch.Tensor, posteriors: torch.Tensor, client: str) -> "QueryBatch":
        """A batch as it enters the defences: answers are the posteriors, nothing flagged."""
        none = torch.zeros(len(images), dtype=torch.bool, device=posteriors.device)
        return cls(images, posteriors, posteriors.clone(), none, none.clone(), client, {})


class Defence(ABC):
    """Base class: `apply` edits a `QueryBatch` in place; `check` validates options early."""

    stateless: ClassVar[bool] = True
    keeps_probabilities: ClassVar[bool] = True  # False: answers are labels (or top-1 only)

    def check(self, num_classes: int) -> None:
        """Raise a one-line ConfigError for options that cannot work with this victim; called
        when the API starts, before any query."""
        return None

    def check_data(self, data_name: str) -> None:
        """Raise a one-line ConfigError when the victim's data (a DataModule class name) is not
        what this defence was built for (a detector trained on other images)."""
        return None

    @abstractmethod
    def apply(self, batch: QueryBatch) -> None:
        """Edit `batch.answers`, `batch.flagged`, `batch.refused` or `batch.state`."""

    def settings(self) -> dict[str, Any]:
        """What determines this defence's answers (cache keys, ledger deployment): its public
        attributes by default; override to replace a file path by its digest."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def describe(self) -> str:
        cls = type(self)
        return json.dumps(
            [f"{cls.__module__}.{cls.__qualname__}", self.settings()], sort_keys=True, default=str
        )
