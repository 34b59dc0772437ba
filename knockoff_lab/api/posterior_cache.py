"""The owner's cache of victim posteriors, keyed by the victim's bytes and each query image's
bytes: repeated experiments (A_p and A_c of Table 6, a budget sweep, a guarded and an unguarded
API) compute the victim once per image. It lives on the victim's side of the door; the
attacker's transfer set stores only what the API returned.

One folder per victim; each answered batch adds one file, a structured array of (key, posterior)
rows written atomically. Posteriors are kept at float16 precision (100,000 x 256 take 51 MB):
the precision every answer of the API carries.
"""

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch

from knockoff_lab.core.atomic import atomic_save_npy

KEY_BYTES = 16


def image_keys(images: torch.Tensor) -> list[bytes]:
    """A 16-byte BLAKE2b digest of each image's float32 bytes."""
    rows = images.detach().to("cpu", torch.float32).contiguous().flatten(1).numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=KEY_BYTES).digest() for row in rows]


class PosteriorCache:
    def __init__(self, folder: Path, num_classes: int):
        self.folder, self.num_classes = folder, num_classes
        self.dtype = np.dtype([("key", "u1", (KEY_BYTES,)), ("p", "<f2", (num_classes,))])
        self._index: dict[bytes, np.ndarray] | None = None

    @property
    def index(self) -> dict[bytes, np.ndarray]:
        """Every cached posterior by key, read once; a file of another layout is skipped with a
        warning naming it (it is then recomputed, never trusted)."""
        if self._index is None:
            self._index = {}
            for path in sorted(self.folder.glob("*.npy")):
                try:
                    rows = np.load(path, allow_pickle=False)
                    assert rows.dtype == self.dtype and rows.ndim == 1
                except Exception:
                    warnings.warn(
                        f"ignoring unreadable victim-posterior cache file {path}", stacklevel=2
                    )
                    continue
                self._index.update(zip((k.tobytes() for k in rows["key"]), rows["p"], strict=True))
        return self._index

    def lookup(self, keys: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(hit mask (N,), posteriors of the hits (hits, C) float16)."""
        found = [self.index.get(key) for key in keys]
        hits = np.array([row is not None for row in found], dtype=bool)
        rows = [row for row in found if row is not None]
        return hits, np.stack(rows) if rows else np.empty((0, self.num_classes), np.float16)

    def add(self, keys: list[bytes], posteriors: np.ndarray) -> None:
        rows = np.empty(len(keys), self.dtype)
        rows["key"] = np.frombuffer(b"".join(keys), np.uint8).reshape(-1, KEY_BYTES)
        rows["p"] = posteriors
        name = hashlib.blake2b(b"".join(keys), digest_size=8).hexdigest()
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # the owner's only
        atomic_save_npy(self.folder / f"{name}.npy", rows, "victim-posterior cache file", True)
        self.index.update(zip(keys, rows["p"], strict=True))
