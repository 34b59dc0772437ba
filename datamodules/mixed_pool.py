"""A broad query pool in which a minority is relevant to the victim: where Knockoff Nets says its
adaptive policy must beat random sampling (a policy that finds the relevant region asks it more).

The embedded one (configs/data/mixed_pool.yaml): the 3,000 natural crops plus the 359 digits of
`DigitsDataModule`'s `pool` split, which the victim never trained, validated or tested on: about
one image in nine is of the victim's own task. The attacker sees one unlabelled pool; which
images are relevant is the owner's knowledge, reported per round (`query_analysis`) and never
shown to the strategy.
"""

import numpy as np
from torch.utils.data import ConcatDataset, Dataset

from datamodules.base import ImageDataModule
from knockoff_lab.core.errors import ConfigError


class MixedPoolDataModule(ImageDataModule):
    """`broad`'s pool, then `relevant`'s pool (pool indices from len(broad) on)."""

    num_classes = 0  # a pool has no task of its own
    not_hparams = ("broad", "relevant")

    def __init__(
        self,
        broad: ImageDataModule,
        relevant: ImageDataModule,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(batch_size, num_workers, seed)
        self.broad, self.relevant = broad, relevant

    def build_splits(self) -> dict[str, Dataset]:
        broad, relevant = self.broad.split("pool"), self.relevant.split("pool")
        if broad[0].shape != relevant[0].shape:
            raise ConfigError(
                f"data.pool: the relevant pool's images are {tuple(relevant[0].shape)}, the broad "
                f"pool's {tuple(broad[0].shape)}: give both the same image_size"
            )
        self.boundary = len(broad)
        return {"pool": ConcatDataset([broad, relevant])}

    def query_analysis(self, indices: np.ndarray) -> dict[str, float]:
        """The share of these pool queries that are relevant (owner-side)."""
        self.setup()
        indices = indices[indices >= 0]
        return {"relevant_share": float((indices >= self.boundary).mean())} if len(indices) else {}
