"""DataModules: every dataset of the paper plus the embedded default (no download)."""

from datamodules.base import ImageDataModule
from datamodules.digits import DigitsDataModule
from datamodules.pools import CropsPoolDataModule
from datamodules.transfer_set import TransferSetDataModule

__all__ = [
    "CropsPoolDataModule",
    "DigitsDataModule",
    "ImageDataModule",
    "TransferSetDataModule",
]
