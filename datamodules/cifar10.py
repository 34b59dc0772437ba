"""CIFAR-10 (Krizhevsky 2009), victim data of the paper: 10 classes, 50,000 / 10,000 images.

The official split; `val_fraction` of each class's training images is held out as `val`.
The batches are pickles: they are read with an unpickler that only rebuilds numpy arrays, so
a tampered file cannot run code.
"""

import pickle
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10

from datamodules.images import ImageArrays, LabelledImages
from datamodules.on_disk import VictimDataModule
from knockoff_lab.core.errors import ConfigError

BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("_codecs", "encode"),  # bytes as pickled by Python 3
}


class ArraysOnly(pickle.Unpickler):
    """Rebuilds numpy arrays and nothing else: any other global in the pickle is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """Images (N, 32, 32, 3) uint8 and labels of one CIFAR-10 python batch."""
    try:
        with open(path, "rb") as file:
            batch = ArraysOnly(file, encoding="bytes").load()
        images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return images.transpose(0, 2, 3, 1), [int(label) for label in batch[b"labels"]]
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as err:
        raise ConfigError(f"unreadable CIFAR-10 batch {path}: {err}") from None


class CIFAR10DataModule(VictimDataModule):
    """CIFAR-10, python version. `download`: fetch it with torchvision when missing."""

    catalog = "cifar10"
    folders = ("cifar-10-batches-py",)  # as the tarball unpacks and torchvision downloads it
    required = tuple(name for names in BATCHES.values() for name in names)
    contents = "data_batch_1..5 and test_batch (the python version)"
    source = "data.download: true, or https://www.cs.toronto.edu/~kriz/cifar.html (python version)"

    def __init__(self, root: str, download: bool = False, **kwargs):
        super().__init__(root, **kwargs)
        self.download = download

    def prepare_data(self) -> None:
        if self.download:
            CIFAR10(self.root, download=True)  # writes root/cifar-10-batches-py

    def load(self) -> dict[str, LabelledImages]:
        self.prepare_data()
        folder = self.dataset_dir()
        parts = {}
        for split, names in BATCHES.items():
            batches = [read_batch(folder / name) for name in names]
            parts[split] = ImageArrays(
                np.concatenate([images for images, _ in batches]),
                [label for _, labels in batches for label in labels],
            )
        if max(parts["train"].labels) >= len(self.classes):
            raise ConfigError(f"{folder} holds labels beyond CIFAR-10's 10 classes")
        return parts
