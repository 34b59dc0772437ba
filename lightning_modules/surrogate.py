"""The surrogate F_A of the Knockoff attack: distilled from the prediction API's answers.

One loss serves every granularity: cross-entropy against the API's answer vector, normalised to
sum to one. For `probs`, `top_k` and `rounded` this is soft-label distillation; a `label` answer
is one-hot, where the same formula is exactly hard-label cross-entropy.

Model selection uses only the transfer set's validation split (`val/acc`: agreement with the
API's answers). The victim's test set is scored every epoch as `analysis/test_acc` for Figure 2;
`lightning_modules.AttackRounds` refuses a checkpoint or early-stopping callback that monitors
it (Knockoff's public code selects on the test set; the paper's 5.2.1 does not). Figure 1 is
drawn by `lightning_modules.TransferHistogram` from the per-class accuracies logged here.
"""

from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics.classification import MulticlassAccuracy

from knockoff_lab.attacks.dfme import victim_logits
from lightning_modules.synced import log_synced
from lightning_modules.victim import VictimClassifier, log_loss


def soft_cross_entropy(logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against answer vectors normalised to sum 1; an all-zero answer
    (possible when rounding to 0 decimals) carries no information and adds no loss."""
    totals = answers.sum(dim=-1, keepdim=True)
    targets = answers / totals.clamp_min(1e-12)
    losses = -(targets * logits.log_softmax(dim=-1)).sum(dim=-1)
    return losses.sum() / (totals.squeeze(-1) > 0).sum().clamp_min(1)


def l1_logits(logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """DFME's student loss: mean L1 distance to the victim's logits, recovered from its
    probabilities as log-probabilities minus their mean over classes (logits are known only up
    to a constant; the mean fixes it). Needs probabilities: a one-hot answer has no logits."""
    return (logits - victim_logits(answers)).abs().mean()


LOSSES = {"soft_cross_entropy": soft_cross_entropy, "l1_logits": l1_logits}


class Surrogate(VictimClassifier):
    """F_A: any registered arch (pretrained or not) trained on a `TransferSetDataModule`.

    Test metrics on the victim's test set: `test/acc` = Acc(F_A), `test/acc_victim` = Acc(F_V)
    on the same images, `test/recovery` = their ratio, `test/fidelity` = agreement of F_A with
    F_V, and per-class accuracies of both (`test/acc_class/<i>`, `test/acc_victim_class/<i>`).
    `loss`: what a training step minimises, soft cross-entropy against the answers (Knockoff),
    or `l1_logits` (DFME's student). Validation always reports the soft cross-entropy.
    """

    def __init__(
        self,
        arch: str = "digits_cnn",
        num_classes: int = 10,
        weights: str | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        channels_last: bool = False,
        loss: Literal["soft_cross_entropy", "l1_logits"] = "soft_cross_entropy",
    ):
        super().__init__(arch, num_classes, weights, optimizer, lr_scheduler, channels_last)
        self.loss = LOSSES[loss]
        classes = self.hparams.num_classes
        self.analysis_acc = MulticlassAccuracy(classes, average="micro")
        self.victim_acc = MulticlassAccuracy(classes, average="micro")
        self.fidelity = MulticlassAccuracy(classes, average="micro")
        self.victim_acc_class = MulticlassAccuracy(classes, average=None)

    def training_step(self, batch, batch_idx: int):
        x, answers = batch
        if not len(x):
            return None  # a step round the API refused whole: Lightning skips the step
        loss = self.loss(self(x), answers)
        log_loss(self, loss)
        return loss

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        if len(batch) == 3:  # the victim's test set: analysis only (Figure 2)
            x, y, _ = batch
            self.analysis_acc(self(x), y)
            self.log("analysis/test_acc", self.analysis_acc, add_dataloader_idx=False)
            return
        x, answers = batch
        logits = self(x)
        self.val_acc(logits, answers.argmax(dim=-1))
        self.log(
            "val/loss",
            soft_cross_entropy(logits, answers),
            add_dataloader_idx=False,
            sync_dist=True,
        )
        self.log("val/acc", self.val_acc, prog_bar=True, add_dataloader_idx=False)

    def test_step(self, batch, batch_idx: int):
        x, y, victim_y = batch
        logits = self(x)
        self.test_acc.update(logits, y)
        self.test_acc_class.update(logits, y)
        self.victim_acc.update(victim_y, y)
        self.victim_acc_class.update(victim_y, y)
        self.fidelity.update(logits, victim_y)

    def on_test_epoch_end(self) -> None:
        acc, victim_acc = self.test_acc.compute(), self.victim_acc.compute()
        per_class = {
            "acc_class": self.test_acc_class.compute(),
            "acc_victim_class": self.victim_acc_class.compute(),
        }
        log_synced(
            self,
            {
                "test/acc": acc,
                "test/acc_victim": victim_acc,
                "test/recovery": acc / victim_acc.clamp_min(1e-12),
                "test/fidelity": self.fidelity.compute(),
                **{
                    f"test/{name}/{cls}": value
                    for name, values in per_class.items()
                    for cls, value in enumerate(values)
                },
            },
        )
        for metric in (
            self.test_acc,
            self.victim_acc,
            self.fidelity,
            self.test_acc_class,
            self.victim_acc_class,
        ):
            metric.reset()
