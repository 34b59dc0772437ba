"""The embedded default: scikit-learn's handwritten digits, shipped inside the package, no download.

1,797 real 8x8 grey images of 10 digits, upscaled to `image_size` RGB (16 px by default: twice
their own resolution, and cheap on CPU) and normalised like every other dataset. A seeded
stratified split gives the victim's train / val / test sets and an attacker pool disjoint from
all three: the stand-in for the in-distribution Bing images of 5.2.2.
"""

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, TensorDataset

from datamodules.base import ImageDataModule, ImagesOnly
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.core.normalization import normalize


def digits_images(image_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as normalised (N, 3, S, S) float tensors, and their labels."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear")
    images = normalize(images.clamp(0, 1).expand(-1, 3, -1, -1))
    return images.contiguous(), torch.tensor(digits.target, dtype=torch.long)


class DigitsDataModule(ImageDataModule):
    """Digits split into `train`, `val`, `test` (victim) and `pool` (attacker), stratified.

    The fractions are of all 1,797 images; `train` gets what is left. `train_from: pool` trains
    on the pool split instead (disjoint from the victim's splits: an independent model's data,
    the same test set); `train_size` keeps that many of the training images (stratified): a
    small private set a model can memorise, as dataset inference needs.
    """

    num_classes = 10

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        image_size: int = 16,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        pool_fraction: float = 0.2,
        train_from: Literal["train", "pool"] = "train",
        train_size: int | None = None,
    ):
        super().__init__(batch_size, num_workers, seed)
        fractions = {
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "pool_fraction": pool_fraction,
        }
        for key, value in fractions.items():
            if not 0 < value < 1:
                raise ConfigError(f"data.{key} must be in (0, 1), got {value}")
        if sum(fractions.values()) >= 0.9:
            raise ConfigError(f"data fractions {fractions} leave under 10% for training")
        if image_size < 8:
            raise ConfigError(f"data.image_size must be >= 8, got {image_size}")
        if train_from not in ("train", "pool"):
            raise ConfigError(f"data.train_from must be train or pool, got {train_from!r}")
        if train_size is not None and train_size < 10:
            raise ConfigError(f"data.train_size must be >= 10 (one per class), got {train_size}")
        self.image_size, self.fractions = image_size, fractions
        self.train_from, self.train_size = train_from, train_size

    def build_splits(self) -> dict[str, Dataset]:
        images, labels = digits_images(self.image_size)
        rest, targets = np.arange(len(labels)), labels.numpy()
        parts = {}
        for name in ("test", "pool", "val"):
            size = round(self.fractions[f"{name}_fraction"] * len(labels))
            rest, parts[name] = train_test_split(
                rest, test_size=size, stratify=targets[rest], random_state=self.seed
            )
        parts["train"] = rest
        if self.train_from == "pool":
            parts["train"], parts["pool"] = parts["pool"], parts["train"]
        if self.train_size is not None:
            train = parts["train"]
            if self.train_size > len(train):
                raise ConfigError(
                    f"data.train_size {self.train_size} exceeds the {len(train)} images of "
                    f"the {self.train_from} split"
                )
            if self.train_size < len(train):
                parts["train"], _ = train_test_split(
                    train,
                    train_size=self.train_size,
                    stratify=targets[train],
                    random_state=self.seed,
                )
        splits = {
            name: TensorDataset(images[torch.from_numpy(idx)], labels[torch.from_numpy(idx)])
            for name, idx in parts.items()
        }
        splits["pool"] = ImagesOnly(splits["pool"])
        return splits
