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
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from torchmetrics.classification import MulticlassAccuracy

from knockoff_lab.core.atomic import atomic_save_npy, atomic_write_text
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.nets.features import PENULTIMATE, layer_features
from lightning_modules.binary_detector import BinaryDetector
from lightning_modules.synced import log_synced
from lightning_modules.victim import configure, cross_entropy_step

FEATURES, LABELS, RECORD = "train_features.npy", "train_labels.npy", "embeddings.json"


def describe_array(array: np.ndarray) -> dict:
    """What the embeddings record keeps of a cached array: shape, dtype and SHA-256 of its bytes."""
    digest = hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()
    return {"shape": list(array.shape), "dtype": array.dtype.str, "sha256": digest}


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
        return cross_entropy_step(self, batch)

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
        Cs=Cs,
        l1_ratios=(0.0,),
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        solver="lbfgs",
        scoring=scoring,
        max_iter=max_iter,
        n_jobs=n_jobs,
        use_legacy_attributes=False,
    ).fit(scaler.transform(features), labels)
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
        """(features, labels) of the train split, from the cache or computed once into it.

        The cache is `train_labels.npy`, `train_features.npy` and, written last (its presence
        marks the cache complete), `embeddings.json`: the data's description and each array's
        shape, dtype and SHA-256. Every read checks all of it, the count and the label range;
        a cache that fails (truncated, another shape, dtype or count, labels outside 0..K-1, a
        changed byte) is ignored with one warning naming it and computed again. A complete cache
        is only read, never written: it can live on a read-only disk."""
        folder = self.cache_folder()
        if (cached := self.cached_embeddings(folder)) is not None:
            return cached
        features, labels = [], []
        with torch.no_grad():
            for images, label in self.trainer.datamodule.loader("train"):
                features.append(self.embed(images.to(self.device)).float().cpu())
                labels.append(label)
        features, labels = torch.cat(features).numpy(), torch.cat(labels).numpy()
        folder.mkdir(parents=True, exist_ok=True)
        atomic_save_npy(folder / LABELS, labels, "cached-embeddings file")
        atomic_save_npy(folder / FEATURES, features, "cached-embeddings file")
        arrays = {FEATURES: describe_array(features), LABELS: describe_array(labels)}
        record = {"data": self.trainer.datamodule.description(), "arrays": arrays}
        atomic_write_text(folder / RECORD, json.dumps(record, indent=1))
        return features, labels

    def cached_embeddings(self, folder: Path) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached (features, labels) under `folder` if they pass every check, else None (a
        warning names a cache that exists but fails)."""
        record_file = folder / RECORD
        if not record_file.is_file():
            if (folder / FEATURES).is_file():
                warnings.warn(
                    f"ignoring cached embeddings {folder}: no {RECORD} (an older or "
                    "unfinished cache); computing them again",
                    stacklevel=2,
                )
            return None
        count, classes = len(self.trainer.datamodule.split("train")), self.hparams.num_classes
        arrays, problem = {}, None
        try:
            record = json.loads(record_file.read_text())
            for name in (FEATURES, LABELS):
                arrays[name] = np.load(folder / name, allow_pickle=False)
                if describe_array(arrays[name]) != record["arrays"][name]:
                    problem = f"{folder / name} differs from its record in {RECORD} (shape, "
                    problem += "dtype or SHA-256)"
                    break
        except (OSError, ValueError, EOFError, KeyError, TypeError) as err:
            problem = f"unreadable ({type(err).__name__}: {' '.join(str(err).split())})"
        if problem is None:
            features, labels = arrays[FEATURES], arrays[LABELS]
            if features.ndim != 2 or features.dtype != np.float32 or len(features) != count:
                problem = f"{FEATURES} is {features.dtype} {features.shape}, expected float32 "
                problem += f"({count}, D) for the {count} training images"
            elif labels.shape != (count,) or labels.dtype.kind not in "iu":
                problem = f"{LABELS} is {labels.dtype} {labels.shape}, expected ({count},) ints"
            elif count and not 0 <= labels.min() <= labels.max() < classes:
                problem = f"{LABELS} holds labels {labels.min()}..{labels.max()}, expected "
                problem += f"0..{classes - 1}"
            elif not np.isfinite(features).all():
                problem = f"{FEATURES} holds NaN or infinite values"
            elif record.get("data") != self.trainer.datamodule.description():
                problem = f"{RECORD} records other data"
        if problem is not None:
            warnings.warn(
                f"ignoring cached embeddings {folder}: {problem}; computing them again",
                stacklevel=2,
            )
            return None
        return arrays[FEATURES], arrays[LABELS]

    def on_train_start(self) -> None:
        features, labels = self.training_embeddings()
        hp = self.hparams
        weight, bias, cv_score, c = fit_logistic_head(
            features, labels, hp.folds, hp.Cs, hp.scoring, hp.max_iter, hp.n_jobs
        )
        self.net.fc.weight.copy_(weight)
        self.net.fc.bias.copy_(bias)
        log_synced(self, {"train/cv_score": cv_score, "train/C": c})

    def training_step(self, batch, batch_idx: int) -> None:
        """Lightning's fit loop needs one; the head was fitted in `on_train_start`."""

    def configure_optimizers(self) -> None:
        """Lightning's fit loop asks; there is no optimiser."""
        return None
