"""Attacks: query strategies run in rounds through the prediction API."""

from attacks.active_thief import ActiveThief
from attacks.base import ATTACKS, Queries, QueryStrategy, Seen, list_attacks, register_attack
from attacks.jacobian import JacobianAugmentation
from attacks.knockoff_adaptive import KnockoffAdaptive
from attacks.random_sampling import RandomSampling

__all__ = ["ATTACKS", "Queries", "QueryStrategy", "RandomSampling", "Seen", "list_attacks"]
__all__ += ["register_attack", "ActiveThief", "JacobianAugmentation", "KnockoffAdaptive"]
