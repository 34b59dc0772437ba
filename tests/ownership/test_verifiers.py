"""The verifiers on toys with a known answer. A 1-nearest-neighbour classifier memorises its
training points exactly: each sits at the centre of its own cell, while a point it never saw
lies anywhere in one, nearer a boundary. So dataset inference must accuse the owner's model
(asked as a suspect) and must not accuse the same recipe fitted to other points of the same
distribution; DAWN's test must accuse a model that learnt the watermark labels."""

import pytest
import torch
from torch import nn

from knockoff_lab.api.prediction import PredictionAPI
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.core.normalization import denormalize, normalize
from knockoff_lab.ownership import DatasetInference, DawnVerifier, Evidence, Suspect
from knockoff_lab.ownership.base import check_evidence
from knockoff_lab.ownership.dataset_inference import blind_walk
from tests.toy_defence import RefuseAfter

CLASSES = 3


def blobs(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` normalised 3x4x4 images around one random centre per class."""
    centres = torch.rand(CLASSES, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.4 + 0.3
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (count,), generator=generator)
    pixels = centres[labels] + 0.12 * torch.randn(count, 3, 4, 4, generator=generator)
    return normalize(pixels.clamp(0, 1)), labels


class NearestNeighbour(nn.Module):
    """Logits: minus the distance to the nearest memorised point of each class."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        super().__init__()
        self.register_buffer("points", images.flatten(1))
        self.register_buffer("labels", labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distances = torch.cdist(x.flatten(1), self.points)
        return torch.stack(
            [-distances[:, self.labels == c].min(1).values for c in range(CLASSES)], 1
        )


def suspect_of(network: nn.Module, classes: int = CLASSES) -> Suspect:
    return Suspect(PredictionAPI.around(network, classes, posterior_cache=None, ledger=None))


@pytest.fixture(scope="module")
def evidence() -> Evidence:
    private, public = blobs(120, seed=1), blobs(120, seed=2)
    return Evidence(NearestNeighbour(*private), CLASSES, private, public)


@pytest.mark.parametrize("walk", ["blind", "mingd"])
def test_dataset_inference_accuses_the_owners_model_and_not_an_independent_one(evidence, walk):
    verifier = DatasetInference(
        walk=walk, regressor_points=60, test_points=60, noise_scale=20.0, steps=60
    )
    owner = verifier.verify(suspect_of(evidence.owner), evidence)
    independent = verifier.verify(suspect_of(NearestNeighbour(*blobs(120, seed=3))), evidence)
    assert owner.accused and owner.extra["mean_diff"] > 0
    assert not independent.accused and independent.p_value > 0.05
    assert owner.extra["points_needed"] <= 10 and "points_needed" not in independent.extra


def test_the_blind_walk_pays_one_query_per_walk_still_on_its_label(evidence):
    """Each step asks only the walks that have not left their label; the owner pays exactly
    what the suspect's books show, and a walk that never flips stops at `steps`."""
    suspect = suspect_of(evidence.owner)
    images, labels = evidence.private[0][:8], evidence.private[1][:8]
    lengths = blind_walk(suspect.labels, images, labels, 2, 5, 20.0, torch.Generator())
    assert lengths.shape == (8, 3, 2)
    assert suspect.queries == suspect.api.record("owner").asked
    assert 8 * 3 * 2 <= suspect.queries <= 8 * 3 * 2 * 5  # every walk once, at most every step
    before = suspect.queries
    verdict = DatasetInference(regressor_points=60, test_points=60).verify(suspect, evidence)
    assert verdict.queries == suspect.queries - before == suspect.api.record("owner").asked - before


class OnePixel(nn.Module):
    """Class 1 when the first pixel is brighter than 0.5: a boundary at a known distance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bright = denormalize(x)[:, 0, 0, 0] - 0.5
        return torch.stack([-bright, bright], 1)


def test_walk_lengths_grow_with_the_distance_to_the_boundary():
    """A point far inside its class walks farther than one near the boundary, in every norm."""
    pixels = torch.full((2, 3, 4, 4), 0.5)
    pixels[:, 0, 0, 0] = torch.tensor([0.1, 0.45])  # far from, near the boundary at 0.5
    net = OnePixel()
    lengths = blind_walk(
        lambda x: net(x).argmax(-1),
        normalize(pixels),
        torch.tensor([0, 0]),
        8,
        60,
        20.0,
        torch.Generator().manual_seed(0),
    )
    assert (lengths[0].mean(-1) > lengths[1].mean(-1)).all()


def test_dawn_accuses_a_model_that_learnt_the_watermark_labels(evidence):
    images = evidence.public[0]
    marks = (evidence.owner(images).argmax(-1) + 1) % CLASSES
    learnt = NearestNeighbour(images, marks)  # answers every marked query with its mark
    marked = Evidence(evidence.owner, CLASSES, evidence.private, evidence.public, (images, marks))
    thief = DawnVerifier().verify(suspect_of(learnt), marked)
    innocent = DawnVerifier().verify(suspect_of(evidence.owner), marked)
    assert thief.accused and thief.extra["agreement"] == 1.0 and thief.queries == len(images)
    assert not innocent.accused and innocent.extra["agreement"] == 0.0


def test_bad_evidence_is_one_line_before_any_query(evidence):
    other = suspect_of(nn.Sequential(nn.Flatten(), nn.Linear(48, 5)), classes=5)
    with pytest.raises(ConfigError, match="answers 5 classes, the owner's model 3"):
        check_evidence(other, evidence, [DawnVerifier()])
    overlapping = Evidence(evidence.owner, CLASSES, evidence.private, evidence.private)
    suspect = suspect_of(evidence.owner)
    with pytest.raises(ConfigError, match="120 of the owner's private points are also"):
        check_evidence(suspect, overlapping, [])
    with pytest.raises(ConfigError, match="needs the accused client's watermarked queries"):
        check_evidence(suspect, evidence, [DawnVerifier()])
    with pytest.raises(ConfigError, match="needs 200 private points"):
        check_evidence(suspect, evidence, [DatasetInference()])
    assert suspect.api.record("owner").asked == 0 and other.api.record("owner").asked == 0
    with pytest.raises(ConfigError, match="sample_size must be in"):
        DatasetInference(sample_size=1)


def test_a_refused_query_stops_the_verdict(evidence):
    """A suspect that refuses the owner's queries (here after 10) gives no verdict."""
    api = PredictionAPI.around(
        evidence.owner, CLASSES, [RefuseAfter(10)], posterior_cache=None, ledger=None
    )
    with pytest.raises(ConfigError, match="refused 10 of 20 queries"):
        Suspect(api).labels(evidence.public[0][:20])
