"""A callback that SIGKILLs its own process mid-epoch: a pre-empted job, for the resume tests."""

import os
import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class KillMidEpoch(Callback):
    """Kill after batch `batch` of epoch `epoch`. With `once` (a file path), kill only if that
    file does not exist yet, creating it first: a rerun of the same config is not killed again."""

    def __init__(self, epoch: int, batch: int, once: str | None = None):
        self.epoch, self.batch, self.once = epoch, batch, once

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            if self.once is not None:
                if Path(self.once).exists():
                    return
                Path(self.once).touch()
            os.kill(os.getpid(), signal.SIGKILL)
