"""Bases of the DataModules that read a real dataset from `data.root`, in its publisher's layout.

One rule for every on-disk dataset: `data.root` is a data root that holds each dataset in its own
folder, named as its publisher's archive (or torchvision's downloader) names it. Each DataModule
states that folder as its class attribute `folders` (alternatives in order of preference; the
first is where `download: true` writes) and what the folder holds as `contents`, so one
`--data.root /data` points any experiment at a disk holding all of them:

  /data/256_ObjectCategories/ or /data/caltech256/256_ObjectCategories/    Caltech256
  /data/CUB_200_2011/                                                      CUBS200
  /data/cifar-10-batches-py/                                               CIFAR10
  /data/gtsrb/                                                             GTSRB
  /data/diabetic-retinopathy-detection/                                    Diabetic5
  /data/imagenet/train/ (or imagenet/ILSVRC/Data/CLS-LOC/train/)           ImageNetSubset
  /data/openimages/                                                        OpenImages
  /data/bing/                                                              Bing

  OnDiskDataModule  the root, the dataset's folder, the image size, the readability check, the
                    missing-data error;
  VictimDataModule  hook `load() -> {"train", "test"}`: the victim's labelled data. Adds `val`,
                    held out of train (the paper has train/test only, and checkpoints must never
                    be selected on test), `exclude_overlap` and `as_pool`;
  PoolDataModule    hook `sample() -> ImageFiles`: the attacker's query images, split `pool`,
                    yielded without labels (labels, where any, stay on `.labelled`).
Every split is seeded by `data.seed` and the same on every run and machine.
"""

import warnings
from abc import abstractmethod
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from itertools import compress
from pathlib import Path

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from datamodules.base import ImageDataModule, ImagesOnly
from datamodules.decoded_store import (
    TRAIN_MARGIN,
    StoredImages,
    collated,
    cut_crops,
    stored,
)
from datamodules.images import (
    IMAGE_SUFFIXES,
    ImageFiles,
    LabelledImages,
    check_readable,
    image_transform,
    list_images,
)
from datamodules.overlap import catalog, overlapping
from knockoff_lab.core.errors import ConfigError


def holdout(
    labels: Sequence[int],
    groups: Sequence[str],
    per_class: Callable[[int], int],
    seed: Sequence[int],
) -> np.ndarray:
    """Boolean mask of a seeded holdout of `per_class(n)` images of each class of n images.

    Whole groups move together (a GTSRB track of 30 frames of one sign, both eyes of a Diabetic5
    patient), so near-duplicates never straddle two splits; a group is drawn for one class and
    may bring along images of another (a patient's other eye), counted for that class.
    """
    rng = np.random.default_rng(list(seed))
    counts = Counter(zip(labels, groups, strict=True))
    class_groups: dict[int, list[str]] = defaultdict(list)
    for label, group in counts:
        class_groups[label].append(group)
    chosen: set[str] = set()
    for label in sorted(class_groups):
        members = class_groups[label]
        want = per_class(sum(counts[label, g] for g in members))
        taken = sum(counts[label, g] for g in members if g in chosen)
        for i in rng.permutation(len(members)):
            if taken >= want:
                break
            if members[i] not in chosen:
                chosen.add(members[i])
                taken += counts[label, members[i]]
    return np.array([group in chosen for group in groups], dtype=bool)


def share(fraction: float) -> Callable[[int], int]:
    """Per-class holdout size: `fraction` of a class, at least one image of any class of two."""
    return lambda n: max(1, round(fraction * n)) if n > 1 else 0


