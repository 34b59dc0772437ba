"""Out-of-distribution baselines of Table 4, scored by the victim itself (`main.py test`).

Every score is "higher = more out-of-distribution":
  msp          minus the maximum softmax probability (Hendrycks and Gimpel 2017);
  odin         minus the maximum softmax at temperature T of the input moved by `epsilon` against
               the gradient of the loss of its predicted class (Liang et al. 2018, T = 1000,
               epsilon = 0.0014);
  mahalanobis  the Mahalanobis distance of the input's features to the closest class mean, with
               class means and one shared covariance from the victim's training features and the
               same input pre-processing (Lee et al. 2018). One layer: that distance. Several
               layers: Lee et al.'s combination, a logistic regression of the per-layer distances
               fitted on the in/out data's validation split (the victim's val images vs a held-out
               share of the attacker's pool: the same kind of out-of-distribution data our
               detectors train on, so this variant is supervised like them).
A step of `epsilon` in pixel space is `epsilon / std` in the normalised inputs, per channel.

Gradients w.r.t. the input: Lightning tests under `torch.inference_mode()`, which would silently
turn them off; `input_gradients()` leaves inference mode and re-enables autograd locally.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from sklearn.linear_model import LogisticRegressionCV
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader

from core.errors import ConfigError
from core.normalization import IMAGENET_STD
from lightning_modules.api import check_threshold, load_victim
from lightning_modules.detector import save_test_scores
from lightning_modules.features import PENULTIMATE, check_layers, layer_features
from lightning_modules.guard import load_detector
from lightning_modules.ood_metrics import ScoresBySet, tpr_at_tnr, tpr_tnr_at_threshold

Method = Literal["msp", "odin", "mahalanobis"]


@contextmanager
def input_gradients() -> Iterator[None]:
    """Autograd on, inference mode off, whatever the caller (a Lightning test loop) set."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def signed_step(
    images: torch.Tensor,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    epsilon: float,
    std: torch.Tensor,
) -> torch.Tensor:
    """`images` moved by `epsilon` (in pixel units) against the sign of the gradient of
    `loss_of(images)`: the pre-processing of ODIN and Mahalanobis."""
    with input_gradients():
        x = images.clone().requires_grad_()
        (grad,) = torch.autograd.grad(loss_of(x), x)
    return images - epsilon * grad.sign() / std


