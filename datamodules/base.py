"""Base DataModule: owns the splits and every loader; a dataset fills one hook, `build_splits`.

Split names mean the same everywhere:
  train, val, test  the owner's labelled data (victim or detector);
  pool              images an attacker may query with; yielded without labels.
"""

import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from knockoff_lab.core.errors import ConfigError


def init_arguments(obj: object) -> dict[str, Any]:
    """The arguments `obj` is being built with: those of every `__init__` on the call stack that
    builds it (its class's and its parents'), the subclass's winning. Read from the frames, as
    Lightning's `save_hyperparameters` does, but never from LightningCLI's config, which it
    hands every module built inside another: a pool nested in a transfer set would record the
    set's settings, and two pools that differ only in `source` would look alike."""
    arguments: dict[str, Any] = {}
    frame = inspect.currentframe().f_back
    while frame is not None and frame.f_code.co_name == "__init__":
        if frame.f_locals.get("self") is not obj:
            break
        info = inspect.getargvalues(frame)
        own = {name: info.locals[name] for name in info.args[1:]}
        own.update(info.locals[info.keywords] if info.keywords else {})
        arguments = {**arguments, **own}  # the caller, a subclass, overrides its parent
        frame = frame.f_back
    return arguments


class ImagesOnly(Dataset):
    """A view of a labelled dataset that hides the labels: what a query pool gives an attacker.

    The labels stay reachable through `.labelled` for analysis only.
    """

    def __init__(self, labelled: Dataset):
        self.labelled = labelled

    def __len__(self) -> int:
        return len(self.labelled)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.labelled[index][0]


class EpochShuffle(Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch), not by the global RNG.

    Lightning calls `set_epoch` before every epoch, so a run resumed from a checkpoint sees the
    same order as an uninterrupted one (and DDP's DistributedSampler does the same per rank).
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


class ImageDataModule(LightningDataModule, ABC):
    """Loaders for the splits returned by `build_splits`; `num_classes` is set by subclasses."""

    num_classes: int
    # init arguments that are objects, not settings: kept out of `hparams` and checkpoints
    not_hparams: tuple[str, ...] = ()

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0):
        super().__init__()
        arguments = init_arguments(self)
        self.save_hyperparameters({k: v for k, v in arguments.items() if k not in self.not_hparams})
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        if seed < 0:  # numpy's generators take no negative seed: found only mid-run otherwise
            raise ConfigError(f"data.seed must be >= 0, got {seed}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.splits: dict[str, Dataset] = {}

    @abstractmethod
    def build_splits(self) -> dict[str, Dataset]:
        """Return the datasets by split name (see the module docstring)."""

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = self.build_splits()

    def split(self, name: str) -> Dataset:
        self.setup()
        if name not in self.splits:
            raise ConfigError(
                f"{type(self).__name__} has no {name!r} split (has: {', '.join(self.splits)})"
            )
        return self.splits[name]

    def loader(self, name: str, shuffle: bool = False) -> DataLoader:
        return self.loader_of(self.split(name), shuffle)

    def loader_of(
        self, dataset: Dataset, shuffle: bool = False, collate_fn: Callable | None = None
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffle(len(dataset), self.seed) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def query_analysis(self, indices) -> dict[str, float]:
        """What the owner can say about these pool queries, logged per round as `attack/<name>`
        and never shown to the strategy: nothing, but for a pool that knows (a mixed pool)."""
        return {}

    def predict_dataloader(self) -> DataLoader:
        return self.loader("pool" if "pool" in self.splits else "test")


def describe(datamodule: ImageDataModule) -> str:
    """The settings that determine a DataModule's images (not how they are batched or read), as
    JSON: the init parameters of its class and its parents, nothing Lightning collected from the
    calling frames (a pool built inside a transfer set must not carry the set's budget); a
    DataModule it is built from (a mixed pool's parts) by its own description."""
    own = set()
    for cls in type(datamodule).__mro__:
        if "__init__" in vars(cls):
            own |= set(inspect.signature(cls.__init__).parameters)
    skip = {"self", "batch_size", "num_workers", "store_dir", *datamodule.not_hparams}
    settings = {k: v for k, v in datamodule.hparams.items() if k in own and k not in skip}
    for name in datamodule.not_hparams:
        if isinstance(part := getattr(datamodule, name, None), ImageDataModule):
            settings[name] = json.loads(describe(part))
    return json.dumps(
        {"class": type(datamodule).__qualname__, **settings}, sort_keys=True, default=str
    )
