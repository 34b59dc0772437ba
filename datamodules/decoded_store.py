"""Images decoded once: a uint8 (N, 3, S, S) memory-mapped array per split, read by every epoch.

A JPEG costs 2-10 ms to decode and resize at 224 px, a stored image a copy; at paper scale (200
epochs over 100,000 pool images) the decode is what a GPU waits for. `DecodedStore.open` builds
the store on first use (the short side resized to S, the centre cropped: exactly the eval path
of `image_transform`), in parallel processes, chunk by chunk, and resumes a build that was killed
(only chunks written in full are marked done). `meta.json`, written last, marks it complete; the
key (`<store_dir>/<key>/`) covers each file's path, size and modification time and S, so a store
is never read for other files. `StoredImages` serves it in place of `ImageFiles`.

What it keeps of the paper's transforms: at S = image_size the eval transform on a stored image
gives the same tensor as on the JPEG (the resize is then an identity), so queries, validation
and tests see the same pixels. The training split is stored larger (`TRAIN_MARGIN`, 256 px for
224) and the random resized crops are cut from that stored centre square, not the whole photo:
the crops lose the ends of the long side and are resampled from 256 px, not the original size.

In a fit the training crops are cut on the training device (`StoredCrops`, `cut_crops`): a
worker copies the stored bytes and draws the crop box and the flip (RandomResizedCrop's
distribution), and the batch is cut, resized (bilinear, `roi_align`), flipped and normalised as
one tensor on the GPU, since resizing 224 px crops costs a CPU worker more than reading them.
"""

import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import roi_align
from torchvision.transforms import RandomResizedCrop, v2

from datamodules.images import ImageFiles, Transform, decode
from knockoff_lab.core.atomic import atomic_write_text
from knockoff_lab.core.digests import digest
from knockoff_lab.core.normalization import IMAGENET_MEAN, IMAGENET_STD

VERSION = 1  # of the stored layout and of the resize; a change makes new keys
CHUNK = 256  # images per unit of work and of resumption
TRAIN_MARGIN = 8 / 7  # the training split's stored side over image_size (Knockoff's 256 for 224)


