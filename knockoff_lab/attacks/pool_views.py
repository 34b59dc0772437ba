"""Small helpers the adaptive strategies share: pool images (a few, or the whole pool streamed
in chunks), what is still unasked, and the images behind the queries asked so far (pool rows or
stored synthetic images)."""

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from knockoff_lab.attacks.base import Seen


def pool_images(pool: Dataset, indices: np.ndarray | None = None) -> torch.Tensor:
    """The pool images at `indices` (all when None) stacked into one float tensor; a pool that
    yields (image, ...) tuples gives its images."""
    indices = np.arange(len(pool)) if indices is None else indices
    items = [pool[int(i)] for i in indices]
    return torch.stack([item[0] if isinstance(item, tuple | list) else item for item in items])


def pool_chunks(
    pool: Dataset, indices: np.ndarray | None = None, size: int = 256
) -> Iterator[torch.Tensor]:
    """The pool images at `indices` (all when None), in order, `size` at a time: a strategy
    reads a 100,000-image pool at 224 px (60 GB as floats) without ever holding it."""
    indices = np.arange(len(pool)) if indices is None else indices
    for start in range(0, len(indices), size):
        yield pool_images(pool, indices[start : start + size])


def unasked(seen: Seen) -> np.ndarray:
    """Pool indices not asked yet, ascending."""
    return np.setdiff1d(np.arange(len(seen.pool)), seen.indices)


def asked_images(seen: Seen, rows: np.ndarray) -> torch.Tensor:
    """The images of the queries at `rows` of `seen`: read from the pool for a pool query
    (index >= 0), from `seen.images` for a synthetic one (index -1)."""
    synthetic_position = np.cumsum(seen.indices < 0) - 1
    out = []
    for row in rows.tolist():
        index = int(seen.indices[row])
        if index >= 0:
            out.append(pool_images(seen.pool, np.array([index]))[0])
        else:
            out.append(seen.images[synthetic_position[row]])
    return torch.stack(out).float()


def answered_rows(seen: Seen) -> np.ndarray:
    """Rows of `seen` the API answered (a refused query has a NaN row)."""
    return np.flatnonzero(~seen.answers.isnan().any(dim=-1).numpy())
