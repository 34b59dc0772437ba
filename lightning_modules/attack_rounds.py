"""`AttackRounds`: the callback that runs a model-extraction attack's rounds from Lightning's own
hooks, so the DataModule only stores and serves and the surrogate only takes batches.

    trainer:
      callbacks:
        - class_path: lightning_modules.AttackRounds

Round 0 is asked when the fit is set up (the surrogate as initialised, before Lightning writes
anything). Then, for a strategy whose
rounds are epochs, the next round at the end of every `data.epochs_per_round` epochs (default:
the epochs spread evenly over the rounds), so the next epoch trains on it; for a strategy whose
`round_unit` is "step", the next round after every optimiser step, each step training on the
round asked for it. The surrogate the strategy sees is the model being fitted, in eval mode.
Checkpoints are written after the round (Lightning runs ModelCheckpoint last), and the
DataModule's state in them says how many rounds there were: a resumed fit reads those back
from the cache before its first epoch and asks nothing twice.

The callback also refuses, before any query, a fit that could not select its checkpoint fairly:
a monitor on the victim's test set (`analysis/`, `test/`), or on `val/` with no validation
split (`data.val_fraction: 0`).
"""

import json

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from datamodules.transfer_set import Dealer, TransferSetDataModule
from knockoff_lab.core.errors import ConfigError
from lightning_modules.complete_set import CompleteSetCheckpoint, CompleteSetEarlyStopping

FORBIDDEN_MONITORS = ("analysis/", "test/")


