"""Shared fixtures. Every test runs in its own temporary directory, so `runs/` never leaks."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker per core (pyproject): one thread each
    os.environ["OMP_NUM_THREADS"] = "1"  # and in the processes it starts
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The paper preset's smoke run (a third of the suite's time) starts first, so the workers
    finish together rather than one running it alone at the end."""
    items.sort(key=lambda item: "test_smoke.py::test_the_paper_preset" not in item.nodeid)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("KNOCKOFF_TRUSTED_MODULES", "tests")  # the toy plugins live there
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # never a warm cache
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    yield
    if (wandb := sys.modules.get("wandb")) is not None and wandb.run is not None:
        wandb.finish()  # Lightning's WandbLogger leaves its run open until the process exits


@pytest.fixture(scope="session")
def victim_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits CNN victim trained for six epochs (over 90% accurate), saved as a checkpoint."""
    from functools import partial

    import torch
    from lightning.pytorch import Trainer, seed_everything

    from datamodules import DigitsDataModule
    from lightning_modules import VictimClassifier

    seed_everything(0)
    path = tmp_path_factory.mktemp("victim") / "victim.ckpt"
    trainer = Trainer(
        max_epochs=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    adam = partial(torch.optim.Adam, lr=3e-3)
    cosine = partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=6)
    victim = VictimClassifier("digits_cnn", 10, optimizer=adam, lr_scheduler=cosine)
    trainer.fit(victim, DigitsDataModule())
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)  # what LightningCLI records for ckpt_path
    checkpoint["hyper_parameters"]["_class_path"] = "lightning_modules.victim.VictimClassifier"
    torch.save(checkpoint, path)
    return path
