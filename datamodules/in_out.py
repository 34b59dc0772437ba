"""In/out data of the Knockoff detectors (paper 4.2): the victim's data against attack queries.

Labels: 0 = in-distribution (the victim's data), 1 = out-of-distribution (the attacker's kind of
query). The paper labels the other way round (ImageNet 0, victim 1, 4.2.2); we flip it so that
class 1 is the positive class of every metric (TPR = share of out-of-distribution flagged) and
a detector's softmax[:, 1] is the P(OOD) that the API filter thresholds.

Splits, of (image, label) pairs:
  train  in_data's train (0) + out_data's training share (1)
  val    in_data's val (0) + an `out_val_fraction` of out_data's training share (1)
  test   (image, label, test set) triples, the test set indexing `ood_metrics.TEST_SETS`:
           in        in_data's test (0): TNR, the benign queries
           out       out_data's test share (1): TPR against the pool's kind (ImageNet, 10,000)
           out_test  out_test_data's pool (1): TPR against a second source (OpenImages, 20,000)
         one loader, so a test run reports one set of metrics, in a seeded random order.
out_data's training and test shares are its own `train` and `test` splits where it has them (the
ImageNet subset's seeded per-class 90/10), otherwise a seeded `out_test_fraction` of its pool.
"""

import json

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

from datamodules.base import ImageDataModule, describe
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.evaluation.ood_metrics import TEST_SETS

IN, OUT = 0, 1


class WithLabel(Dataset):
    """The images of any split (a pool's bare images or labelled pairs) with one in/out label,
    and for a test set its index in `TEST_SETS`."""

    def __init__(self, images: Dataset, label: int, test_set: int | None = None):
        self.images, self.label, self.test_set = images, label, test_set

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple:
        item = self.images[index]
        image = item[0] if isinstance(item, tuple | list) else item
        return (image, self.label) if self.test_set is None else (image, self.label, self.test_set)


def labels_of(dataset: Dataset) -> np.ndarray:
    """Class labels of a labelled split, read without decoding images where the split allows."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices)]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy()
    if hasattr(dataset, "labels"):  # datamodules.images.ImageFiles / ImageArrays
        return np.asarray(dataset.labels)
    return np.array([int(dataset[i][1]) for i in range(len(dataset))])


class InOutDataModule(ImageDataModule):
    """The victim's data (`in_data`) mixed with attack queries (`out_data`, `out_test_data`).

    `exclude_classes` drops victim classes from every in-distribution split: the starred models
    of Table 3 for data without an `exclude_overlap` option of its own (the real victim
    DataModules have one, and set it on `in_data` instead).
    """

    num_classes = 2
    not_hparams = ("in_data", "out_data", "out_test_data")

    def __init__(
        self,
        in_data: ImageDataModule,
        out_data: ImageDataModule,
        out_test_data: ImageDataModule | None = None,
        exclude_classes: list[int] | None = None,
        out_test_fraction: float = 0.1,
        out_val_fraction: float = 0.1,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(batch_size, num_workers, seed)
        for key, value in (
            ("out_test_fraction", out_test_fraction),
            ("out_val_fraction", out_val_fraction),
        ):
            if not 0 <= value < 1:
                raise ConfigError(f"data.{key} must be in [0, 1), got {value}")
        excluded = sorted(set(exclude_classes or []))
        if excluded and not 0 <= excluded[0] <= excluded[-1] < in_data.num_classes:
            raise ConfigError(
                f"data.exclude_classes {excluded} are not all classes of in_data "
                f"(0..{in_data.num_classes - 1})"
            )
        self.in_data, self.out_data, self.out_test_data = in_data, out_data, out_test_data
        self.excluded = excluded
        self.out_test_fraction, self.out_val_fraction = out_test_fraction, out_val_fraction

    def _in_split(self, name: str) -> Dataset:
        split = self.in_data.split(name)
        if not self.excluded:
            return split
        return Subset(split, np.flatnonzero(~np.isin(labels_of(split), self.excluded)).tolist())

    def _out_shares(self) -> tuple[Dataset, Dataset]:
        """out_data's (training share, test share)."""
        self.out_data.setup()
        if {"train", "test"} <= set(self.out_data.splits):
            return self.out_data.split("train"), self.out_data.split("test")
        pool = self.out_data.split("pool")
        order = np.random.default_rng(self.seed).permutation(len(pool)).tolist()
        n_test = round(self.out_test_fraction * len(pool))
        return Subset(pool, order[n_test:]), Subset(pool, order[:n_test])

    def build_splits(self) -> dict[str, Dataset]:
        out_train, out_test = self._out_shares()
        order = np.random.default_rng(self.seed + 1).permutation(len(out_train)).tolist()
        n_val = int(self.out_val_fraction * len(out_train))
        splits: dict[str, Dataset] = {
            "train": ConcatDataset(
                [
                    WithLabel(self._in_split("train"), IN),
                    WithLabel(Subset(out_train, order[n_val:]), OUT),
                ]
            ),
            "val": ConcatDataset(
                [
                    WithLabel(self._in_split("val"), IN),
                    WithLabel(Subset(out_train, order[:n_val]), OUT),
                ]
            ),
        }
        tests = {"in": self._in_split("test"), "out": out_test}
        if self.out_test_data is not None:
            tests["out_test"] = self.out_test_data.split("pool")
        for name, images in tests.items():
            if not len(images):
                raise ConfigError(
                    f"the {name!r} test set of the in/out data is empty; {self._hint(name)}"
                )
        shapes = {name: tuple(WithLabel(images, IN)[0][0].shape) for name, images in tests.items()}
        if len(set(shapes.values())) > 1:
            raise ConfigError(f"in/out images differ in shape: {shapes}; set one image_size")
        test = ConcatDataset(
            [
                WithLabel(images, IN if name == "in" else OUT, TEST_SETS.index(name))
                for name, images in tests.items()
            ]
        )
        order = np.random.default_rng(self.seed + 2).permutation(len(test)).tolist()
        splits["test"] = Subset(test, order)  # mixed: a `limit_test_batches` run samples all sets
        return splits

    def _hint(self, name: str) -> str:
        return {
            "in": "check in_data and data.exclude_classes",
            "out": f"raise data.out_test_fraction ({self.out_test_fraction}) or the pool size",
            "out_test": "check out_test_data",
        }[name]

    def count(self, split: str, label: int) -> int:
        """How many images of `split` (train or val) carry `label`, without reading any."""
        return sum(len(part) for part in self.split(split).datasets if part.label == label)

    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.split("test")[0][0].shape)

    def training_record(self) -> dict:
        """What a detector trained here is for; checked when it guards an API (`OODGuard`)."""
        return {
            "in_data": type(self.in_data).__name__,
            "settings": describe(self.in_data),
            "exclude_classes": self.excluded,
            "image_shape": list(self.image_shape()),
        }

    def state_dict(self) -> dict:
        """Saved in a detector's checkpoints (Lightning writes the DataModule's state there), so
        `nets.guard.load_detector` knows what the detector is for."""
        return {"trained_on": self.training_record()}

    def description(self) -> str:
        """Everything that determines the images and labels of the splits: a cache key."""
        parts = [self, self.in_data, self.out_data, self.out_test_data]
        return json.dumps([describe(part) if part is not None else None for part in parts])
