"""The victim F_V: a classifier trained with cross-entropy on its own labelled data.

The training recipe (optimizer, schedule, epochs) lives in the YAML, not here: the paper's
SGD-0.1-step-60 recipe for the RN34 victims (3.2.2) and Adam 1e-3 then 5e-4 for the 5L/9L
victims (5.1.1) are two configs of this one class.
"""

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics.classification import MulticlassAccuracy

from knockoff_lab.core.checkpoints import atomic_checkpoints
from knockoff_lab.nets.networks import build_network
from lightning_modules.synced import log_synced


def log_global_batch_size(module: LightningModule) -> None:
    """Log the effective global batch size of a fit: a loader's batch size is per device."""
    trainer = module.trainer
    batch_size = getattr(trainer.train_dataloader, "batch_size", None)
    if module.logger is not None and batch_size:
        total = batch_size * trainer.world_size * trainer.accumulate_grad_batches
        module.logger.log_hyperparams({"global_batch_size": total})


def log_loss(module: LightningModule, loss: torch.Tensor) -> None:
    """`train/loss`, logged on the steps the logger writes (every `log_every_n_steps`), and on
    every step while a progress bar shows it: a `self.log` call cost about 4 ms, a fifth of a
    small model's step on CPU (benchmarks/art_knockoff.py), and the values written are the same
    (`_logger_connector.should_update_logs` is the logger's own test of the step)."""
    trainer = module.trainer
    if trainer.progress_bar_callback is not None or trainer._logger_connector.should_update_logs:
        module.log("train/loss", loss, prog_bar=True)


def cross_entropy_step(module: LightningModule, batch: tuple[torch.Tensor, torch.Tensor]):
    """One training step of a classifier with a `train_acc` metric: the loss, logged."""
    x, y = batch
    logits = module(x)
    loss = F.cross_entropy(logits, y)
    module.train_acc(logits, y)
    log_loss(module, loss)
    module.log("train/acc", module.train_acc, on_step=False, on_epoch=True)
    return loss


def configure(
    module: LightningModule, optimizer: OptimizerCallable, lr_scheduler: LRSchedulerCallable | None
):
    """What `configure_optimizers` returns for `module`'s parameters: the optimizer, with its
    scheduler if there is one."""
    built = optimizer(module.parameters())
    if lr_scheduler is None:
        return built
    return {"optimizer": built, "lr_scheduler": lr_scheduler(built)}


class VictimClassifier(LightningModule):
    """Classifier over `num_classes`; logs `train/loss`, `val/acc`, `test/acc` and per-class
    test accuracy `test/acc_class/<i>`.

    The checkpoint keeps `arch`, `num_classes` and `weights`, enough to rebuild the network;
    pass `weights=None` to `load_from_checkpoint` to skip re-reading pretrained weights that the
    checkpoint's state dict overwrites anyway. `channels_last` stores the network and its inputs
    in NHWC, which tensor cores prefer for ResNets under mixed precision.
    """

    def __init__(
        self,
        arch: str = "digits_cnn",
        num_classes: int = 10,
        weights: str | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.net = build_network(arch, num_classes, weights)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc_class = MulticlassAccuracy(num_classes, average=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=self.memory_format))

    def on_fit_start(self) -> None:
        atomic_checkpoints(self.trainer)

    def on_train_start(self) -> None:
        log_global_batch_size(self)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        return cross_entropy_step(self, batch)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        logits = self(x)
        self.test_acc(logits, y)
        self.test_acc_class.update(logits, y)
        self.log("test/acc", self.test_acc)

    def on_test_epoch_end(self) -> None:
        per_class = self.test_acc_class.compute()
        log_synced(self, {f"test/acc_class/{cls}": acc for cls, acc in enumerate(per_class)})
        self.test_acc_class.reset()

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self(x).softmax(dim=-1)

    def configure_optimizers(self):
        return configure(self, self.optimizer, self.lr_scheduler)
