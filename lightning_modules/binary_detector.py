"""What every Knockoff detector of section 4 is, however it learns: a binary in/out classifier.

`BinaryDetector` holds a registry network with a two-class head (0 = the victim's data, 1 = an
attack query, out-of-distribution); its checkpoints also hold the `InOutDataModule`'s state,
the record of the in-distribution data it was fitted for (DataModule class, settings, image
shape), so that `nets.guard.load_detector` can rebuild it as an API filter. It validates
(`val/acc`, `val/loss`) and tests; how the head is learnt is the subclass's business
(`detector.Detector`: an optimiser loop; `detector.FrozenFeaturesDetector`: one pass and a
logistic regression).

Test metrics, out-of-distribution = positive (`ood_metrics`): `test/tnr` and `test/tpr/<set>` at
`threshold` on P(OOD), and `test/tpr_at_tnr95/<set>`. The per-image scores go to `scores.csv` and
their ROC curves to `roc.png` in the run's log folder (`save_test_scores`, shared with the OOD
baselines).
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torchmetrics.classification import MulticlassAccuracy

from knockoff_lab.core.checkpoints import atomic_checkpoints
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences.detector import check_threshold
from knockoff_lab.evaluation.figures import plot_roc
from knockoff_lab.evaluation.ood_metrics import (
    ScoresBySet,
    tpr_at_tnr,
    tpr_tnr_at_threshold,
    write_scores,
)
from knockoff_lab.nets.networks import build_network
from lightning_modules.synced import log_synced
from lightning_modules.victim import log_global_batch_size


def detection_metrics(scores: dict[str, torch.Tensor], threshold: float) -> dict[str, float]:
    """TNR and per-set TPR at `threshold`, and per-set TPR at TNR = 95%."""
    metrics = {}
    for name, out in scores.items():
        if name != "in":
            tpr, metrics["test/tnr"] = tpr_tnr_at_threshold(scores["in"], out, threshold)
            metrics[f"test/tpr/{name}"] = tpr
            metrics[f"test/tpr_at_tnr95/{name}"] = tpr_at_tnr(scores["in"], out, 0.95)[0]
    return metrics


def save_test_scores(trainer: Trainer, scores: dict[str, torch.Tensor], title: str) -> None:
    """`scores.csv` and `roc.png` (one curve per out-of-distribution set) in the run's log
    folder, on global rank 0, from the scores gathered over all ranks; the report of
    `reproduce` combines the stages' `scores.csv` into one ROC figure per table."""
    folder = Path(trainer.log_dir or trainer.default_root_dir)  # a collective under DDP
    if not trainer.is_global_zero:
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_scores(folder / "scores.csv", scores)
    curves = {name: (scores["in"], out) for name, out in scores.items() if name != "in"}
    figure = plot_roc({f"in vs {', '.join(curves)}": curves}, folder / "roc.png", title)
    if hasattr(trainer.logger, "log_image"):  # W&B
        trainer.logger.log_image("roc", [str(figure)])


class BinaryDetector(LightningModule):
    """A registry network `arch` with a two-class head; `forward` gives its logits and P(OOD)
    is their softmax[:, 1]. A query is flagged when P(OOD) > `threshold`.

    Subclasses call `save_hyperparameters` (the checkpoint keeps `arch` and `num_classes`, which
    `guard.load_detector` reads) and say how the head is learnt. `num_classes` is the in/out
    data's 2, linked from the data like every model's.
    """

    def __init__(self, arch: str, num_classes: int, weights: str | None, threshold: float):
        if num_classes != 2:
            raise ConfigError(
                f"a detector is a binary in/out classifier (num_classes 2, from an "
                f"InOutDataModule), got num_classes={num_classes}"
            )
        check_threshold(threshold)
        super().__init__()
        self.net = build_network(arch, num_classes, weights)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.scores = ScoresBySet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_fit_start(self) -> None:
        atomic_checkpoints(self.trainer)  # a full disk never truncates last.ckpt

    def on_train_start(self) -> None:
        log_global_batch_size(self)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        images, _, test_sets = batch
        self.scores.add(test_sets, self(images).float().softmax(dim=-1)[:, 1])

    def on_test_epoch_end(self) -> None:
        scores = self.scores.pop()
        log_synced(self, detection_metrics(scores, self.hparams.threshold))
        save_test_scores(self.trainer, scores, f"{type(self).__name__} {self.hparams.arch}")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self(x).softmax(dim=-1)