class AttackRounds(Callback):
    """Asks a `TransferSetDataModule`'s rounds at the boundaries its strategy names."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        data = trainer.datamodule
        if not isinstance(data, TransferSetDataModule):
            raise ConfigError(
                "AttackRounds drives an attack: data must be a "
                f"datamodules.TransferSetDataModule, got {type(data).__name__}"
            )
        if data.rounds_done:
            return  # a test after the fit, in the same process: the rounds are in memory
        strategy = trainer.strategy
        dealer = Dealer(
            trainer.global_rank, trainer.world_size, strategy.barrier, strategy.root_device
        )
        data.begin(self.training_settings(trainer, pl_module, data), dealer)
        if stage != "fit":
            data.read_stored()  # evaluation: what the cache holds, nothing asked
            return
        self.check_selection(trainer, data)
        rounds = len(data.sizes)
        if data.attack.round_unit == "step":
            if trainer.accumulate_grad_batches != 1:
                raise ConfigError(
                    "a step-round attack trains one optimiser step per round: "
                    "trainer.accumulate_grad_batches must be 1"
                )
            self.check_steps(trainer, data)
        elif rounds > 1:
            every = self.epochs_per_round(trainer, data)
            if trainer.max_epochs <= every * (rounds - 1):
                raise ConfigError(
                    f"trainer.max_epochs {trainer.max_epochs} leaves no training after the "
                    f"last of {rounds} rounds of {every} epochs (data.epochs_per_round)"
                )
        if rounds > 1:
            trainer.reload_dataloaders_every_n_epochs = 1  # each epoch serves what is stored
        self.grow(trainer, pl_module, 0)  # before anything is written: a failed query leaves none

    @staticmethod
    def check_steps(trainer: Trainer, data: TransferSetDataModule) -> None:
        """A step-round attack's rounds are asked step by step: a fit that stops sooner would
        leave the budget unspent without a word."""
        steps = sum(map(data.attack.trains_on, range(len(data.sizes))))
        limit, max_steps = trainer.limit_train_batches, trainer.max_steps
        for key, value in (("limit_train_batches", limit), ("max_steps", max_steps)):
            if value in (-1, None):
                continue
            if value < steps if isinstance(value, int) else value < 1.0:
                raise ConfigError(
                    f"trainer.{key} {value} stops before the attack's {steps} step rounds (one "
                    "optimiser step each): its last queries would never be asked; remove it"
                )

    @staticmethod
    def epochs_per_round(trainer: Trainer, data: TransferSetDataModule) -> int:
        return data.epochs_per_round or max(1, trainer.max_epochs // len(data.sizes))

    def training_settings(
        self, trainer: Trainer, pl_module: LightningModule, data: TransferSetDataModule
    ) -> str:
        """What shapes the surrogate between rounds (an adaptive attack's proposals depend on
        it): the model's hyperparameters, the schedule and the batch size."""
        every = data.epochs_per_round
        if data.attack.round_unit == "epoch" and trainer.max_epochs is not None:
            every = self.epochs_per_round(trainer, data)
        return json.dumps(
            [dict(pl_module.hparams), trainer.max_epochs, every, data.batch_size],
            sort_keys=True,
            default=str,
        )

    @staticmethod
    def check_selection(trainer: Trainer, data: TransferSetDataModule) -> None:
        for callback in trainer.callbacks:
            if not isinstance(callback, ModelCheckpoint | EarlyStopping):
                continue
            monitor = callback.monitor or ""
            fair = isinstance(callback, CompleteSetCheckpoint | CompleteSetEarlyStopping)
            if len(data.sizes) > 1 and monitor.startswith("val/") and not fair:
                name = "Checkpoint" if isinstance(callback, ModelCheckpoint) else "EarlyStopping"
                raise ConfigError(
                    f"{type(callback).__name__} monitors {monitor!r} of a validation set that "
                    f"grows with the attack's {len(data.sizes)} rounds, so epochs would be "
                    f"compared on different data: use lightning_modules.CompleteSet{name}"
                )
            if monitor.startswith(FORBIDDEN_MONITORS):
                raise ConfigError(
                    f"{type(callback).__name__} monitors {monitor!r}, the victim's test set: "
                    "select on 'val/acc' or 'val/loss' (the transfer set's validation split)"
                )
            if data.val_fraction == 0 and monitor.startswith("val/"):
                raise ConfigError(
                    f"{type(callback).__name__} monitors {monitor!r}, but data.val_fraction is "
                    "0 (no validation split): set val_fraction > 0 or the monitor to null"
                )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Resuming: the rounds the checkpoint had (stored: read back, nothing asked)."""
        data = trainer.datamodule
        self.grow(trainer, pl_module, data.restored_rounds - 1)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A checkpoint with no record of the rounds (one written before its epoch's round, or
        by an older version): read back, from the epoch Lightning resumes at, what is due."""
        data = trainer.datamodule
        due = self.due_round(trainer, data, trainer.current_epoch)
        if data.attack.round_unit == "epoch" and data.rounds_done <= due:
            rank_zero_warn(f"AttackRounds: the checkpoint records no round {due}; asked now")
            self.grow(trainer, pl_module, due)

    def due_round(self, trainer: Trainer, data: TransferSetDataModule, epoch: int) -> int:
        """The last round an epoch-round attack's `epoch` trains on."""
        return min(epoch // self.epochs_per_round(trainer, data), len(data.sizes) - 1)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        """A step-round attack asks the round the next step trains on."""
        data = trainer.datamodule
        if data.stepping and data.rounds_done == data.steps_served:
            self.grow(trainer, pl_module, data.rounds_done)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """An epoch-round attack asks the round the next epoch trains on."""
        data = trainer.datamodule
        if data.attack.round_unit == "epoch":
            self.grow(trainer, pl_module, self.due_round(trainer, data, trainer.current_epoch + 1))

    def grow(self, trainer: Trainer, pl_module: LightningModule, last: int) -> None:
        data: TransferSetDataModule = trainer.datamodule
        while data.rounds_done <= min(last, len(data.sizes) - 1):
            was_training = pl_module.training
            pl_module.eval()
            try:
                r = data.next_round(pl_module)
            finally:
                pl_module.train(was_training)
            self.log_strategy(trainer, data, r)
            if data.attack.round_unit == "step" and not data.attack.trains_on(r):
                last = max(last, r + 1)  # no step trains on it: the next round goes with it

    @staticmethod
    def log_strategy(trainer: Trainer, data: TransferSetDataModule, r: int) -> None:
        """After round `r`, to the trainer's logger (rank 0): the strategy's own metrics, and
        what the owner knows of the round's queries (a mixed pool: the share that is relevant)."""
        start = sum(data.sizes[:r])
        metrics = {**data.attack.metrics(), **data.pool.query_analysis(data.indices[start:])}
        if not metrics or trainer.logger is None or not trainer.is_global_zero:
            return
        logged = {f"attack/{name}": value for name, value in metrics.items()}
        trainer.logger.log_metrics({**logged, "attack/round": float(r)}, step=trainer.global_step)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Beside the surrogate's test metrics: the owner's view of every query asked
        (`attack/<name>`) and of the last round's (`attack/<name>_last`), the reader's and the
        strategy's own metrics after its last round."""
        data = trainer.datamodule
        whole = data.pool.query_analysis(data.indices)
        last = data.pool.query_analysis(data.indices[sum(data.sizes[:-1]) :])
        metrics = {f"attack/{k}": v for k, v in whole.items()}
        metrics |= {f"attack/{k}_last": v for k, v in last.items()}
        metrics |= {f"attack/{k}": v for k, v in data.reader.metrics().items()}
        metrics |= {f"attack/{k}": v for k, v in data.attack.metrics().items()}  # its last round
        if metrics:
            pl_module.log_dict(metrics)
