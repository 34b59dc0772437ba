"""Files that are complete or absent: every cache, score table and stage result is written here.

A kill never leaves a partial file under the final name (the reader of a resumed run trusts what
it finds), a failed write leaves no temporary file, and a full disk is a one-line user error.
"""

import glob
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from errno import EDQUOT, ENOSPC
from pathlib import Path
from typing import IO

import numpy as np

from knockoff_lab.core.errors import ConfigError


@contextmanager
def atomic_file(
    path: Path, mode: str = "w", what: str = "file", private: bool = False
) -> Iterator[IO]:
    """Open a temporary file beside `path`; when the block ends without error, fsync it and
    rename it to `path`. `what` names the file in the full-disk message; `private` makes it
    readable by its owner only (it holds other people's data) from its first byte. The
    temporary name is unique (`.<name>.<pid>-<random>.tmp`), so concurrent writers of one path
    never share it: the last complete file wins."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        if private:  # created 0600 before a byte is written; open() then keeps the mode
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        with open(tmp, mode, newline=None if "b" in mode else "") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        remove_orphans(path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (ENOSPC, EDQUOT):
            raise ConfigError(
                f"no space left on device for {what} {path}; free space there or write it to "
                "another disk"
            ) from None
        raise


def remove_orphans(path: Path) -> None:
    """Delete the temporary files of `path` left by killed writers (their process is gone; a
    live writer's file is left alone). Writers on other hosts of a shared disk look dead here:
    their write then fails loudly rather than silently."""
    for orphan in path.parent.glob(f".{glob.escape(path.name)}.*-*.tmp"):
        pid = orphan.name[len(path.name) + 2 :].split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            orphan.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def atomic_save_npy(
    path: Path, array: np.ndarray, what: str = "cache file", private: bool = False
) -> None:
    with atomic_file(path, "wb", what, private) as f:
        np.save(f, array, allow_pickle=False)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)
