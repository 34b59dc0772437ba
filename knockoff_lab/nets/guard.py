"""The detector as a filter in front of the prediction API (paper 4.1), loaded from a checkpoint.

Both detectors (`Detector`, trained from scratch, and `FrozenFeaturesDetector`, frozen backbone +
logistic regression) save the same thing: a registry network with a two-class head (`net.` in
the state dict, `arch` in the hyper-parameters) and `trained_on`, the in-distribution data it
learnt (DataModule class, settings, image shape). `load_detector` rebuilds it as an `OODGuard`
whose forward gives P(out-of-distribution), without unpickling code.
"""

from pathlib import Path

import torch
from torch import nn

from knockoff_lab.core.checkpoints import net_state, read_checkpoint
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.nets.networks import build_network


class OODGuard(nn.Module):
    """A binary in/out network and a record of its training data; `forward` gives P(OOD)."""

    def __init__(self, net: nn.Module, trained_on: dict):
        super().__init__()
        self.net, self.trained_on = net, trained_on

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.trained_on["image_shape"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).float().softmax(dim=-1)[:, 1]


def load_detector(path: str | Path) -> OODGuard:
    """The detector of a `Detector` or `FrozenFeaturesDetector` checkpoint, in eval mode."""
    checkpoint = read_checkpoint(path, "detector checkpoint")
    hparams = checkpoint.get("hyper_parameters") or {}
    # the InOutDataModule's state in the checkpoint; checkpoints of older versions held it on top
    trained_on = (checkpoint.get("InOutDataModule") or {}).get("trained_on")
    trained_on = trained_on or checkpoint.get("trained_on")
    if trained_on is None or hparams.get("num_classes") != 2 or "arch" not in hparams:
        raise ConfigError(
            f"{path} is not a detector checkpoint (no record of in/out training data); "
            "train one with lightning_modules.Detector or FrozenFeaturesDetector"
        )
    with torch.device("meta"):  # no random initialisation to throw away
        net = build_network(str(hparams["arch"]), 2)
    net.load_state_dict(net_state(checkpoint), assign=True)
    return OODGuard(net, trained_on).eval()