def class_folders(folder: Path) -> list[Path]:
    """Sub-folders of `folder`, sorted; files and hidden folders beside them are ignored."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


class OnDiskDataModule(ImageDataModule):
    """A dataset in its own folder under `root`. Subclasses state `folders`, `contents` and
    `source` (the module docstring has the rule).

    Args:
        root: the data root, holding each dataset in its own folder (see README, Real datasets).
        image_size: side of the square RGB images fed to the network (224 ResNets, 32 5L/9L).
        skip_unreadable: skip unreadable image files with one warning instead of failing.
        store_dir: where to keep each split decoded once (`datamodules/decoded_store.py`), so
            that no epoch after the first decodes a JPEG (built by `num_workers` processes);
            None reads the files every time.
        batch_size: images per batch.
        num_workers: DataLoader worker processes (0: load in the main process).
        seed: seed of every split and sample.
    """

    folders: tuple[str, ...]  # the dataset's folder under root; the first is where download writes
    required: tuple[str, ...] = ()  # what must be in that folder before any work starts
    contents: str  # what the folder holds, for the missing-data error
    source: str  # where to get it

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        skip_unreadable: bool = False,
        store_dir: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(batch_size, num_workers, seed)
        if image_size < 8:
            raise ConfigError(f"data.image_size must be >= 8, got {image_size}")
        self.root = Path(root).expanduser()
        self.image_size, self.skip_unreadable = image_size, skip_unreadable
        self.store_dir = None if store_dir is None else Path(store_dir).expanduser()
        self.eval_transform = image_transform(image_size, augment=False)

    @classmethod
    def layout(cls) -> str:
        """The expected layout, relative to the data root."""
        return f"{' or '.join(f'<root>/{f}/' for f in cls.folders)} holding {cls.contents}"

    def missing(self, what: str, looked: Sequence[Path]) -> ConfigError:
        """The one-line error for absent data: what is missing, every path looked at, the layout
        expected and where to get it."""
        return ConfigError(
            f"{type(self).__name__}: {what} not found under data.root={self.root}; looked at "
            f"{', '.join(str(path) for path in looked)}; expected {self.layout()}; "
            f"get it from {self.source}"
        )

    def dataset_dir(self) -> Path:
        """The dataset's folder under root (the first of `folders` there), holding `required`."""
        looked = [self.root / folder for folder in self.folders]
        if (found := next((path for path in looked if path.is_dir()), None)) is None:
            raise self.missing("the dataset's folder", looked)
        for name in self.required:
            self.need(found / name)
        return found

    def need(self, path: Path) -> Path:
        """`path`, a file or folder of the dataset, or the missing-data error naming it."""
        if not path.exists():
            what = path.relative_to(self.root) if path.is_relative_to(self.root) else path
            raise self.missing(str(what), [path])
        return path

    def check_present(self) -> None:
        """The missing-data error now, before any expensive work (nothing to check when the
        dataset is downloaded on first use)."""
        if not getattr(self, "download", False):
            self.dataset_dir()

    def image_files(self, files: Sequence[str], labels: Sequence[int], where: Path) -> ImageFiles:
        """Labelled files, each checked readable (or skipped, with `skip_unreadable`)."""
        ok = check_readable(files, self.skip_unreadable, str(where))
        return ImageFiles(list(compress(files, ok)), list(compress(labels, ok)))

    def decoded(self, images: Dataset, augment: bool = False) -> Dataset:
        """`images` read from their decoded store when `store_dir` is set: at `image_size` for
        the eval path (the same tensors), larger for random resized crops (`augment`)."""
        if self.store_dir is None or not isinstance(images, ImageFiles):
            return images
        size = round(self.image_size * TRAIN_MARGIN) if augment else self.image_size
        return stored(images, size, self.store_dir, self.num_workers)

    @staticmethod
    def folder_images(folder: Path) -> list[str]:
        """Images of one class folder; an empty one is an error (a failed or partial unpack)."""
        if not (images := list_images(folder)):
            raise ConfigError(
                f"class folder {folder} holds no images; every class needs at least one "
                f"({', '.join(sorted(IMAGE_SUFFIXES))} file)"
            )
        return images