def key_of(files: Sequence[str], size: int) -> str:
    """Digest of what decides the stored bytes: each file's path, size and mtime, and S."""
    stats = [(os.path.abspath(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    return digest(json.dumps([VERSION, size, stats]))


def fit_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """The short side resized to `size` and the centre cropped, as `image_transform`'s eval path."""
    return v2.functional.center_crop(v2.functional.resize(image, size, antialias=True), size)


def write_chunk(path: str, count: int, size: int, start: int, files: Sequence[str]) -> int:
    """Decode `files` into rows `start...` of the array at `path`; returns `start` (a worker)."""
    array = np.memmap(path, np.uint8, "r+", shape=(count, 3, size, size))
    for row, file in enumerate(files, start):
        array[row] = fit_square(decode(file), size).numpy()
    array.flush()
    return start


class DecodedStore:
    """The images of `files` at S x S, uint8, in `folder` (built by `open`)."""

    def __init__(self, folder: Path, count: int, size: int):
        self.folder, self.count, self.size = folder, count, size
        self.array: np.memmap | None = None  # opened lazily, in each DataLoader worker

    @classmethod
    def open(cls, files: Sequence[str], size: int, store_dir: Path, workers: int) -> "DecodedStore":
        """The store of `files` at side `size`, built (or its build resumed) if not complete."""
        folder = Path(store_dir) / key_of(files, size)
        store = cls(folder, len(files), size)
        meta = folder / "meta.json"
        if meta.is_file() and json.loads(meta.read_text()) == store.meta:
            return store
        store.build(files, workers)
        atomic_write_text(meta, json.dumps(store.meta))
        (folder / "done.txt").unlink()
        return store

    @property
    def meta(self) -> dict:
        return {"version": VERSION, "count": self.count, "size": self.size}

    @property
    def data_path(self) -> Path:
        return self.folder / "images.u8"

    def build(self, files: Sequence[str], workers: int) -> None:
        """Decode every chunk not yet marked done in `done.txt`, in `workers` processes."""
        self.folder.mkdir(parents=True, exist_ok=True)
        shape = (self.count, 3, self.size, self.size)
        done_file = self.folder / "done.txt"
        if not self.data_path.exists() or self.data_path.stat().st_size != np.prod(shape):
            done_file.unlink(missing_ok=True)  # a build killed before its array was made
            np.memmap(self.data_path, np.uint8, "w+", shape=shape).flush()
        done = set(map(int, done_file.read_text().split())) if done_file.exists() else set()
        todo = [s for s in range(0, self.count, CHUNK) if s not in done]
        chunks = [
            (str(self.data_path), self.count, self.size, s, files[s : s + CHUNK]) for s in todo
        ]
        with open(done_file, "a") as log:
            if workers == 0:
                for chunk in chunks:
                    mark(log, write_chunk(*chunk))
                return
            with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
                for job in [pool.submit(write_chunk, *chunk) for chunk in chunks]:
                    mark(log, job.result())

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.read(index))

    def read(self, rows: int | np.ndarray) -> np.ndarray:
        """The image at row `rows`, or a batch of them in one read (a copy, not a view)."""
        if self.array is None:
            shape = (self.count, 3, self.size, self.size)
            self.array = np.memmap(self.data_path, np.uint8, "r", shape=shape)
        return np.array(self.array[rows])

    def __getstate__(self) -> dict:  # a worker reopens the file; the mapping never pickles
        return {**self.__dict__, "array": None}


def mark(log, start: int) -> None:
    """Record chunk `start` as written in full (after its flush), durably."""
    log.write(f"{start}\n")
    log.flush()
    os.fsync(log.fileno())


class StoredImages(ImageFiles):
    """`ImageFiles` read from a `DecodedStore` of its files (`rows`: each image's row there)."""

    def __init__(
        self,
        files: Sequence[str],
        labels: Sequence[int],
        transform: Transform | None,
        store: DecodedStore,
        rows: Sequence[int] | None = None,
    ):
        super().__init__(files, labels, transform)
        self.store = store
        self.rows = np.arange(len(self.files)) if rows is None else np.asarray(rows, np.int64)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.store[int(self.rows[index])]
        return (self.transform(image) if self.transform else image), self.labels[index]

    def crops(self) -> "StoredCrops":
        """The same images for a fit: crop boxes drawn here, cut on the device."""
        return StoredCrops(self.files, self.labels, None, self.store, self.rows)

    def select(
        self, indices: Sequence[int] | None = None, transform: Transform | None = None
    ) -> "StoredImages":
        if indices is None:
            return StoredImages(self.files, self.labels, transform, self.store, self.rows)
        picked = super().select(indices)
        return StoredImages(
            picked.files, picked.labels, transform, self.store, self.rows[list(indices)]
        )


def stored(images: ImageFiles, size: int, store_dir: Path, workers: int) -> ImageFiles:
    """`images` (with its transform) read from their store at side `size`."""
    if not len(images):
        return images
    store = DecodedStore.open(images.files, size, store_dir, workers)
    return StoredImages(images.files, images.labels, images.transform, store)


class StoredCrops(StoredImages):
    """Training images of a store for a fit: (uint8 image, crop box), label; the box is
    (x1, y1, x2, y2, flip), drawn as `RandomResizedCrop` and `RandomHorizontalFlip` draw theirs.
    The DataModule's `on_after_batch_transfer` cuts the batch (`cut_crops`). A DataLoader
    reads a whole batch at once (`__getitems__`, with `collate_fn=collated`): one copy of its
    bytes, 1.3x the images/s of item by item in `benchmarks/data_loading.py`."""

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
        image = self.store[int(self.rows[index])]
        return (image, self.box(image)), self.labels[index]

    def __getitems__(self, indices: list[int]) -> list:
        """[[images (B, 3, S, S), boxes (B, 5)], labels (B,)]: a batch, collated already; the
        boxes drawn in the order `__getitem__` would draw them."""
        images = torch.from_numpy(self.store.read(self.rows[indices]))
        boxes = torch.stack([self.box(image) for image in images])
        return [[images, boxes], torch.tensor([self.labels[i] for i in indices])]

    @staticmethod
    def box(image: torch.Tensor) -> torch.Tensor:
        top, left, height, width = RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
        flip = float(torch.rand(()) < 0.5)
        return torch.tensor([left, top, left + width, top + height, flip])


def collated(batch: list) -> list:
    """The collate function of a dataset whose `__getitems__` returns a whole batch."""
    return batch


def cut_crops(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """The boxes of `images` (uint8, B x 3 x S x S) resized to `size`, flipped where their flip
    is 1, normalised: float (B, 3, size, size), on the images' device."""
    rois = torch.cat([torch.arange(len(boxes), device=boxes.device)[:, None], boxes[:, :4]], 1)
    crops = roi_align(images.float(), rois.to(torch.float32), size, aligned=True)
    flip = boxes[:, 4].bool()
    crops[flip] = crops[flip].flip(-1)
    mean = torch.tensor(IMAGENET_MEAN, device=crops.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=crops.device).view(1, 3, 1, 1) * 255
    return crops.sub_(mean).div_(std)
