"""The W&B logger config drives the real wandb client, offline, with no network."""

from pathlib import Path

from knockoff_lab.pipeline.cli import cli_main
from knockoff_lab.pipeline.loggers import AutoWandbLogger
from tests.conftest import CONFIGS


def test_offline_when_not_logged_in(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    assert AutoWandbLogger(project="p", save_dir=str(tmp_path))._offline


def test_wandb_config_writes_a_syncable_offline_run():
    cli_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "victim/digits_cnn.yaml"),
            "--config",
            str(CONFIGS / "logger/wandb.yaml"),
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--test_after_fit",
            "false",
        ]
    )
    runs = list(Path("runs/wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")), "no wandb event file to sync"
