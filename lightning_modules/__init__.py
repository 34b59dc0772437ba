"""LightningModules (victim, surrogate, detector), the network registry and the prediction API."""

from lightning_modules.api import PredictionAPI
from lightning_modules.surrogate import Surrogate
from lightning_modules.victim import VictimClassifier

__all__ = ["PredictionAPI", "Surrogate", "VictimClassifier"]
