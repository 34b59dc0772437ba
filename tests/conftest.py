"""Shared fixtures. Every test runs in its own temporary directory, so `runs/` never leaks."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # never a warm cache
    os.environ.setdefault("OMP_NUM_THREADS", "2")
