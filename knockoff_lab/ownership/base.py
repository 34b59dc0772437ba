"""An owner's question, "is this suspect a copy of my model?", asked of a model the owner can
only query: a `Verifier` answers it with a p-value, from what the owner brings (`Evidence`) and
the suspect's answers through any `QueryAPI` (a local checkpoint behind `PredictionAPI`, or a
suspect served elsewhere behind `RemoteAPI`), every query counted in the suspect's books.

Everything the owner brings is checked before the first query (`check`): a suspect with another
number of classes, a URL that refuses the owner's key, private points that are also public.
"""

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import nn

from knockoff_lab.api.base import QueryAPI
from knockoff_lab.core.errors import ConfigError


@dataclass
class Evidence:
    """What the owner brings: its own model (owner-side, never counted), its private training
    points and public points it never trained on (with their true labels), and for DAWN the
    watermarked queries of the accused client with their watermark labels."""

    owner: nn.Module
    num_classes: int
    private: tuple[torch.Tensor, torch.Tensor]  # images, labels
    public: tuple[torch.Tensor, torch.Tensor]
    marked: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class Verdict:
    """`p_value`: the probability of evidence this strong from a model not derived from the
    owner's; `accused` when it is below the verifier's `alpha`. `queries`: what the test asked
    the suspect; `points`: owner data it exposed (private points, or watermarked queries)."""

    verifier: str
    p_value: float
    accused: bool
    queries: int
    points: int
    extra: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """As logged: `ownership/<verifier>/<name>`."""
        values = {
            "p_value": self.p_value,
            "accused": float(self.accused),
            "queries": float(self.queries),
            "points": float(self.points),
            **self.extra,
        }
        return {f"ownership/{self.verifier}/{k}": float(v) for k, v in values.items()}


class Suspect:
    """The suspect as the owner sees it: labels for images, each query counted (`queries`).
    A refused query is an error: a verdict on answers the suspect did not give means nothing."""

    def __init__(self, api: QueryAPI, client: str = "owner"):
        self.api, self.client, self.queries = api, client, 0

    def labels(self, images: torch.Tensor) -> torch.Tensor:
        if len(images) == 0:
            return torch.empty(0, dtype=torch.long)
        answers = self.api.answer(images, self.client)
        self.queries += len(images)
        if refused := int(answers.isnan().any(-1).sum()):
            raise ConfigError(
                f"suspect {self.api.victim_name} refused {refused} of {len(images)} queries: "
                "a verdict needs its answers (raise its budget for the owner's client)"
            )
        return answers.argmax(-1)

    def network(self) -> nn.Module | None:
        """Its weights, when it runs in this process (white-box tests); None behind a URL."""
        return getattr(self.api, "victim", None)


class Verifier(ABC):
    """`alpha`: the significance level at which a suspect is accused."""

    name: str
    alpha: float

    @abstractmethod
    def verify(self, suspect: Suspect, evidence: Evidence) -> Verdict: ...

    def check(self, suspect: Suspect, evidence: Evidence) -> None:  # noqa: B027 (optional)
        """What this verifier needs beyond `check_evidence`, before any query."""


def image_digests(images: torch.Tensor) -> set[str]:
    return {
        hashlib.sha256(row.numpy().tobytes()).hexdigest()
        for row in images.detach().cpu().float().contiguous().flatten(1)
    }


def check_evidence(suspect: Suspect, evidence: Evidence, verifiers: list[Verifier]) -> None:
    """Every mistake the owner can make, one line each, before the suspect is asked anything.
    Reading `num_classes` of a suspect behind a URL asks its deployment (no query): a refused
    key fails here."""
    classes = suspect.api.num_classes
    if classes != evidence.num_classes:
        raise ConfigError(
            f"suspect {suspect.api.victim_name} answers {classes} classes, the owner's model "
            f"{evidence.num_classes}: a suspect copy must answer the same classes"
        )
    if overlap := image_digests(evidence.private[0]) & image_digests(evidence.public[0]):
        raise ConfigError(
            f"{len(overlap)} of the owner's private points are also among its public points: "
            "they must be disjoint (public points are ones the owner never trained on)"
        )
    for verifier in verifiers:
        verifier.check(suspect, evidence)