def max_softmax(net: nn.Module, images: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The in-distribution confidence of MSP and ODIN (higher = more in-distribution)."""
    return (net(images) / temperature).softmax(dim=-1).max(dim=-1).values


def odin_inputs(
    net: nn.Module, images: torch.Tensor, temperature: float, epsilon: float, std: torch.Tensor
) -> torch.Tensor:
    """ODIN's pre-processed inputs: a step that lowers the tempered cross-entropy of the
    predicted class, i.e. raises the tempered maximum softmax."""

    def loss_of(x: torch.Tensor) -> torch.Tensor:
        logits = net(x) / temperature
        return F.cross_entropy(logits, logits.argmax(dim=-1), reduction="sum")

    return signed_step(images, loss_of, epsilon, std)


class ClassGaussians(nn.Module):
    """Class means and one shared covariance of a layer's features (Lee et al. 2018)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        super().__init__()
        features = features.double()
        classes = labels.unique()
        means = torch.stack([features[labels == c].mean(dim=0) for c in classes])
        centred = features - means[torch.searchsorted(classes, labels)]
        covariance = centred.T @ centred / len(features)
        self.register_buffer("means", means.float())
        self.register_buffer("precision", torch.linalg.pinv(covariance, hermitian=True).float())

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance of each row to each class mean, (N, classes)."""
        diff = features[:, None, :] - self.means[None]
        return torch.einsum("ncd,de,nce->nc", diff, self.precision, diff)


def mahalanobis_inputs(
    net: nn.Module,
    images: torch.Tensor,
    layer: str,
    gaussians: ClassGaussians,
    epsilon: float,
    std: torch.Tensor,
) -> torch.Tensor:
    """Lee et al.'s pre-processed inputs: a step that brings the layer's features closer to the
    closest class mean (it raises their Mahalanobis confidence)."""

    def loss_of(x: torch.Tensor) -> torch.Tensor:
        features = layer_features(net, x, [layer])[1][layer]
        return gaussians.distances(features).min(dim=-1).values.sum()

    return signed_step(images, loss_of, epsilon, std)


def closest_distance(
    net: nn.Module, images: torch.Tensor, layer: str, gaussians: ClassGaussians
) -> torch.Tensor:
    with torch.no_grad():
        features = layer_features(net, images, [layer])[1][layer]
        return gaussians.distances(features).min(dim=-1).values


class OODBaseline(LightningModule):
    """Scores an `InOutDataModule`'s test sets with one baseline of the victim checkpoint.

    Logs `test/tpr_at_tnr95/<set>` and saves the baseline's scores (`scores.csv`, `roc.png` in
    the run's log folder, as the detectors do); with `detector` (one of our exported
    detectors), also its TNR and TPRs on the same images (`test/ours/tnr`,
    `test/ours/tpr/<set>`) and the baseline's TPR at the TNR ours achieved
    (`test/tpr_at_tnr_ours/<set>`), the two columns of Table 4.
    `num_classes` is the in/out data's 2, linked from the data like every model's.
    """

    def __init__(
        self,
        victim: str,
        method: Method = "msp",
        num_classes: int = 2,
        temperature: float = 1000.0,
        epsilon: float = 0.0014,
        layers: list[str] | None = None,
        detector: str | None = None,
        detector_threshold: float = 0.5,
    ):
        super().__init__()
        self.save_hyperparameters()
        if method not in ("msp", "odin", "mahalanobis"):
            raise ConfigError(f"method must be one of msp, odin, mahalanobis, got {method!r}")
        if num_classes != 2:
            raise ConfigError(f"OOD baselines test on an InOutDataModule, got {num_classes=}")
        if temperature <= 0 or epsilon < 0:
            raise ConfigError(
                f"need temperature > 0 and epsilon >= 0, got {temperature}, {epsilon}"
            )
        check_threshold(detector_threshold, "detector_threshold")
        self.victim = load_victim(victim).requires_grad_(False)
        self.layers: Sequence[str] = layers or [PENULTIMATE]
        check_layers(self.victim, self.layers)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.guard = load_detector(detector) if detector else None
        self.gaussians = nn.ModuleDict()
        self.combination: tuple[torch.Tensor, torch.Tensor] | None = None
        self.scores, self.ours = ScoresBySet(), ScoresBySet()

    # -- Mahalanobis: statistics of the victim's training data, combination on validation ------

    def on_test_start(self) -> None:
        if self.hparams.method != "mahalanobis":
            return
        data = self.trainer.datamodule
        if not hasattr(data, "in_data"):
            raise ConfigError("OOD baselines test on data: datamodules.InOutDataModule")
        if len(self.layers) > 1 and data.count("val", 1) < 5:
            raise ConfigError(
                "multi-layer Mahalanobis fits its combination on the validation split: it needs "
                "out-of-distribution validation images (data.out_val_fraction > 0)"
            )
        train = DataLoader(data.in_data.split("train"), batch_size=data.batch_size,
                           num_workers=data.num_workers)  # fmt: skip
        features, labels = self._features(train)
        with torch.inference_mode(False):  # the statistics enter gradients later
            for i, layer in enumerate(self.layers):
                self.gaussians[str(i)] = ClassGaussians(features[layer], labels).to(self.device)
        if len(self.layers) > 1:
            self._fit_combination()

    def _features(self, loader: DataLoader) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        parts: dict[str, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        labels = []
        with torch.no_grad():
            for images, label in loader:
                found = layer_features(self.victim, images.to(self.device), self.layers)[1]
                for layer in self.layers:
                    parts[layer].append(found[layer].float().cpu())
                labels.append(torch.as_tensor(label))
        return {k: torch.cat(v) for k, v in parts.items()}, torch.cat(labels)

    def _fit_combination(self) -> None:
        """Lee et al.'s logistic regression of per-layer scores, on the in/out validation split."""
        scores, labels = [], []
        for images, label in self.trainer.datamodule.val_dataloader():
            scores.append(self._layer_distances(images.to(self.device)).cpu())
            labels.append(label)
        x, y = torch.cat(scores).numpy(), torch.cat(labels).numpy()
        scaler = StandardScaler().fit(x)
        regression = LogisticRegressionCV(
            l1_ratios=(0.0,), cv=5, scoring="neg_log_loss", use_legacy_attributes=False
        ).fit(scaler.transform(x), y)
        coef = regression.coef_[0] / scaler.scale_  # the scaling folded into the weights
        bias = torch.tensor(regression.intercept_[0] - coef @ scaler.mean_, device=self.device)
        self.combination = (torch.from_numpy(coef).float().to(self.device), bias.float())

    def _layer_distances(self, images: torch.Tensor) -> torch.Tensor:
        """(N, layers): per layer, the closest-class distance of the pre-processed input."""
        columns = []
        for i, layer in enumerate(self.layers):
            gaussians = self.gaussians[str(i)]
            moved = mahalanobis_inputs(
                self.victim, images, layer, gaussians, self.hparams.epsilon, self.std
            )
            columns.append(closest_distance(self.victim, moved, layer, gaussians))
        return torch.stack(columns, dim=1)

    # -- scoring -------------------------------------------------------------------------------

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Out-of-distribution score of each image (higher = more OOD)."""
        hp = self.hparams
        if hp.method == "msp":
            with torch.no_grad():
                return -max_softmax(self.victim, images)
        if hp.method == "odin":
            moved = odin_inputs(self.victim, images, hp.temperature, hp.epsilon, self.std)
            with torch.no_grad():
                return -max_softmax(self.victim, moved, hp.temperature)
        distances = self._layer_distances(images)
        if self.combination is None:
            return distances[:, 0]
        weight, bias = self.combination
        return distances @ weight + bias

    def test_step(self, batch, batch_idx: int) -> None:
        images, _, test_sets = batch
        self.scores.add(test_sets, self.score(images))
        if self.guard is not None:
            with torch.no_grad():
                self.ours.add(test_sets, self.guard(images))

    def on_test_epoch_end(self) -> None:
        scores = self.scores.pop()
        outs = [name for name in scores if name != "in"]
        metrics = {f"test/tpr_at_tnr95/{name}": tpr_at_tnr(scores["in"], scores[name], 0.95)[0]
                   for name in outs}  # fmt: skip
        if self.guard is not None:
            ours, threshold = self.ours.pop(), self.hparams.detector_threshold
            for name in outs:
                tpr, tnr = tpr_tnr_at_threshold(ours["in"], ours[name], threshold)
                metrics.update({"test/ours/tnr": tnr, f"test/ours/tpr/{name}": tpr})
                metrics[f"test/tpr_at_tnr_ours/{name}"] = tpr_at_tnr(
                    scores["in"], scores[name], tnr
                )[0]
        self.log_dict(metrics)
        title = self.hparams.method
        if title == "mahalanobis":
            title += f" ({', '.join(self.layers)})"
        save_test_scores(self.trainer, scores, title)
