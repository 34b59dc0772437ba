"""What an out-of-distribution scorer is, the registry of them, and the two softmax ones.

A scorer turns the victim's view of a batch of images into one number per image, higher = more
out-of-distribution. Some fit something first (`fit`: statistics of the victim's training data,
a combination fitted on the in/out validation split); `score` is then a function of the victim
and the images alone. `OODBaseline` runs any of them; add one by subclassing `OODScorer`,
decorating it with `@register_ood_scorer("name")` and naming its class path in a YAML
(`model.init_args.scorer`).

Gradients w.r.t. the input: Lightning tests under `torch.inference_mode()`, which would silently
turn them off; `input_gradients()` leaves inference mode and re-enables autograd locally. A step
of `epsilon` in pixel space is `epsilon / std` in the normalised inputs, per channel.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.core.normalization import IMAGENET_STD

OOD_SCORERS: dict[str, type["OODScorer"]] = {}


def register_ood_scorer(name: str):
    """Class decorator adding an `OODScorer` to the registry under `name` (its `name`, the title
    of its ROC figure and the column it fills in Table 4)."""

    def add(cls: type["OODScorer"]) -> type["OODScorer"]:
        cls.name = name
        OOD_SCORERS[name] = cls
        return cls

    return add


def list_ood_scorers() -> list[str]:
    return sorted(OOD_SCORERS)


class OODScorer(ABC):
    """Base class of the baselines' scores; `score` must be higher for more out-of-distribution
    images. Settings are plain constructor arguments (a YAML's `init_args`)."""

    name: ClassVar[str] = ""

    def check(self, victim: nn.Module) -> None:
        """Raise a one-line ConfigError for settings that cannot work with this victim (a layer
        it does not have); called when the baseline is built, before any data is read."""
        return None

    def fit(self, victim: nn.Module, data: Any) -> None:
        """Fit whatever the score needs on `data` (an `InOutDataModule`: the victim's training
        split `data.in_data.split("train")`, the in/out validation split); nothing by default.
        Called at the start of testing, on the victim's device, maybe inside inference mode."""
        return None

    @abstractmethod
    def score(self, victim: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """(N,) out-of-distribution score of each image (higher = more OOD)."""

    def title(self) -> str:
        """The title of the baseline's ROC figure."""
        return self.name

    def settings(self) -> dict[str, Any]:
        """The constructor's arguments, as kept in the public attributes (hyper-parameters)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


@contextmanager
def input_gradients() -> Iterator[None]:
    """Autograd on, inference mode off, whatever the caller (a Lightning test loop) set."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def pixel_std(images: torch.Tensor) -> torch.Tensor:
    """The normalisation's per-channel std, (1, 3, 1, 1) on the images' device."""
    return torch.tensor(IMAGENET_STD).view(1, 3, 1, 1).to(images.device)


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


def check_epsilon(epsilon: float) -> None:
    if epsilon < 0:
        raise ConfigError(f"need epsilon >= 0 (a step in pixel units), got {epsilon}")


@register_ood_scorer("msp")
class MSP(OODScorer):
    """Minus the maximum softmax probability (Hendrycks and Gimpel 2017)."""

    def score(self, victim: nn.Module, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return -max_softmax(victim, images)


@register_ood_scorer("odin")
class ODIN(OODScorer):
    """Minus the maximum softmax at `temperature` of the input moved by `epsilon` against the
    gradient of the loss of its predicted class (Liang et al. 2018: T = 1000, epsilon = 0.0014)."""

    def __init__(self, temperature: float = 1000.0, epsilon: float = 0.0014):
        if temperature <= 0:
            raise ConfigError(f"need temperature > 0, got {temperature}")
        check_epsilon(epsilon)
        self.temperature, self.epsilon = temperature, epsilon

    def score(self, victim: nn.Module, images: torch.Tensor) -> torch.Tensor:
        moved = odin_inputs(victim, images, self.temperature, self.epsilon, pixel_std(images))
        with torch.no_grad():
            return -max_softmax(victim, moved, self.temperature)
