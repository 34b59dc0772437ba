"""LightningModules (victim, surrogate, detectors, OOD baselines), the network registry, and the
callback that reports what the API's defences did."""

from lightning_modules.defence_report import DefenceReport
from lightning_modules.detector import Detector, FrozenFeaturesDetector
from lightning_modules.ood import OODBaseline
from lightning_modules.surrogate import Surrogate
from lightning_modules.victim import VictimClassifier

__all__ = ["DefenceReport", "Detector", "FrozenFeaturesDetector", "OODBaseline", "Surrogate"]
__all__ += ["VictimClassifier"]
