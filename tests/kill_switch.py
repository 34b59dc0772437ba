"""A callback that SIGKILLs its own process mid-epoch: a pre-empted job, for the resume tests."""

import os
import signal

from lightning.pytorch.callbacks import Callback


class KillMidEpoch(Callback):
    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
