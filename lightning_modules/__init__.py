"""LightningModules (victim, surrogate, detectors, OOD baselines) and the callbacks that drive and
report an attack; everything framework-free they use lives in `knockoff_lab`."""

from lightning_modules.attack_rounds import AttackRounds
from lightning_modules.complete_set import CompleteSetCheckpoint, CompleteSetEarlyStopping
from lightning_modules.defence_report import DefenceReport
from lightning_modules.detector import Detector, FrozenFeaturesDetector
from lightning_modules.ood_baseline import OODBaseline
from lightning_modules.ownership_report import OwnershipReport
from lightning_modules.surrogate import Surrogate
from lightning_modules.transfer_histogram import TransferHistogram
from lightning_modules.victim import VictimClassifier

__all__ = ["DefenceReport", "Detector", "FrozenFeaturesDetector", "OODBaseline", "Surrogate"]
__all__ += [
    "AttackRounds",
    "CompleteSetCheckpoint",
    "CompleteSetEarlyStopping",
    "TransferHistogram",
]
__all__ += ["OwnershipReport", "VictimClassifier"]
