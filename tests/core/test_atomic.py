"""Atomic writes: complete or absent, and concurrent writers of one path never share a
temporary file (two processes caching the same answer, say)."""

import os
from pathlib import Path

import pytest

from knockoff_lab.core.atomic import atomic_file, atomic_write_text


def test_interleaved_writers_of_one_path_both_complete(tmp_path: Path):
    target = tmp_path / "answers.txt"
    with atomic_file(target) as first, atomic_file(target) as second:
        first.write("first")
        second.write("second")
    assert target.read_text() == "first"  # the outer block finished last: its file wins
    assert [p.name for p in tmp_path.iterdir()] == ["answers.txt"]


def test_a_failed_write_leaves_nothing(tmp_path: Path):
    target = tmp_path / "result.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path: Path):
    target = tmp_path / "chunk.npy"
    orphan = tmp_path / ".chunk.npy.999999999-deadbeef.tmp"  # no such process
    orphan.write_text("half")
    live = tmp_path / f".chunk.npy.{os.getpid()}-cafef00d.tmp"  # a writer still at work
    live.write_text("busy")
    atomic_write_text(target, "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["chunk.npy", live.name])
