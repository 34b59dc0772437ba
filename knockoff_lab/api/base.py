"""What the transfer set needs of a prediction API, whether in this process (`PredictionAPI`)
or behind HTTP (`api.remote.RemoteAPI`): one interface, so an attack YAML runs against either by
changing its `api` block."""

from abc import ABC, abstractmethod

import torch

from knockoff_lab.api.ledger import ClientRecord
from knockoff_lab.defences.base import QueryBatch


class QueryAPI(ABC):
    """The door to a victim. `num_classes` and `victim_name` name what answers; `answer` is the
    attacker's (counted) door; `evaluate` and `victim_labels` are owner-side (uncounted)."""

    num_classes: int
    victim_name: str

    @abstractmethod
    def describe(self) -> str:
        """A stable text of what determines the answers (the transfer set's cache key)."""

    @abstractmethod
    def to(self, device: torch.device | str) -> "QueryAPI": ...

    @abstractmethod
    def check_data(self, data_name: str) -> None: ...

    @abstractmethod
    def answer(
        self, images: torch.Tensor, client: str = "default", request: str | None = None
    ) -> torch.Tensor:
        """`client`'s answers; `request` names the call, so that a retry of it (same name, same
        images) is answered from the books and charged nothing."""

    @abstractmethod
    def record(self, client: str = "default") -> ClientRecord: ...

    @abstractmethod
    def evaluate(self, images: torch.Tensor) -> QueryBatch: ...

    @abstractmethod
    def victim_labels(self, images: torch.Tensor) -> torch.Tensor: ...
