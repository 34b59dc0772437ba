"""DataModules: every dataset of the paper plus the embedded default (no download)."""

from datamodules.base import ImageDataModule
from datamodules.digits import DigitsDataModule

__all__ = ["DigitsDataModule", "ImageDataModule"]
