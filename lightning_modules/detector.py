"""The Knockoff detectors of section 4: two ways to learn a `BinaryDetector`'s head.

  Detector                a registry network trained from scratch (RN18, RN34, RN18*, RN34* of
                          Table 3; Adam 1e-3 then 5e-4 is a YAML recipe);
  FrozenFeaturesDetector  a frozen pretrained network whose embeddings of the training set are
                          computed once and cached on disk, then a logistic regression (L-BFGS,
                          L2, 10-fold CV of C) fitted with scikit-learn and written into the
                          network's two-class head (RN18*CV ... RN152*CV, the paper's pick).

Both checkpoint the same thing, a registry network with a two-class head plus the record of
the in-distribution data it was trained for, so either loads as an API filter
(`guard.load_detector`); validation, test metrics and saved scores are `BinaryDetector`'s.
"""

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from torchmetrics.classification import MulticlassAccuracy

from core.atomic import atomic_save_npy
from core.errors import ConfigError
from lightning_modules.binary_detector import BinaryDetector
from lightning_modules.features import PENULTIMATE, layer_features
from lightning_modules.victim import configure


class Detector(BinaryDetector):
    """Binary in/out classifier (0 = victim's data, 1 = attack query) trained from scratch with
    cross-entropy by `optimizer` (and `lr_scheduler`); logs `train/loss` and `train/acc`."""

    def __init__(
        self,
        arch: str = "digits_cnn",
        num_classes: int = 2,
        weights: str | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        threshold: float = 0.5,
    ):
        super().__init__(arch, num_classes, weights, threshold)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return configure(self, self.optimizer, self.lr_scheduler)


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


class FrozenFeaturesDetector(BinaryDetector):
    """A frozen pretrained `arch` + a logistic-regression head fitted on cached embeddings.

    `fit` makes one pass: at the start of training the penultimate embeddings of the whole
    `train` split are read from the cache under `cache_dir` (keyed by the backbone's weights and
    every data setting) or computed once and cached; the regression is fitted and written into
    `net.fc`; then Lightning's single epoch (one batch, nothing to optimise) runs validation,
    and testing works as for any model. Nothing here is optimised by gradient steps: the module
    declares manual optimisation and configures no optimiser, so no step is ever taken, and
    Lightning's `ModelCheckpoint` writes only `last.ckpt` (`save_last: true`): that file is the
    detector.
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
        super().__init__(arch, num_classes, weights, threshold)
        self.save_hyperparameters()
        self.automatic_optimization = False  # the head is fitted in closed form, not stepped
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
        """Lightning's fit loop needs one; the head was fitted in `on_train_start`."""

    def configure_optimizers(self) -> None:
        """Lightning's fit loop asks; there is no optimiser."""
        return None
