"""The prediction API, the only door to the victim, and the owner's side of it: the victim,
the cache of its posteriors and the per-client books."""

from knockoff_lab.api.ledger import ClientRecord, Ledger
from knockoff_lab.api.prediction import PredictionAPI
from knockoff_lab.nets.victim import load_victim, read_victim

__all__ = ["ClientRecord", "Ledger", "PredictionAPI", "load_victim", "read_victim"]
