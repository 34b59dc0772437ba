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


def test_a_resumed_run_keeps_the_killed_runs_rows_before_the_epoch_it_starts_at(tmp_path):
    """The killed run logged epochs 0 and 1 (1 unfinished); the resumed run starts at epoch 1:
    epoch 0's rows stay, the killed epoch 1's go, the new rows follow (a new column too)."""
    import csv

    from knockoff_lab.pipeline.loggers import ResumableCSVLogger

    killed = ResumableCSVLogger(str(tmp_path), name="", version="")
    for epoch, step in ((0, 0), (0, 1), (1, 2)):
        killed.log_metrics({"train/loss": 1.0 + step, "epoch": epoch}, step)
    killed.save()
    resumed = ResumableCSVLogger(str(tmp_path), name="", version="")
    resumed.log_metrics({"train/loss": 7.0, "val/acc": 0.5, "epoch": 1}, 2)
    resumed.save()
    with open(tmp_path / "metrics.csv", newline="") as file:
        rows = [
            (r["epoch"], r["step"], r["train/loss"], r["val/acc"]) for r in csv.DictReader(file)
        ]
    assert rows == [("0", "0", "1.0", ""), ("0", "1", "2.0", ""), ("1", "2", "7.0", "0.5")]
