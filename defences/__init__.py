"""Defences: composable transforms of the victim's answers, chosen by class path in YAML."""

from defences.base import DEFENCES, Defence, QueryBatch, list_defences, register_defence
from defences.detector import DetectorFilter
from defences.granularity import LabelOnly, Rounded, TopK
from defences.mad import MAD
from defences.misinformation import AdaptiveMisinformation
from defences.prada import PRADA
from defences.reverse_sigmoid import ReverseSigmoid
from defences.watermark import DawnWatermark, ownership_test

__all__ = ["DEFENCES", "Defence", "DetectorFilter", "LabelOnly", "QueryBatch", "Rounded", "TopK"]
__all__ += ["list_defences", "register_defence"]
__all__ += ["MAD", "PRADA", "AdaptiveMisinformation", "DawnWatermark", "ReverseSigmoid"]
__all__ += ["ownership_test"]
