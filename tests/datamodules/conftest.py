"""Datasets in their real on-disk layouts (tests/datamodules/layouts.py), written by the tests."""

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.datamodules.layouts import WRITERS


@pytest.fixture(scope="session")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Root of a dataset, written once per session; tests must not damage it."""
    roots: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in roots:
            roots[name] = WRITERS[name](tmp_path_factory.mktemp(name))
        return roots[name]

    return get


@pytest.fixture
def fresh_layout(tmp_path: Path) -> Callable[[str], Path]:
    """Root of a private copy of a dataset, for tests that break it."""
    return lambda name: WRITERS[name](tmp_path / name)
