"""Attacks: query strategies run in rounds through the prediction API."""

from attacks.base import ATTACKS, Queries, QueryStrategy, Seen, list_attacks, register_attack
from attacks.random_sampling import RandomSampling

__all__ = ["ATTACKS", "Queries", "QueryStrategy", "RandomSampling", "Seen", "list_attacks"]
__all__ += ["register_attack"]
