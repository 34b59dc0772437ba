"""Attackers who know the defence (issue 30): top-1 relabelling turns a reverse-sigmoid answer
into the victim's top class and reads the answers already paid for; query smoothing charges
every copy (queries_per_input per image, the budget exact), asks the same copies again on a
resume and averages them; bad settings are one line before any query."""

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.transforms import v2

from knockoff_lab.api import PredictionAPI
from knockoff_lab.attacks.answers import AsGiven, QuerySmoothing, TopOne
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences import Defence, QueryBatch, ReverseSigmoid
from tests.datamodules.test_transfer_set import pool_images
from tests.datamodules.test_transfer_set import transfer as transfer_set


def transfer(victim_ckpt, budget=120, defences=(), cache="cache", **kwargs):
    """The transfer-set tests' builder, with books and victim cache in memory only."""
    memory = {"posterior_cache": None, "ledger": None}
    return transfer_set(
        victim_ckpt, budget, defences, api_options=memory, cache_dir=cache, **kwargs
    )


def training_targets(dm) -> torch.Tensor:
    train = dm.split("train")
    return train.answers[torch.argsort(train.rows)], train.rows.sort().values


def test_top1_relabelling_turns_a_reverse_sigmoid_answer_into_the_victims_top_class(victim_ckpt):
    defence = [ReverseSigmoid(beta=0.6, gamma=1.5)]
    given = transfer(victim_ckpt, defences=defence)
    relabelled = transfer(victim_ckpt, defences=defence, reader=TopOne())
    assert relabelled.folder == given.folder  # the same paid answers, read otherwise
    targets, rows = training_targets(relabelled)
    victim_top = given.api.victim_labels(pool_images(given))[rows]
    assert torch.equal(targets, torch.nn.functional.one_hot(victim_top, 10).float())
    as_given, _ = training_targets(given)
    assert not torch.equal(as_given, targets)  # the naive attacker trains on the perturbation
    assert torch.equal(as_given, given.answers.float()[rows])


def test_top1_keeps_a_refused_query_refused():
    answers = torch.tensor([[0.2, 0.7, 0.1], [float("nan")] * 3])
    read = TopOne().read(answers)
    assert torch.equal(read[0], torch.tensor([0.0, 1.0, 0.0])) and read[1].isnan().all()
    assert AsGiven().read(answers) is answers


def test_smoothing_charges_every_copy_and_averages_them(victim_ckpt):
    smoothing = QuerySmoothing(queries_per_input=3)
    dm = transfer(victim_ckpt, budget=120, smoothing=smoothing)
    record = dm.api.record(dm.client)
    assert (record.asked, record.answered) == (120, 120)  # the budget exact, in queries
    assert len(dm.indices) == 40 == len(set(dm.indices.tolist()))  # 120 / 3 images
    images = pool_images(dm)[:32]  # the first API batch, its copies drawn as the attack drew
    copies = smoothing.expand(images, f"{dm.seed}:{dm.folder.name}:0")
    assert torch.equal(copies[::3], images) and not torch.equal(copies[1::3], images)
    fresh = PredictionAPI(str(victim_ckpt), posterior_cache=None, ledger=None)
    expected = fresh.answer(copies).view(32, 3, 10).mean(dim=1)
    assert torch.allclose(dm.answers[:32].float(), expected, atol=1e-6)
    plain = transfer(victim_ckpt, budget=40, cache="plain")
    assert plain.folder != dm.folder  # other queries, another cache
    resumed = transfer(victim_ckpt, budget=120, smoothing=QuerySmoothing(queries_per_input=3))
    assert torch.equal(resumed.answers, dm.answers)  # read back, nothing asked again
    assert resumed.api.record(resumed.client).asked == 0


class NoisyAnswers(Defence):
    """Fresh Gaussian noise on every answer: the randomised defence smoothing must wear down."""

    def apply(self, batch: QueryBatch) -> None:
        batch.answers = batch.answers + 0.1 * torch.randn_like(batch.answers)


def test_smoothing_averages_a_random_perturbation_away():
    """A toy with a known answer: the mean of k noisy copies errs about 1/sqrt(k) as much."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    truth = PredictionAPI.around(net, 4).answer(images := torch.rand(64, 3, 2, 2))
    noisy = PredictionAPI.around(net, 4, defences=[NoisyAnswers()])
    smoothing = QuerySmoothing(8, transform=nn.Identity())
    single = (noisy.answer(images) - truth).abs().mean()
    averaged = smoothing.combine(noisy.answer(smoothing.expand(images, "batch")))
    assert (averaged - truth).abs().mean() < single / 2  # 1/sqrt(8) = 0.35 expected


def test_smoothing_averages_the_answered_copies_only():
    answers = torch.tensor([[1.0, 0.0], [0.0, 1.0], [float("nan")] * 2, [float("nan")] * 2])
    combined = QuerySmoothing(queries_per_input=2).combine(answers)
    assert torch.equal(combined[0], torch.tensor([0.5, 0.5])) and combined[1].isnan().all()


def test_smoothing_needs_one_query_per_input_at_least():
    with pytest.raises(ConfigError, match="data.smoothing.queries_per_input must be >= 1, got 0"):
        QuerySmoothing(queries_per_input=0)


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"smoothing": QuerySmoothing(3), "budget": 100},
            "data.budget 100 is not a multiple of data.smoothing.queries_per_input 3",
        ),
        (
            {"smoothing": QuerySmoothing(2, v2.Resize(20))},
            "data.smoothing.transform Resize(size=[20]",
        ),
    ],
    ids=["budget", "size"],
)
def test_bad_smoothing_is_one_line_before_any_query(victim_ckpt, options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        transfer(victim_ckpt, **{"budget": 120, **options})
    assert not list(Path("cache").rglob("*.npy"))  # nothing asked
