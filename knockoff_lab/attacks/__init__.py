"""Attacks: query strategies run in rounds through the prediction API."""

from knockoff_lab.attacks.active_thief import ActiveThief
from knockoff_lab.attacks.answers import AnswerReader, AsGiven, QuerySmoothing, TopOne
from knockoff_lab.attacks.base import (
    ATTACKS,
    Queries,
    QueryStrategy,
    Seen,
    list_attacks,
    register_attack,
)
from knockoff_lab.attacks.ddae import DDAE
from knockoff_lab.attacks.dfme import DFME, MAZE
from knockoff_lab.attacks.hard_label import HardLabelDataFree
from knockoff_lab.attacks.jacobian import JacobianAugmentation
from knockoff_lab.attacks.knockoff_adaptive import KnockoffAdaptive
from knockoff_lab.attacks.random_sampling import RandomSampling

__all__ = ["ATTACKS", "Queries", "QueryStrategy", "RandomSampling", "Seen", "list_attacks"]
__all__ += ["register_attack", "ActiveThief", "JacobianAugmentation", "KnockoffAdaptive"]
__all__ += [
    "AnswerReader",
    "AsGiven",
    "DDAE",
    "DFME",
    "HardLabelDataFree",
    "MAZE",
    "QuerySmoothing",
    "TopOne",
]
