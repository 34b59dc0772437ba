"""Defences: composable transforms of the victim's answers, chosen by class path in YAML."""

from defences.base import DEFENCES, Defence, QueryBatch, list_defences, register_defence
from defences.detector import DetectorFilter
from defences.granularity import LabelOnly, Rounded, TopK

__all__ = ["DEFENCES", "Defence", "DetectorFilter", "LabelOnly", "QueryBatch", "Rounded", "TopK"]
__all__ += ["list_defences", "register_defence"]
