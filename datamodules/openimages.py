"""OpenImages (Kuznetsova et al. 2020): the second out-of-distribution test set of 4.2.1.

A seeded uniform sample of `size` images (20,000) from a folder tree of images as downloaded;
split `pool`, images only. OpenImages files carry no class labels here: `.labelled` gives -1.
"""

import warnings

import numpy as np

from datamodules.images import ImageFiles, list_images
from datamodules.on_disk import PoolDataModule
from knockoff_lab.core.errors import ConfigError


class OpenImagesDataModule(PoolDataModule):
    """`size` images drawn uniformly from every image under `<root>/openimages`, sub-folders
    included."""

    folders = ("openimages",)
    contents = "a folder tree of images, e.g. OpenImages' train_0/ ... train_f/ or test/ folders"
    source = "https://storage.googleapis.com/openimages/web/download.html (images only)"

    def __init__(self, root: str, size: int = 20_000, **kwargs):
        super().__init__(root, **kwargs)
        if size < 1:
            raise ConfigError(f"data.size must be >= 1, got {size}")
        self.size = size

    def sample(self) -> ImageFiles:
        base = self.dataset_dir()
        if not (files := list_images(base, recursive=True)):
            raise self.missing("any image", [base])
        if len(files) < self.size:
            warnings.warn(
                f"{base} holds {len(files)} images, fewer than data.size="
                f"{self.size}; all are taken",
                stacklevel=2,
            )
        rng = np.random.default_rng(self.seed)
        take = np.sort(rng.choice(len(files), min(self.size, len(files)), replace=False))
        return self.image_files([files[i] for i in take], [-1] * len(take), base)
