"""Datasets in their real on-disk layouts (tests/datamodules/layouts.py), written by the tests."""

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.datamodules.layouts import WRITERS, all_datasets


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data root holding every dataset in its own folder, as on a real disk; written once
    per session, tests must not damage it."""
    return all_datasets(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def layout(data_root: Path) -> Callable[[str], Path]:
    """The data root that holds dataset `name` (the shared one, holding all datasets)."""

    def get(name: str) -> Path:
        assert name in WRITERS, name
        return data_root

    return get


@pytest.fixture
def fresh_layout(tmp_path: Path) -> Callable[[str], Path]:
    """A private data root holding only dataset `name`, for tests that break it."""
    return lambda name: WRITERS[name](tmp_path / name)
