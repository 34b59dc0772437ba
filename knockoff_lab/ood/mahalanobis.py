"""The Mahalanobis baseline (Lee et al. 2018): distance of the input's features to the closest
class mean, with class means and one shared covariance from the victim's training features and
an input pre-processing step that lowers that distance.

One layer: that distance is the score. Several layers: Lee et al.'s combination, a logistic
regression of the per-layer distances fitted on the in/out data's validation split (the
victim's val images vs a held-out share of the attacker's pool: the same kind of
out-of-distribution data our detectors train on, so this variant is supervised like them).
"""

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from sklearn.linear_model import LogisticRegressionCV
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.nets.features import PENULTIMATE, check_layers, layer_features
from knockoff_lab.ood.scorers import (
    OODScorer,
    check_epsilon,
    pixel_std,
    register_ood_scorer,
    signed_step,
)


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


def device_of(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


@register_ood_scorer("mahalanobis")
class Mahalanobis(OODScorer):
    """The closest-class Mahalanobis distance of the pre-processed input, on `layers`
    (submodule names or `penultimate`, the default); several layers are combined on the
    validation split. `fit` must run first (`OODBaseline` calls it when testing starts)."""

    def __init__(self, layers: list[str] | None = None, epsilon: float = 0.0014):
        check_epsilon(epsilon)
        self.layers: Sequence[str] = list(layers or [PENULTIMATE])
        self.epsilon = epsilon
        self._gaussians: list[ClassGaussians] = []
        self._combination: tuple[torch.Tensor, torch.Tensor] | None = None

    def check(self, victim: nn.Module) -> None:
        check_layers(victim, self.layers)

    def title(self) -> str:
        return f"{self.name} ({', '.join(self.layers)})"

    # -- fitting: statistics of the victim's training data, combination on validation ---------

    def fit(self, victim: nn.Module, data: Any) -> None:
        if len(self.layers) > 1 and data.count("val", 1) < 5:
            raise ConfigError(
                "multi-layer Mahalanobis fits its combination on the validation split: it needs "
                "out-of-distribution validation images (data.out_val_fraction > 0)"
            )
        train = DataLoader(
            data.in_data.split("train"), batch_size=data.batch_size, num_workers=data.num_workers
        )
        self.fit_statistics(victim, train)
        if len(self.layers) > 1:
            self.fit_combination(victim, data.val_dataloader())

    def fit_statistics(self, victim: nn.Module, batches: Iterable) -> None:
        """Each layer's class means and shared covariance, from (images, class label) batches."""
        features, labels = self._features(victim, batches)
        device = device_of(victim)
        with torch.inference_mode(False):  # the statistics enter gradients later
            self._gaussians = [
                ClassGaussians(features[layer], labels).to(device) for layer in self.layers
            ]
        self._combination = None

    def _features(
        self, victim: nn.Module, batches: Iterable
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        parts: dict[str, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        labels, device = [], device_of(victim)
        with torch.no_grad():
            for images, label in batches:
                found = layer_features(victim, images.to(device), self.layers)[1]
                for layer in self.layers:
                    parts[layer].append(found[layer].float().cpu())
                labels.append(torch.as_tensor(label))
        return {k: torch.cat(v) for k, v in parts.items()}, torch.cat(labels)

    def fit_combination(self, victim: nn.Module, batches: Iterable) -> None:
        """Lee et al.'s logistic regression of per-layer scores, on (images, in/out label)
        batches of the validation split (label 1 = out-of-distribution)."""
        scores, labels, device = [], [], device_of(victim)
        for images, label in batches:
            scores.append(self.layer_distances(victim, images.to(device)).cpu())
            labels.append(label)
        x, y = torch.cat(scores).numpy(), torch.cat(labels).numpy()
        scaler = StandardScaler().fit(x)
        regression = LogisticRegressionCV(
            l1_ratios=(0.0,), cv=5, scoring="neg_log_loss", use_legacy_attributes=False
        ).fit(scaler.transform(x), y)
        coef = regression.coef_[0] / scaler.scale_  # the scaling folded into the weights
        bias = torch.tensor(regression.intercept_[0] - coef @ scaler.mean_, device=device)
        self._combination = (torch.from_numpy(coef).float().to(device), bias.float())

    # -- scoring -------------------------------------------------------------------------------

    def layer_distances(self, victim: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """(N, layers): per layer, the closest-class distance of the pre-processed input."""
        if not self._gaussians:
            raise ConfigError("Mahalanobis scores need its class statistics: call fit first")
        std, columns = pixel_std(images), []
        for layer, gaussians in zip(self.layers, self._gaussians, strict=True):
            moved = mahalanobis_inputs(victim, images, layer, gaussians, self.epsilon, std)
            columns.append(closest_distance(victim, moved, layer, gaussians))
        return torch.stack(columns, dim=1)

    def score(self, victim: nn.Module, images: torch.Tensor) -> torch.Tensor:
        distances = self.layer_distances(victim, images)
        if self._combination is None:
            return distances[:, 0]
        weight, bias = self._combination
        return distances @ weight + bias
