"""Bing (Bergamo & Torresani 2010): web images of the 256 Caltech-256 categories, disjoint from
Caltech-256 itself; the in-distribution attacker data of 5.2.2.

A seeded sample of `per_class` images (380) of each category folder; split `pool`, images only.
Labels (for analysis) are the sorted folder index: with folders named like Caltech-256's
(`001.ak47`, ...) that is the Caltech-256 label.
"""

from datamodules.images import ImageFiles
from datamodules.on_disk import PoolDataModule, class_folders
from knockoff_lab.core.errors import ConfigError


class BingDataModule(PoolDataModule):
    """`per_class` images from each category folder under `<root>/bing`."""

    folders = ("bing",)
    contents = "one folder of images per Caltech-256 category (001.ak47/ ...)"
    source = "http://vlg.cs.dartmouth.edu/projects/domainadapt/ (Bing-Caltech256)"

    def __init__(self, root: str, per_class: int = 380, **kwargs):
        super().__init__(root, **kwargs)
        if per_class < 1:
            raise ConfigError(f"data.per_class must be >= 1, got {per_class}")
        self.per_class = per_class

    def sample(self) -> ImageFiles:
        base = self.dataset_dir()
        if not (folders := class_folders(base)):
            raise self.missing("category folders", [base])
        return self.sample_per_class(folders, self.per_class)
