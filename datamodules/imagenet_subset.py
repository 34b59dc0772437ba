"""The attacker's data D_A (paper 3.1.2, 4.2.1): a seeded sample of ILSVRC-2012 training images.

100 images of each of the 1,000 classes (100,000). Splits:
  pool   all of them, images only: the attacker's queries;
  train  90 of each class (90,000) and
  test   the other 10 (10,000), labelled with their ImageNet class index (sorted wnids, the
         index order of torchvision's ImageNet models): the ImageNet side of the detectors'
         training and test sets; the detectors assign in/out labels themselves.
"""

import numpy as np
from torch.utils.data import Dataset

from datamodules.images import ImageFiles
from datamodules.on_disk import PoolDataModule, class_folders, holdout, share
from knockoff_lab.core.errors import ConfigError


class ImageNetSubsetDataModule(PoolDataModule):
    """`per_class` images per class; `test_fraction` of each class's sample goes to `test`."""

    # torchvision's ImageNet layout under an imagenet/ folder, or Kaggle's ImageNet archive
    folders = ("imagenet/train", "imagenet/ILSVRC/Data/CLS-LOC/train")
    contents = "ILSVRC-2012's training images, one folder per class: <wnid>/*.JPEG"
    source = (
        "https://image-net.org/download-images (ILSVRC2012_img_train.tar, each class tar "
        "unpacked into imagenet/train/<wnid>/)"
    )

    def __init__(self, root: str, per_class: int = 100, test_fraction: float = 0.1, **kwargs):
        super().__init__(root, **kwargs)
        if per_class < 1 or not 0 < test_fraction < 1:
            raise ConfigError(
                f"data.per_class must be >= 1 and data.test_fraction in (0, 1), "
                f"got {per_class} and {test_fraction}"
            )
        self.per_class, self.test_fraction = per_class, test_fraction

    def sample(self) -> ImageFiles:
        base = self.dataset_dir()
        if not (folders := class_folders(base)):
            raise self.missing("class folders <wnid>/", [base])
        return self.sample_per_class(folders, self.per_class)

    def build_splits(self) -> dict[str, Dataset]:
        splits = super().build_splits()
        pool = splits["pool"].labelled
        test = holdout(pool.labels, pool.names, share(self.test_fraction), (self.seed, 0))
        splits["train"] = pool.select(np.flatnonzero(~test), self.eval_transform)
        splits["test"] = pool.select(np.flatnonzero(test), self.eval_transform)
        return splits
