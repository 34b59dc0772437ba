"""LightningModules (victim, surrogate, detector), the network registry and the prediction API."""

from lightning_modules.victim import VictimClassifier

__all__ = ["VictimClassifier"]
