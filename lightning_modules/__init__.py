"""LightningModules (victim, surrogate, detector), the network registry and the prediction API."""

from lightning_modules.api import PredictionAPI
from lightning_modules.detector import Detector, FrozenFeaturesDetector
from lightning_modules.guard import GuardReport
from lightning_modules.ood import OODBaseline
from lightning_modules.surrogate import Surrogate
from lightning_modules.victim import VictimClassifier

__all__ = ["PredictionAPI", "Surrogate", "VictimClassifier"]
__all__ += ["Detector", "FrozenFeaturesDetector", "GuardReport", "OODBaseline"]
