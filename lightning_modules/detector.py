"""The Knockoff detectors of section 4: binary in/out classifiers on an `InOutDataModule`.

  Detector                a registry network trained from scratch (RN18, RN34, RN18*, RN34* of
                          Table 3; Adam 1e-3 then 5e-4 is a YAML recipe);
  FrozenFeaturesDetector  a frozen pretrained network whose embeddings of the training set are
                          computed once and cached on disk, then a logistic regression (L-BFGS,
                          L2, 10-fold CV of C) fitted with scikit-learn and written into the
                          network's two-class head (RN18*CV ... RN152*CV, the paper's pick).

Both checkpoint the same thing, a registry network with a two-class head plus the record of
the in-distribution data it was trained for, so either loads as an API filter
(`guard.load_detector`). Test metrics, out-of-distribution = positive (`ood_metrics`):
`test/tnr` and `test/tpr/<set>` at `threshold` on P(OOD), and `test/tpr_at_tnr95/<set>`.
The per-image scores go to `scores.csv` and their ROC curves to `roc.png` in the run's log
folder (`save_test_scores`, shared with the OOD baselines).
"""

import hashlib
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from core.atomic import atomic_save_npy
from core.errors import ConfigError
from lightning_modules.api import check_threshold
from lightning_modules.features import PENULTIMATE, layer_features
from lightning_modules.figures import plot_roc
from lightning_modules.ood_metrics import (
    ScoresBySet,
    tpr_at_tnr,
    tpr_tnr_at_threshold,
    write_scores,
)
from lightning_modules.victim import VictimClassifier


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


class Detector(VictimClassifier):
    """Binary in/out classifier (0 = victim's data, 1 = attack query) trained from scratch."""

    def __init__(
        self,
        arch: str = "digits_cnn",
        num_classes: int = 2,
        weights: str | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        threshold: float = 0.5,
    ):
        if num_classes != 2:
            raise ConfigError(
                f"a detector is a binary in/out classifier (num_classes 2, from an "
                f"InOutDataModule), got num_classes={num_classes}"
            )
        check_threshold(threshold)
        super().__init__(arch, num_classes, weights, optimizer, lr_scheduler)
        self.scores = ScoresBySet()
        self.trained_on: dict | None = None

    def on_fit_start(self) -> None:
        super().on_fit_start()
        record = getattr(self.trainer.datamodule, "training_record", None)
        if record is None:
            raise ConfigError("a detector trains on data: datamodules.InOutDataModule")
        self.trained_on = record()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["trained_on"] = self.trained_on

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.trained_on = checkpoint.get("trained_on")

    def test_step(self, batch, batch_idx: int) -> None:
        images, _, test_sets = batch
        self.scores.add(test_sets, self(images).float().softmax(dim=-1)[:, 1])

    def on_test_epoch_end(self) -> None:
        scores = self.scores.pop()
        self.log_dict(detection_metrics(scores, self.hparams.threshold))
        save_test_scores(self.trainer, scores, f"{type(self).__name__} {self.hparams.arch}")


