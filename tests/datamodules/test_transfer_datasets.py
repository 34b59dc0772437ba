import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules.base import ImagesOnly
from datamodules.transfer_datasets import TransferDataset

POOL = ImagesOnly(TensorDataset(torch.randn(50, 3, 4, 4), torch.zeros(50)))
INDICES = np.array([7, 3, -1, 12, 40, -1])  # -1: a synthetic query, kept in `images`
SYNTHETIC = torch.randn(2, 3, 4, 4)
ANSWERS = torch.rand(6, 5).half()  # stored in half precision, served as float32


@pytest.mark.parametrize("rows", [[4, 0, 3, 1], [5, 2, 0, 1]], ids=["pool", "synthetic"])
def test_a_batch_read_together_is_the_items_read_one_by_one(rows: list[int]):
    data = TransferDataset(POOL, INDICES, SYNTHETIC, ANSWERS, np.array(rows))
    positions = [3, 0, 2]
    batch = data.__getitems__(positions)
    assert len(batch) == len(positions)
    for (image, answer), position in zip(batch, positions, strict=True):
        alone_image, alone_answer = data[position]
        assert torch.equal(image, alone_image) and torch.equal(answer, alone_answer)
        assert answer.dtype == torch.float32
    images, answers = next(iter(DataLoader(data, batch_size=4)))  # what training reads
    assert torch.equal(images, torch.stack([data[p][0] for p in range(4)]))
    assert torch.equal(answers, ANSWERS[rows].float())
