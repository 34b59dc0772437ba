"""`TransferHistogram`: Figure 1 of the paper after a surrogate is tested, from what the attack
asked (the transfer set's answers per most likely class) and the per-class test accuracies the
surrogate logged (`test/acc_class/<i>`, `test/acc_victim_class/<i>`).

Writes `transfer_histogram.csv` (class, queries, acc_victim, acc_surrogate) and
`figure1_transfer_histogram.png` beside the run's logs, and logs the figure to W&B when the
logger is a WandbLogger.
"""

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from datamodules.transfer_set import TransferSetDataModule
from knockoff_lab.evaluation.figures import plot_transfer_histogram


class TransferHistogram(Callback):
    """`figures`: draw the PNG (about 0.3 s); off, only the CSV is written (`reproduce` turns it
    off in the stages whose figures its report does not show)."""

    def __init__(self, figures: bool = True):
        self.figures = figures

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        data = trainer.datamodule
        # log_dir is a collective under DDP: every rank asks for it
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        if not isinstance(data, TransferSetDataModule) or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        classes = range(data.num_classes)
        per_class = {
            name: torch.tensor([float(metrics[f"test/{name}/{c}"]) for c in classes])
            for name in ("acc_victim_class", "acc_class")
            if f"test/{name}/0" in metrics
        }
        if len(per_class) < 2:
            return  # not a surrogate's test: no per-class accuracies of both models
        counts = data.class_histogram()
        victim, surrogate = per_class["acc_victim_class"], per_class["acc_class"]
        rows = ["class,queries,acc_victim,acc_surrogate"] + [
            f"{c},{int(n)},{float(v):.4f},{float(a):.4f}"
            for c, (n, v, a) in enumerate(zip(counts, victim, surrogate, strict=True))
        ]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "transfer_histogram.csv").write_text("\n".join(rows) + "\n")
        if not self.figures:
            return
        arch = getattr(pl_module.hparams, "arch", type(pl_module).__name__)
        figure = plot_transfer_histogram(
            counts,
            victim,
            surrogate,
            folder / "figure1_transfer_histogram.png",
            title=f"surrogate {arch}",
        )
        if hasattr(trainer.logger, "log_image"):
            trainer.logger.log_image("figure1_transfer_histogram", [str(figure)])