def fit_logistic_head(
    features: np.ndarray,
    labels: np.ndarray,
    folds: int = 10,
    Cs: int = 10,
    scoring: str = "accuracy",
    max_iter: int = 1000,
    n_jobs: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Logistic regression of `labels` (1 = OOD) on `features` as a two-class linear head.

    L-BFGS, L2 penalty, C chosen among `Cs` values (1e-4..1e4) by stratified `folds`-fold
    cross-validation and refitted on all data. Features are standardised for the solver; the
    scaling is folded into the returned weights, so the head acts on raw features. Row 0 of the
    head is zero and row 1 the logit, so its softmax[:, 1] is the regression's P(OOD).
    Returns (weight (2, D), bias (2,), mean cross-validated score at the chosen C, chosen C).
    """
    counts = np.bincount(labels, minlength=2)
    if counts.min() < folds:
        raise ConfigError(
            f"{folds}-fold cross-validation needs {folds} training images of each class; "
            f"got {counts[0]} in-distribution and {counts[1]} out-of-distribution"
        )
    scaler = StandardScaler().fit(features)
    regression = LogisticRegressionCV(
        Cs=Cs, l1_ratios=(0.0,), cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        solver="lbfgs", scoring=scoring, max_iter=max_iter, n_jobs=n_jobs,
        use_legacy_attributes=False,
    ).fit(scaler.transform(features), labels)  # fmt: skip
    coef = regression.coef_[0] / scaler.scale_
    intercept = regression.intercept_[0] - float(coef @ scaler.mean_)
    weight = torch.from_numpy(np.stack([np.zeros_like(coef), coef])).float()
    bias = torch.tensor([0.0, intercept], dtype=torch.float32)
    cv_score = float(regression.scores_.mean(axis=0).max())
    return weight, bias, cv_score, float(regression.C_)


class FrozenFeaturesDetector(Detector):
    """A frozen pretrained `arch` + a logistic-regression head fitted on cached embeddings.

    `fit` makes one pass: at the start of training the penultimate embeddings of the whole
    `train` split are read from the cache under `cache_dir` (keyed by the backbone's weights and
    every data setting) or computed once and cached; the regression is fitted and written into
    `net.fc`; then Lightning's single epoch (one batch, nothing to optimise) runs validation,
    and testing works as for any model. With no optimiser step taken, Lightning's
    `ModelCheckpoint` writes only `last.ckpt` (`save_last: true`): that file is the detector.
    """

    def __init__(
        self,
        arch: str = "resnet101",
        num_classes: int = 2,
        weights: str | None = "IMAGENET1K_V1",
        threshold: float = 0.5,
        folds: int = 10,
        Cs: int = 10,
        scoring: str = "accuracy",
        max_iter: int = 1000,
        n_jobs: int | None = None,
        cache_dir: str = "runs/embeddings",
    ):
        super().__init__(arch, num_classes, weights, threshold=threshold)
        self.automatic_optimization = False
        self.net.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "FrozenFeaturesDetector":
        """The backbone stays in eval mode, so batch norm keeps its pretrained statistics and an
        image's embedding does not depend on its batch (Lightning keeps each submodule's mode)."""
        super().train(mode)
        self.net.eval()
        return self

    def setup(self, stage: str) -> None:
        if stage == "fit":
            if self.trainer.max_epochs != 1:
                raise ConfigError("FrozenFeaturesDetector fits in one pass: trainer.max_epochs: 1")
            self.trainer.limit_train_batches = 1  # the epoch only carries validation

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return layer_features(self.net, images, [PENULTIMATE])[1][PENULTIMATE]

    def cache_folder(self) -> Path:
        digest = hashlib.sha256(self.hparams.arch.encode())
        for name, tensor in sorted(self.net.state_dict().items()):
            if not name.startswith("fc."):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        digest.update(self.trainer.datamodule.description().encode())
        return Path(self.hparams.cache_dir) / digest.hexdigest()[:16]

    def training_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of the train split, from the cache or computed once into it."""

        folder = self.cache_folder()
        features_file, labels_file = folder / "train_features.npy", folder / "train_labels.npy"
        if not features_file.is_file():  # written last, atomically: its presence means complete
            features, labels = [], []
            with torch.no_grad():
                for images, label in self.trainer.datamodule.loader("train"):
                    features.append(self.embed(images.to(self.device)).float().cpu())
                    labels.append(label)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "data.json").write_text(self.trainer.datamodule.description())
            features, labels = torch.cat(features).numpy(), torch.cat(labels).numpy()
            atomic_save_npy(labels_file, labels)
            atomic_save_npy(features_file, features)
            return features, labels
        return np.load(features_file, allow_pickle=False), np.load(labels_file, allow_pickle=False)

    def on_train_start(self) -> None:
        features, labels = self.training_embeddings()
        hp = self.hparams
        weight, bias, cv_score, c = fit_logistic_head(
            features, labels, hp.folds, hp.Cs, hp.scoring, hp.max_iter, hp.n_jobs
        )
        self.net.fc.weight.copy_(weight)
        self.net.fc.bias.copy_(bias)
        self.log_dict({"train/cv_score": cv_score, "train/C": c})

    def training_step(self, batch, batch_idx: int) -> None:
        """Nothing to optimise: the head was fitted in `on_train_start`."""

    def configure_optimizers(self) -> None:
        return None
