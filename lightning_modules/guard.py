"""The detector as a filter in front of the prediction API (paper 4.1), loaded from a checkpoint.

Both detectors (`Detector`, trained from scratch, and `FrozenFeaturesDetector`, frozen backbone +
logistic regression) save the same thing: a registry network with a two-class head (`net.` in
the state dict, `arch` in the hyper-parameters) and `trained_on`, the in-distribution data it
learnt (DataModule class, settings, image shape). `load_detector` rebuilds it as an `OODGuard`
whose forward gives P(out-of-distribution), without unpickling code.
"""

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader

from core.checkpoints import net_state, read_checkpoint
from core.errors import ConfigError
from lightning_modules.networks import build_network


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

    def check_data(self, data_name: str, image_shape: tuple[int, ...], where: str) -> None:
        """One-line error when the guarded data is not what the detector was trained for."""
        trained = self.trained_on["in_data"]
        if trained != data_name:
            raise ConfigError(f"detector {where} was trained for {trained}, not {data_name}")
        if tuple(image_shape) != self.image_shape:
            raise ConfigError(
                f"detector {where} was trained on {shape_text(self.image_shape)} images, "
                f"not {shape_text(image_shape)}"
            )


def shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(side) for side in shape)


def load_detector(path: str | Path) -> OODGuard:
    """The detector of a `Detector` or `FrozenFeaturesDetector` checkpoint, in eval mode."""
    checkpoint = read_checkpoint(path, "detector checkpoint")
    hparams = checkpoint.get("hyper_parameters") or {}
    trained_on = checkpoint.get("trained_on")
    if trained_on is None or hparams.get("num_classes") != 2 or "arch" not in hparams:
        raise ConfigError(
            f"{path} is not a detector checkpoint (no record of in/out training data); "
            "train one with lightning_modules.Detector or FrozenFeaturesDetector"
        )
    net = build_network(str(hparams["arch"]), 2)
    net.load_state_dict(net_state(checkpoint))
    return OODGuard(net, trained_on).eval()


class GuardReport(Callback):
    """Logs, when the surrogate is tested, what the filter did to the attack run through it:

    `transfer/queries_flagged` and `transfer/flagged_rate` (of the query budget), and
    `transfer/false_refusal_rate`: the share of the victim's test set (benign queries) that the
    same detector and threshold flag. Needs a `TransferSetDataModule` with `detector` set.
    """

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        data = trainer.datamodule
        if getattr(data, "detector_path", None) is None:
            raise ConfigError("GuardReport needs data: TransferSetDataModule with data.detector")
        guard = load_detector(data.detector_path).to(pl_module.device)
        loader = DataLoader(data.victim_data.split("test"), batch_size=data.query_batch_size)
        flagged = [guard(images.to(pl_module.device)) > data.threshold for images, _ in loader]
        pl_module.log_dict({
            "transfer/queries_flagged": float(data.queries_flagged),
            "transfer/flagged_rate": data.queries_flagged / data.budget,
            "transfer/false_refusal_rate": torch.cat(flagged).float().mean().item(),
        })  # fmt: skip
