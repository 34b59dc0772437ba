"""The report's files are complete or the previous ones: a full disk while writing results.csv or
tables.md leaves the last complete file under its name and nothing half-written beside it."""

import builtins
import errno
import io
import os

import pytest

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.pipeline.report import read_results, write_results, write_tables

OLD = {("2", "digits-cnn", "probs", "acc_surrogate"): [0.5]}
NEW = {("2", "digits-cnn", "probs", "acc_surrogate"): [0.9, 0.8]}


def full_disk(monkeypatch, folder):
    """Every file opened for writing under `folder`, however it is opened, takes half of its
    first write and then raises ENOSPC."""
    real_open = builtins.open

    class Full:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            self.file.write(data[: len(data) // 2])
            self.file.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def open_(path, mode="r", *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        inside = os.path.abspath(path).startswith(str(folder))
        return Full(file) if inside and "w" in mode else file

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)  # Path.write_text opens through io.open


@pytest.mark.parametrize("name", ["results.csv", "tables.md"])
def test_a_full_disk_keeps_the_previous_report_file(tmp_path, monkeypatch, name):
    path = tmp_path / "report" / name
    path.parent.mkdir()
    write = write_results if name == "results.csv" else lambda p, r: write_tables(p, r, False)
    write(path, OLD)
    before = path.read_bytes()
    with monkeypatch.context() as patch:
        full_disk(patch, path.parent)
        with pytest.raises(ConfigError, match=f"no space left on device for report file {path}"):
            write(path, NEW)
    assert path.read_bytes() == before  # the previous complete file, not a truncated one
    assert os.listdir(path.parent) == [name]  # and no temporary file beside it
    if name == "results.csv":
        assert read_results(path) == OLD
    write(path, NEW)  # space again: the new report replaces the old
    assert path.read_bytes() != before
