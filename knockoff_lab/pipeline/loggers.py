"""Loggers: a WandbLogger that works with no network (offline unless the user has logged in to
W&B), and a CSVLogger whose metrics.csv survives a resume."""

import csv
import netrc
import os
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

# Lightning's console loggers: the CLI sends their info lines to stdout, `reproduce` to a log file
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


def wandb_logged_in() -> bool:
    """True when W&B has credentials: `WANDB_API_KEY` or a `wandb login` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_offline() -> bool:
    """Offline when `WANDB_MODE` is unset and the user is not logged in: never a login prompt."""
    return os.environ.get("WANDB_MODE") is None and not wandb_logged_in()


class AutoWandbLogger(WandbLogger):
    """`offline=None` (the default) means: offline when not logged in and `WANDB_MODE` is unset,
    so a laptop or an air-gapped node never blocks on a login prompt; `wandb sync` uploads later."""

    def __init__(self, offline: bool | None = None, save_dir: str = ".", **kwargs):
        if offline is None:
            offline = wandb_offline()
        # absolute: W&B's service process, started once per process, resolves a relative
        # path in its own working directory, which need not be this run's
        save_dir = str(Path(save_dir).resolve())
        super().__init__(offline=offline, save_dir=save_dir, **kwargs)


class KeptMetricsWriter(ExperimentWriter):
    """Lightning's CSV writer, but a metrics.csv already in the folder (a killed run's) is kept,
    not deleted: the first row this run logs names the epoch it starts at, and the old rows from
    that epoch on (the killed epoch's, which this run trains again) are dropped, the rest kept.
    A resumed fit's metrics.csv then holds every epoch once, as an uninterrupted run's does."""

    def _check_log_dir_exists(self) -> None:
        self.kept: list[dict[str, str]] | None = None
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                self.kept = list(csv.DictReader(file))

    def log_metrics(self, metrics_dict: dict[str, Any], step: int | None = None) -> None:
        if self.kept is not None and "epoch" in metrics_dict:
            start = float(metrics_dict["epoch"])
            rows = [row for row in self.kept if float(row.get("epoch") or "nan") < start]
            self.metrics_keys = sorted({key for row in rows for key in row})
            with open(self.metrics_file_path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(rows)
            self.kept = None
        super().log_metrics(metrics_dict, step)


class ResumableCSVLogger(CSVLogger):
    """A CSVLogger whose metrics.csv a resumed fit continues (`KeptMetricsWriter`) instead of
    erasing; `flush_logs_every_n_steps` defaults to 1, so the rows of every epoch a checkpoint
    holds are on disk before a kill can take them."""

    def __init__(
        self,
        save_dir: str,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        flush_logs_every_n_steps: int = 1,
    ):
        super().__init__(save_dir, name, version, flush_logs_every_n_steps=flush_logs_every_n_steps)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = KeptMetricsWriter(log_dir=self.log_dir)
        return self._experiment
