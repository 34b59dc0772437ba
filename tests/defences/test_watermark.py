"""DAWN: a keyed, deterministic share `fraction` of each client's queries is answered with
another top class; a model that learnt those answers is caught by `ownership_test` (tiny
p-value) while one that only predicts the victim's labels is not (p-value 1)."""

import pytest
import torch
from torch import nn

from knockoff_lab.api import PredictionAPI
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences import DawnWatermark, QueryBatch, ownership_test


def served(defence: DawnWatermark, posteriors, images, client: str = "c") -> torch.Tensor:
    batch = QueryBatch.arriving(images, posteriors, client)
    defence.apply(batch)
    return batch.answers


def queries(n: int, seed: int = 0, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(n, classes, generator=g)).softmax(-1), torch.randn(n, 3, 4, 4)


class Lookup(nn.Module):
    """A suspect that answers each known image with a stored answer (a perfect copy)."""

    def __init__(self, images: torch.Tensor, answers: torch.Tensor):
        super().__init__()
        self.images, self.answers = images.flatten(1), answers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        match = (x.flatten(1)[:, None] == self.images[None]).all(-1).float().argmax(-1)
        return self.answers[match].log()


def test_the_selected_share_is_the_fraction_and_only_it_changes():
    p, images = queries(20000)
    defence = DawnWatermark(fraction=0.05, key="k")
    selected, shift = defence.selection(images, "c", 10)
    assert abs(int(selected.sum()) - 1000) < 4 * (20000 * 0.05 * 0.95) ** 0.5
    assert ((1 <= shift) & (shift <= 9)).all() and len(shift.unique()) == 9
    got = served(defence, p, images)
    changed = got.argmax(-1) != p.argmax(-1)
    assert torch.equal(changed, selected) and torch.equal(got[~selected], p[~selected])
    assert torch.allclose(got.sort(-1).values, p.sort(-1).values)  # a permutation: same shape


def test_deterministic_per_image_and_client_and_keyed():
    p, images = queries(4000)
    defence = DawnWatermark(fraction=0.1, key="k")
    first = served(defence, p, images)
    assert torch.equal(first, served(defence, p, images))
    shuffled = torch.randperm(4000)
    assert torch.equal(served(defence, p[shuffled], images[shuffled]), first[shuffled])
    mine = defence.selection(images, "c", 10)[0]
    for other in (
        DawnWatermark(0.1, key="other").selection(images, "c", 10)[0],
        defence.selection(images, "someone-else", 10)[0],
    ):
        assert (mine & other).sum() < 0.3 * mine.sum()  # about fraction^2, not fraction
    assert "s3cret" not in DawnWatermark(0.1, key="s3cret").describe()  # the key stays secret


def test_ownership_test_catches_a_copy_and_clears_the_victims_own_labels():
    p, images = queries(2000)
    defence = DawnWatermark(fraction=0.05, key="k")
    answers = served(defence, p, images)
    marked, labels = defence.watermarks(images, answers, "c")
    assert 50 < int(marked.sum()) < 150
    copy = Lookup(images, answers)
    agreement, p_value = ownership_test(copy, images[marked], labels[marked], 10)
    assert agreement == 1.0 and p_value < 1e-30
    honest = Lookup(images, p)  # the victim's own labels: never the watermark label
    agreement, p_value = ownership_test(honest, images[marked], labels[marked], 10)
    assert agreement == 0.0 and p_value == 1.0


def test_through_the_api_each_client_gets_its_own_watermark():
    victim = nn.Sequential(nn.Flatten(), nn.Linear(48, 10))
    api = PredictionAPI.around(victim, 10, defences=[DawnWatermark(0.2, key="k")])
    _, images = queries(500)
    a, b = api.answer(images, "a"), api.answer(images, "b")
    assert torch.equal(a, api.answer(images, "a"))
    assert 0 < int((a.argmax(-1) != b.argmax(-1)).sum()) < 250


@pytest.mark.parametrize(
    "fraction, classes, message",
    [
        (1.5, 10, r"fraction must be in \[0, 1\]"),
        (-0.1, 10, "fraction must be"),
        (0.1, 1, "needs >= 2 classes"),
    ],
)
def test_bad_options(fraction, classes, message):
    with pytest.raises(ConfigError, match=message):
        DawnWatermark(fraction).check(classes)
