"""DataModules: every dataset of the paper plus the embedded default (no download)."""

from datamodules.base import ImageDataModule
from datamodules.bing import BingDataModule
from datamodules.caltech256 import Caltech256DataModule
from datamodules.cifar10 import CIFAR10DataModule
from datamodules.cubs200 import CUBS200DataModule
from datamodules.diabetic5 import Diabetic5DataModule
from datamodules.digits import DigitsDataModule
from datamodules.gtsrb import GTSRBDataModule
from datamodules.imagenet_subset import ImageNetSubsetDataModule
from datamodules.in_out import InOutDataModule
from datamodules.mixed_pool import MixedPoolDataModule
from datamodules.openimages import OpenImagesDataModule
from datamodules.pools import CropsPoolDataModule, PhotoCropsDataModule
from datamodules.transfer_set import TransferSetDataModule

__all__ = [
    "BingDataModule",
    "CIFAR10DataModule",
    "CUBS200DataModule",
    "Caltech256DataModule",
    "CropsPoolDataModule",
    "Diabetic5DataModule",
    "DigitsDataModule",
    "GTSRBDataModule",
    "ImageDataModule",
    "ImageNetSubsetDataModule",
    "InOutDataModule",
    "MixedPoolDataModule",
    "OpenImagesDataModule",
    "PhotoCropsDataModule",
    "TransferSetDataModule",
]
