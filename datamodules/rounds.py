"""The attacker's storage of a query-strategy attack: one folder per round, holding what the
attacker sent and what the API returned, nothing of the victim's.

  round-<r>/queries.npy      the round's pool indices (int64), or images.npy: synthetic queries
  round-<r>/strategy.json    the strategy's state after proposing the round (resume point);
                             its tensors (a generator's weights) beside it, strategy-<key>.npy
  round-<r>/a<start>-<end>.npy  the API's answers to positions [start, end) of the round,
                             one file per API batch, float16 where that holds them exactly
                             (probabilities, labels, top-k), else float32 (rounded answers)

Every file is written atomically, and the proposal last of its two files, so a killed attack
resumes at the first unanswered API batch without asking anything twice. An answer file that
is not what its name promises (unreadable, another shape or dtype: a disk error, a foreign
file) is treated as missing, with one warning naming it, and asked again.

Builders of one transfer set in several processes (sweep agents of one config) take turns per
round through `build_lock`, so none asks a query another has asked or is asking.
"""

import errno
import fcntl
import json
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from knockoff_lab.attacks.base import Queries
from knockoff_lab.core.atomic import atomic_save_npy, atomic_write_text
from knockoff_lab.core.errors import ConfigError


@contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (`fcntl.flock`) on `folder/.lock` for the block.

    Held from a round's proposal to its last stored answer: a second builder waits, then finds
    the round stored and asks nothing. Simpler than claiming API batches, and also right for
    adaptive attacks, whose builders would propose different rounds. A killed holder's lock is
    released by the kernel; the waiter resumes at the first unanswered batch. A folder no one
    can write (a complete cache on a read-only disk) needs no exclusion: the block runs
    unlocked. flock also works over NFS (Linux maps it to POSIX locks)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / ".lock", os.O_RDONLY | os.O_CREAT, 0o644)  # no write: read-only ok
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not folder.is_dir():
            raise ConfigError(
                f"cannot use the transfer-set cache {folder} ({err.strerror}); "
                "set data.cache_dir to a writable folder"
            ) from None
        fd = None  # read-only: nothing to exclude
    if fd is None:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"waiting for another process building the transfer set {folder}",
                file=sys.stderr,
                flush=True,
            )
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def lossless_dtype(answers: np.ndarray) -> np.ndarray:
    """`answers` as float16 if that changes no value (NaN refusals included), else float32."""
    half = answers.astype(np.float16)
    return half if np.array_equal(half.astype(answers.dtype), answers, equal_nan=True) else answers


class Round:
    def __init__(self, folder: Path, num_classes: int):
        self.folder, self.num_classes = folder, num_classes

    # -- the proposal ----------------------------------------------------------------------

    def proposal(self) -> tuple[Queries, dict] | None:
        """(the stored queries, the strategy's state after proposing them), or None."""
        indices, images = self.folder / "queries.npy", self.folder / "images.npy"
        state_file = self.folder / "strategy.json"
        path = indices if indices.is_file() else images if images.is_file() else None
        if path is None:
            return None
        try:
            stored = np.load(path, allow_pickle=False)
            state = json.loads(state_file.read_text()) if state_file.is_file() else {}
            for array in self.folder.glob("strategy-*.npy"):
                key = array.stem.removeprefix("strategy-")
                state[key] = torch.from_numpy(np.load(array, allow_pickle=False))
        except (OSError, ValueError, EOFError) as err:
            raise ConfigError(
                f"transfer-set round {self.folder} has an unreadable proposal "
                f"({type(err).__name__}: {err}); delete the folder"
            ) from None
        if path == indices:
            if stored.ndim != 1 or stored.dtype.kind not in "iu":
                raise ConfigError(
                    f"{path} holds {stored.dtype} {stored.shape}, not pool indices; "
                    "delete the folder"
                )
            return Queries(indices=stored), state
        return Queries(images=torch.from_numpy(stored)), state

    def save_proposal(self, queries: Queries, strategy_state: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v for k, v in strategy_state.items() if isinstance(v, torch.Tensor)}
        for key, tensor in tensors.items():
            atomic_save_npy(self.folder / f"strategy-{key}.npy", tensor.detach().cpu().numpy())
        rest = {k: v for k, v in strategy_state.items() if k not in tensors}
        atomic_write_text(self.folder / "strategy.json", json.dumps(rest))
        if queries.indices is not None:
            atomic_save_npy(self.folder / "queries.npy", np.asarray(queries.indices, np.int64))
        else:
            atomic_save_npy(self.folder / "images.npy", queries.images.float().numpy())

    # -- the answers -----------------------------------------------------------------------

    def chunks(self) -> list[tuple[int, int, Path]]:
        """The valid answer files, as (start, end, path), in order."""
        found = []
        for path in self.folder.glob("a*-*.npy"):
            start, end = (int(part) for part in path.stem[1:].split("-"))
            if self.valid(path, end - start):
                found.append((start, end, path))
        return sorted(found)

    def valid(self, path: Path, rows: int) -> bool:
        try:
            answers = np.load(path, mmap_mode="r", allow_pickle=False)
            problem = None
            if answers.shape != (rows, self.num_classes):
                problem = f"shape {answers.shape}, expected {(rows, self.num_classes)}"
            elif answers.dtype not in (np.float16, np.float32):
                problem = f"dtype {answers.dtype}, expected float16 or float32"
        except (OSError, ValueError, EOFError) as err:
            problem = f"unreadable ({type(err).__name__}: {err})"
        if problem is not None:
            warnings.warn(
                f"ignoring transfer-set answers {path}: {problem}; asking them again", stacklevel=2
            )
        return problem is None

    def missing(self, count: int, piece: int) -> list[tuple[int, int]]:
        """The unanswered positions of [0, count), as pieces of at most `piece` queries cut from
        the start of each gap: the API batches still to send, in a fixed order."""
        pieces, done = [], 0
        for start, end, _ in [*self.chunks(), (count, count, None)]:
            gap_end = min(start, count)
            pieces += [(s, min(s + piece, gap_end)) for s in range(done, gap_end, piece)]
            done = max(done, end)
        return pieces

    def write(self, start: int, answers: np.ndarray) -> None:
        end = start + len(answers)
        atomic_save_npy(self.folder / f"a{start:09d}-{end:09d}.npy", lossless_dtype(answers))

    def read(self, count: int) -> np.ndarray:
        """The answers to the first `count` positions, (count, C), read into one array."""
        parts, done = [], 0
        for start, end, path in self.chunks():
            if start == done and done < count:
                parts.append(np.load(path, allow_pickle=False)[: count - start])
                done = end
        if done < count:
            raise ConfigError(f"transfer-set round {self.folder} holds {done} of {count} answers")
        out = np.empty((count, parts[0].shape[1]), np.result_type(*parts))
        np.concatenate(parts, out=out)
        return out
