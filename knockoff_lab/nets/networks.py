"""Network registry: every architecture a victim, surrogate or detector uses, chosen by name.

Each network is a plain `nn.Module` whose last layer is a `Linear` called `fc`, so replacing the
classifier head and reading penultimate features work the same for every architecture.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from knockoff_lab.core.checkpoints import disagreement, load_state_dict_file
from knockoff_lab.core.errors import ConfigError


@dataclass(frozen=True)
class NetworkSpec:
    build: Callable[[int], nn.Module]
    input_size: int  # the side length the network is meant for (ResNets also run at 32)


NETWORKS: dict[str, NetworkSpec] = {}


def register(name: str, input_size: int):
    """Decorator adding a `num_classes -> nn.Module` factory to the registry."""

    def add(build: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
        NETWORKS[name] = NetworkSpec(build, input_size)
        return build

    return add


def list_networks() -> list[str]:
    return sorted(NETWORKS)


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class DigitsCNN(nn.Module):
    """Small CNN of the embedded default: three conv blocks and global average pooling.

    Fast on two CPU cores at 32 px (about 90k parameters), and any input size works.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(3, 32),
            nn.MaxPool2d(2),
            *_conv_bn_relu(32, 64),
            nn.MaxPool2d(2),
            *_conv_bn_relu(64, 128),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


register("digits_cnn", input_size=32)(DigitsCNN)


class GTSRB5L(nn.Module):
    """GTSRB-5L (paper 5.1.1): the 5-layer from-scratch victim of PRADA (Juuti et al., EuroS&P
    2019, Table I: conv-pool-conv-pool then fully connected layers of width 200).

    Three 2x2 convolutions (32, 64, 128 filters; max-pool after the first two) and two fully
    connected layers (200, num_classes), ReLU throughout, for 32x32 RGB input. Layer widths and
    kernel sizes follow the same group's public reimplementation (the `MNIST_L5` network of
    ssg-research/dawn-dynamic-adversarial-watermarking-of-neural-networks, models.py), with
    three input channels for GTSRB.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 2),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(32, 64, 2),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(64, 128, 2),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(6),
            nn.Flatten(),
            nn.Linear(128 * 6 * 6, 200),
            nn.ReLU(),
        )
        self.fc = nn.Linear(200, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class CIFAR109L(nn.Module):
    """CIFAR10-9L (paper 5.1.1): the 9-layer from-scratch victim of PRADA's group (Juuti et al.
    2019; Szyller et al., DAWN 2019): six 3x3 convolutions in three blocks (32-64, 128-128,
    256-256; batch norm on the first of each block, max-pool after each) and three fully connected
    layers (1024, 512, num_classes) with light dropout, for 32x32 RGB input. Layer list after the
    `CIFAR10_BASE` network of ssg-research/dawn-dynamic-adversarial-watermarking-of-neural-networks
    (models.py).
    """

    def __init__(self, num_classes: int):
        super().__init__()

        def block(cin: int, mid: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, mid, 3, padding=1),
                nn.BatchNorm2d(mid),
                nn.ReLU(),
                nn.Conv2d(mid, cout, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]

        self.features = nn.Sequential(
            *block(3, 32, 64),
            *block(64, 128, 128),
            nn.Dropout2d(0.05),
            *block(128, 256, 256),
            nn.AdaptiveMaxPool2d(4),
            nn.Flatten(),
            nn.Dropout(0.1),
            nn.Linear(256 * 4 * 4, 1024),
            nn.ReLU(),
            nn.Linear(1024, 512),
            nn.ReLU(),
            nn.Dropout(0.1),
        )
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


register("gtsrb_5l", input_size=32)(GTSRB5L)
register("cifar10_9l", input_size=32)(CIFAR109L)


def _torchvision_resnet(name: str) -> Callable[[int], nn.Module]:
    return lambda num_classes: torchvision.models.get_model(name, num_classes=num_classes)


for _name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    register(_name, input_size=224)(_torchvision_resnet(_name))


def _replace_head(net: nn.Module, num_classes: int) -> None:
    if net.fc.out_features != num_classes:
        net.fc = nn.Linear(net.fc.in_features, num_classes)


def _torchvision_weights(arch: str, name: str):
    """Resolve a weights name such as `IMAGENET1K_V1` through torchvision's own registry."""
    try:
        available = torchvision.models.get_model_weights(arch)
    except ValueError:
        raise ConfigError(f"arch {arch!r} has no torchvision weights; weights={name!r}") from None
    try:
        return available[name.split(".")[-1]]
    except KeyError:
        known = ", ".join(w.name for w in available)
        raise ConfigError(
            f"weights {name!r} is neither a local file nor a weights name of {arch} ({known})"
        ) from None


def _load_local(
    build: Callable[[int], nn.Module], arch: str, num_classes: int, path: Path
) -> nn.Module:
    """Load a state dict of `arch` with a head of any size: the network as published (an ImageNet
    ResNet file from a cluster's cache), one trained on another task (the embedded public model)
    or one with the `num_classes` head already. A head of another size is replaced by a fresh
    one, which is what fine-tuning from a pretrained network starts with."""
    state = load_state_dict_file(path)
    head = state.get("fc.weight")
    net = build(head.shape[0] if head is not None and head.ndim == 2 else num_classes)
    if problem := disagreement(net, state):
        raise ConfigError(f"weights file {path} does not fit {arch} ({problem})")
    net.load_state_dict(state)
    _replace_head(net, num_classes)
    return net


def build_network(arch: str, num_classes: int, weights: str | None = None) -> nn.Module:
    """Build `arch` with a `num_classes` head.

    `weights`: None for random init; a torchvision weights name (`IMAGENET1K_V1`), loaded through
    torchvision's weights API and its TORCH_HOME cache; or the path of a local state-dict file.
    """
    if arch not in NETWORKS:
        raise ConfigError(f"unknown arch {arch!r}; known: {', '.join(list_networks())}")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    spec = NETWORKS[arch]
    if weights is None:
        net = spec.build(num_classes)
        _replace_head(net, num_classes)
        return net
    path = Path(weights).expanduser()
    if path.suffix in {".pt", ".pth", ".ckpt", ".bin"} or path.exists():
        if not path.is_file():
            raise ConfigError(f"weights file {path} does not exist")
        return _load_local(spec.build, arch, num_classes, path)
    fetch_weights(arch, weights)
    net = torchvision.models.get_model(arch, weights=_torchvision_weights(arch, weights))
    _replace_head(net, num_classes)
    return net


def fetch_weights(arch: str, weights: str) -> Path:
    """The file of torchvision weights `weights` of `arch` in torchvision's cache (TORCH_HOME),
    downloaded now if absent, or a one-line ConfigError naming where it must be put: called
    before anything trains, so an offline node without the file fails at once."""
    resolved = _torchvision_weights(arch, weights)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(resolved.url).name
    if not cached.is_file():
        try:
            torch.hub.load_state_dict_from_url(resolved.url, progress=False, check_hash=True)
        except OSError as err:  # offline (URLError is an OSError)
            raise ConfigError(
                f"weights {weights!r} of {arch} are not in the cache {cached} and cannot be "
                f"downloaded ({err}); copy the file there or pass a local path"
            ) from None
    return cached
