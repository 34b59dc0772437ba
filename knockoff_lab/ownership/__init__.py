"""Proofs of theft: verifiers that tell an owner whether a suspect model derives from theirs,
each a p-value over what the suspect answers (`base`), checked against independent models."""

from knockoff_lab.ownership.base import Evidence, Suspect, Verdict, Verifier, check_evidence
from knockoff_lab.ownership.dataset_inference import DatasetInference
from knockoff_lab.ownership.dawn import DawnVerifier

__all__ = [
    "DatasetInference",
    "DawnVerifier",
    "Evidence",
    "Suspect",
    "Verdict",
    "Verifier",
    "check_evidence",
]
