"""Defences: composable transforms of the victim's answers, chosen by class path in YAML."""

from knockoff_lab.defences.base import (
    DEFENCES,
    Defence,
    QueryBatch,
    list_defences,
    register_defence,
)
from knockoff_lab.defences.detector import DetectorFilter
from knockoff_lab.defences.granularity import LabelOnly, Rounded, TopK
from knockoff_lab.defences.mad import MAD
from knockoff_lab.defences.misinformation import AdaptiveMisinformation
from knockoff_lab.defences.prada import PRADA
from knockoff_lab.defences.reverse_sigmoid import ReverseSigmoid
from knockoff_lab.defences.watermark import DawnWatermark, ownership_test

__all__ = ["DEFENCES", "Defence", "DetectorFilter", "LabelOnly", "QueryBatch", "Rounded", "TopK"]
__all__ += ["list_defences", "register_defence"]
__all__ += ["MAD", "PRADA", "AdaptiveMisinformation", "DawnWatermark", "ReverseSigmoid"]
__all__ += ["ownership_test"]
