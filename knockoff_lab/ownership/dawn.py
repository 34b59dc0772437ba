"""DAWN's ownership test (`defences.watermark.ownership_test`) as a verifier: the suspect is
asked the accused client's watermarked queries, and a p-value says how unlikely its agreement
with their watermark labels is for a model not trained on that client's answers."""

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences.watermark import false_claim_p
from knockoff_lab.ownership.base import Evidence, Suspect, Verdict, Verifier


class DawnVerifier(Verifier):
    """`alpha`: the significance level at which the suspect is accused."""

    name = "dawn"

    def __init__(self, alpha: float = 0.01):
        if not 0 < alpha < 1:
            raise ConfigError(f"DawnVerifier: alpha must be in (0, 1), got {alpha}")
        self.alpha = alpha

    def check(self, suspect: Suspect, evidence: Evidence) -> None:
        if evidence.marked is None:
            raise ConfigError(
                "DawnVerifier needs the accused client's watermarked queries (evidence.marked): "
                "the transfer set of an attack on a DAWN API, or OwnershipReport's dawn_pool"
            )

    def verify(self, suspect: Suspect, evidence: Evidence) -> Verdict:
        images, labels = evidence.marked
        before = suspect.queries
        hits = int((suspect.labels(images) == labels).sum()) if len(images) else 0
        p_value = false_claim_p(hits, len(images), evidence.num_classes) if len(images) else 1.0
        agreement = hits / len(images) if len(images) else 0.0
        return Verdict(
            self.name,
            p_value,
            p_value < self.alpha,
            suspect.queries - before,
            len(images),
            {"agreement": agreement},
        )
