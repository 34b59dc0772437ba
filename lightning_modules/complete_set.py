"""Checkpoint selection and early stopping over the epochs that saw an attack's whole transfer set.

A several-round attack validates on a set that grows with its rounds: an early epoch scores on
a few hundred queries, a late one on all of them, so their `val/acc` are not comparable, and an
entropy-sampling attack's tiny early validation set (scored 0.91-0.94) chose an epoch that
reached 0.20 on the victim's test set while its last one reached 0.91. These two callbacks
act only from the first epoch trained and validated on every round (for a one-round attack and
for any other data: from the first epoch, exactly as Lightning's own), so every strategy is
selected the same way, among epochs on its final transfer set.
"""

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from datamodules.transfer_set import TransferSetDataModule


def on_whole_set(trainer: Trainer) -> bool:
    """True when this epoch's loaders held every round of the attack (or there is none)."""
    data = trainer.datamodule
    return not isinstance(data, TransferSetDataModule) or data.complete


class OnWholeSet:
    """Lets a selection callback act only on epochs of the whole transfer set: the hooks where
    ModelCheckpoint and EarlyStopping compare a monitored value pass through only then."""

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        if on_whole_set(trainer):
            super().on_train_batch_end(trainer, pl_module, *args)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if on_whole_set(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if on_whole_set(trainer):
            super().on_validation_end(trainer, pl_module)


class CompleteSetCheckpoint(OnWholeSet, ModelCheckpoint):
    """`ModelCheckpoint` that compares only epochs trained and validated on the whole transfer
    set (configs/checkpoints/best_val_acc.yaml)."""


class CompleteSetEarlyStopping(OnWholeSet, EarlyStopping):
    """`EarlyStopping` that counts only epochs trained and validated on the whole transfer set:
    an attack never stops before its last round (configs/callbacks/early_stopping.yaml)."""