class VictimDataModule(OnDiskDataModule):
    """A victim's labelled data: splits `train`, `val`, `test`, and `pool` with `as_pool`.

    Args:
        augment: random resized crop and horizontal flip on the train split (never elsewhere).
        val_fraction: share of each class's training images held out as `val` for checkpoint
            selection.
        exclude_overlap: drop the classes listed as overlapping ImageNet-1k in
            `datamodules/overlap/<dataset>.json` (paper 4.2.2, starred models); the remaining
            classes are relabelled 0..K-1 in their original order.
        as_pool: also offer the train split's images, without labels or augmentation, as a
            query pool (Diabetic5 queried against GTSRB, 5.1.3).
    """

    catalog: str  # the class catalog under datamodules/overlap/

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        augment: bool = False,
        val_fraction: float = 0.1,
        exclude_overlap: bool = False,
        as_pool: bool = False,
        skip_unreadable: bool = False,
        store_dir: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(
            root, image_size, skip_unreadable, store_dir, batch_size, num_workers, seed
        )
        if not 0 < val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        self.classes: list[str] = catalog(self.catalog)["classes"]
        self.excluded = overlapping(self.catalog) if exclude_overlap else set()
        self.num_classes = len(self.classes) - len(self.excluded)
        self.val_fraction, self.as_pool, self.augment = val_fraction, as_pool, augment
        self.train_transform = image_transform(image_size, augment)

    @abstractmethod
    def load(self) -> dict[str, LabelledImages]:
        """`train` and `test`, without transforms, labels indexing `self.classes`."""

    def group_of(self, name: str) -> str:
        """Images of one group never straddle two splits; by default each image is its own."""
        return name

    def expand_train(self, train: LabelledImages) -> LabelledImages:
        """Hook for offline augmentation of the training images (Diabetic5); none by default."""
        return train

    def split_test(self, data: LabelledImages, per_class: int) -> dict[str, LabelledImages]:
        """Knockoff's test rule: a fixed, seeded number of images of each class."""
        groups = [self.group_of(name) for name in data.names]
        test = holdout(data.labels, groups, lambda n: per_class, (self.seed, 0))
        return {
            "train": data.select(np.flatnonzero(~test)),
            "test": data.select(np.flatnonzero(test)),
        }

    def without_overlap(self, data: LabelledImages) -> LabelledImages:
        """`data` without the excluded classes, relabelled 0..K-1 (identity when none)."""
        if not self.excluded:
            return data
        kept = [c for c, name in enumerate(self.classes) if name not in self.excluded]
        relabel = {old: new for new, old in enumerate(kept)}
        data = data.select([i for i, label in enumerate(data.labels) if label in relabel])
        data.labels = [relabel[label] for label in data.labels]
        return data

    def build_splits(self) -> dict[str, Dataset]:
        parts = {name: self.without_overlap(part) for name, part in self.load().items()}
        train = parts["train"]
        groups = [self.group_of(name) for name in train.names]
        held = holdout(train.labels, groups, share(self.val_fraction), (self.seed, 1))
        fit, val = np.flatnonzero(~held), np.flatnonzero(held)
        train_images = self.expand_train(train.select(fit)).select(transform=self.train_transform)
        splits: dict[str, Dataset] = {
            "train": self.decoded(train_images, self.augment),
            "val": self.decoded(train.select(val, self.eval_transform)),
            "test": self.decoded(parts["test"].select(transform=self.eval_transform)),
        }
        for name, split in splits.items():
            if not len(split):
                raise ConfigError(
                    f"{type(self).__name__}: the {name} split under {self.root} "
                    "is empty; too few images per class"
                )
        if self.as_pool:
            splits["pool"] = ImagesOnly(self.decoded(train.select(fit, self.eval_transform)))
        return splits

    def train_dataloader(self) -> DataLoader:
        """In a fit from a store with `augment`, the crops are cut on the device (`StoredCrops`)."""
        train = self.split("train")
        if not (self.augment and isinstance(train, StoredImages)):
            return super().train_dataloader()
        return self.loader_of(train.crops(), shuffle=True, collate_fn=collated)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, list) and isinstance(batch[0], list):  # StoredCrops' (image, box)
            return [cut_crops(*batch[0], self.image_size), batch[1]]
        return batch


class PoolDataModule(OnDiskDataModule):
    """Attacker query images: split `pool`, without labels and never augmented."""

    num_classes = 0  # a pool has no task of its own; its labels are for analysis only

    @abstractmethod
    def sample(self) -> ImageFiles:
        """The pool's images, labelled (-1 where the source has no labels), readable."""

    def sample_per_class(self, folders: list[Path], per_class: int) -> ImageFiles:
        """A seeded sample of `per_class` images from each class folder, labelled by folder
        index; a folder holding fewer gives all of its images (one warning counts them)."""
        rng = np.random.default_rng(self.seed)
        where = folders[0].parent if folders else self.root
        files, labels, short = [], [], 0
        for label, folder in enumerate(folders):
            images = self.folder_images(folder)
            short += len(images) < per_class
            take = np.sort(rng.choice(len(images), min(per_class, len(images)), replace=False))
            files += [images[i] for i in take]
            labels += [label] * len(take)
        if short:
            warnings.warn(
                f"{short} of {len(folders)} class folders under {where} hold fewer "
                f"than {per_class} images; all of theirs are taken",
                stacklevel=2,
            )
        return self.image_files(files, labels, where)

    def build_splits(self) -> dict[str, Dataset]:
        return {
            "pool": ImagesOnly(self.decoded(self.sample().select(transform=self.eval_transform)))
        }


def check_present(datamodule: object) -> None:
    """The missing-data error of the first absent on-disk dataset in `datamodule`, itself or
    nested in it (in/out data, a transfer set's pool and victim data), before any of them
    starts its expensive work (a readability check, a cache, the queries)."""
    seen: set[int] = set()

    def walk(module: object) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        if isinstance(module, OnDiskDataModule):
            module.check_present()
        for value in vars(module).values():
            if isinstance(value, LightningDataModule):
                walk(value)

    walk(datamodule)
