"""The datasets a transfer set serves: (query, API answer) pairs for training and validation,
and the victim's test set with the victim's own predictions for evaluation."""

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from datamodules.base import ImagesOnly


class TransferDataset(Dataset):
    """(query image, API answer) pairs for some rows of the transfer set. Pool queries are read
    from the pool by index, synthetic ones from the stored images; answers are kept in their
    stored precision and served as float32."""

    def __init__(
        self,
        pool: Dataset,
        indices: np.ndarray,
        images: torch.Tensor | None,
        answers: torch.Tensor,
        rows: np.ndarray,
    ):
        self.pool, self.indices, self.images = pool, indices, images
        self.answers_, self.rows = answers, torch.from_numpy(rows)
        self.synthetic_position = np.cumsum(indices < 0) - 1  # row -> its place in `images`

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.rows[i])
        index = int(self.indices[row])
        image = self.pool[index] if index >= 0 else self.images[self.synthetic_position[row]]
        return image, self.answers_[row].float()

    def __getitems__(self, positions: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The items at `positions` (the DataLoader's fetch of a batch), read together: one
        gather from a tensor pool and one conversion of the answers: the same tensors as
        `__getitem__` gives one by one, at about half the cost (`benchmarks/transfer_fetch.py`)."""
        rows = self.rows[positions]
        indices = self.indices[rows.numpy()]
        tensors = self.pool.labelled if isinstance(self.pool, ImagesOnly) else None
        if not isinstance(tensors, TensorDataset) or (indices < 0).any():
            return [self[p] for p in positions]  # image files, or synthetic queries
        images = tensors.tensors[0][torch.from_numpy(indices)]
        return list(zip(images, self.answers_[rows].float(), strict=True))

    @property
    def answers(self) -> torch.Tensor:
        """Every answer of the split, (N, C) float32: for analysis and class balancing."""
        return self.answers_[self.rows].float()


class VictimLabelled(Dataset):
    """The victim's test set with the victim's own prediction: (image, label, victim label)."""

    def __init__(self, test: Dataset, victim_labels: torch.Tensor):
        self.test, self.victim_labels = test, victim_labels

    def __len__(self) -> int:
        return len(self.test)

    def __getitem__(self, i: int):
        image, label = self.test[i]
        return image, label, self.victim_labels[i]
