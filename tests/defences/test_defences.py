"""Every registered defence keeps the API's contract; the granularities on hand-computed cases;
the detector filter refuses or decoys what it flags and the books count it."""

import pytest
import torch
from torch import nn

import tests.toy_defence  # noqa: F401  (a user's defence: registered when imported)
from knockoff_lab.api import PredictionAPI
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences import (
    DEFENCES,
    DetectorFilter,
    LabelOnly,
    QueryBatch,
    Rounded,
    TopK,
    list_defences,
)

P = torch.tensor([[0.52, 0.31, 0.12, 0.05], [0.05, 0.10, 0.25, 0.60]])


class FlagNegatives(nn.Module):
    """P(OOD) = 1 for images whose first value is negative, else 0."""

    def forward(self, x):
        return (x.flatten(1)[:, 0] < 0).float()


# Defences that need arguments; every other registered one (a user's, the toy's) is built with
# its defaults.
EXAMPLES = {"DetectorFilter": lambda: DetectorFilter(FlagNegatives(), on_flag="refuse")}


def batch(posteriors: torch.Tensor, images: torch.Tensor | None = None) -> QueryBatch:
    images = torch.randn(len(posteriors), 3, 2, 2) if images is None else images
    return QueryBatch.arriving(images, posteriors, "c")


def test_registry_lists_the_defences_and_a_users_own():
    assert {"DetectorFilter", "LabelOnly", "RefuseAfter", "Rounded", "TopK"} <= set(list_defences())


@pytest.mark.parametrize("name", list_defences())
def test_defence_contract(name):
    """Answers keep their shape, posteriors are never modified, a stateless defence depends on
    the posteriors alone, and the description names the class and settings."""
    defence = EXAMPLES.get(name, DEFENCES[name])()
    defence.check(4)
    posteriors = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.2, 0.5, 0.2, 0.1]])
    first = batch(posteriors)
    defence.apply(first)
    assert first.answers.shape == (2, 4)
    assert torch.equal(first.posteriors, posteriors)
    if defence.stateless:
        second = batch(posteriors, images=-torch.ones(2, 3, 2, 2))
        defence.apply(second)
        assert torch.equal(first.answers, second.answers)
    assert name in defence.describe()


def test_top_k_keeps_the_k_highest_and_zeroes_the_rest():
    b = batch(P)
    TopK(2).apply(b)
    assert torch.equal(b.answers, torch.tensor([[0.52, 0.31, 0.0, 0.0], [0.0, 0.0, 0.25, 0.60]]))


def test_rounded_to_decimals():
    b = batch(P)
    Rounded(1).apply(b)
    assert torch.allclose(b.answers, torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.1, 0.1, 0.2, 0.6]]))
    b = batch(P)
    Rounded(0).apply(b)
    assert torch.equal(b.answers, torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1]]))


def test_label_is_one_hot_of_the_argmax():
    b = batch(P)
    LabelOnly().apply(b)
    assert torch.equal(b.answers, torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1]]))


@pytest.mark.parametrize(
    "defence, message",
    [
        (TopK(0), "k must be in 1..4"),
        (TopK(5), "k must be in 1..4"),
        (Rounded(-1), "decimals must be an integer >= 0"),
    ],
)
def test_bad_granularity_options(defence, message):
    with pytest.raises(ConfigError, match=message):
        defence.check(4)


class Victim(nn.Module):
    """A 3-class victim."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


X = torch.tensor([[1.0, 0.0, 0, 0], [-1.0, 2.0, 0, 0], [2.0, 1.0, 0, 0], [-3.0, 0.0, 0, 0]])
X = X.view(4, 1, 2, 2)


@pytest.mark.parametrize("after", [[], [LabelOnly()], [TopK(2)]])
def test_refused_queries_get_nan_rows_whatever_follows_and_are_counted(after):
    api = PredictionAPI.around(Victim(), defences=[DetectorFilter(FlagNegatives()), *after])
    answers = api.answer(X)
    assert answers[[1, 3]].isnan().all() and not answers[[0, 2]].isnan().any()
    record = api.record()
    assert (record.asked, record.answered, record.flagged, record.refused) == (4, 2, 2, 2)


def test_decoys_are_uniform_flagged_but_answered():
    api = PredictionAPI.around(
        Victim(), defences=[DetectorFilter(FlagNegatives(), on_flag="decoy")]
    )
    answers = api.answer(X)
    assert torch.allclose(answers[[1, 3]], torch.full((2, 3), 1 / 3))
    assert torch.equal(answers[[0, 2]], PredictionAPI.around(api.victim).answer(X)[[0, 2]])
    record = api.record()
    assert (record.answered, record.flagged, record.refused) == (4, 2, 0)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"threshold": 1.2}, r"threshold must be in \[0, 1\]"),
        ({"threshold": -0.1}, r"threshold must be in \[0, 1\]"),
        ({"on_flag": "ignore"}, "on_flag must be refuse or decoy"),
    ],
)
def test_bad_filter_options(options, message):
    with pytest.raises(ConfigError, match=message):
        DetectorFilter(FlagNegatives(), **options)


def test_a_checkpointed_detector_rejects_queries_of_another_size_uncounted(
    victim_ckpt, detector_ckpt
):
    api = PredictionAPI(str(victim_ckpt), [DetectorFilter(str(detector_ckpt))], ledger=None)
    with pytest.raises(ConfigError, match="trained on 3x16x16 images, queries are 3x48x48"):
        api.answer(torch.zeros(2, 3, 48, 48))
    assert api.record().asked == 0
    assert api.answer(torch.zeros(2, 3, 16, 16)).shape == (2, 10)


def test_a_detector_for_other_data_is_refused(detector_ckpt, tmp_path):
    checkpoint = torch.load(detector_ckpt, weights_only=True)
    checkpoint["InOutDataModule"]["trained_on"]["in_data"] = "CUBS200DataModule"
    torch.save(checkpoint, tmp_path / "cubs.ckpt")
    with pytest.raises(ConfigError, match="trained for CUBS200DataModule, not DigitsDataModule"):
        DetectorFilter(str(tmp_path / "cubs.ckpt")).check_data("DigitsDataModule")
    moved = torch.load(detector_ckpt, weights_only=True)
    moved["callbacks"] = {"ModelCheckpoint": {"dirpath": str(tmp_path)}}  # saved elsewhere
    torch.save(moved, tmp_path / "moved.ckpt")
    same = DetectorFilter(str(tmp_path / "moved.ckpt")).describe()
    assert same == DetectorFilter(str(detector_ckpt)).describe()  # the weights decide, not the file
    moved["state_dict"] = {k: v + 1 for k, v in moved["state_dict"].items()}
    torch.save(moved, tmp_path / "other.ckpt")
    assert same != DetectorFilter(str(tmp_path / "other.ckpt")).describe()


def test_toy_stateful_defence_runs_from_yaml_and_keeps_its_state_per_client(victim_ckpt):
    from pathlib import Path

    from knockoff_lab.pipeline.cli import cli_main
    from tests.conftest import CONFIGS

    cli = cli_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "surrogate/digits_natural_probs.yaml"),
            "--config",
            str(Path(tests.toy_defence.__file__).with_suffix(".yaml")),
            "--data.init_args.api.init_args.victim",
            str(victim_ckpt),
            "--data.init_args.budget",
            "150",
            "--data.init_args.pool.init_args.size",
            "300",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.limit_test_batches",
            "1",
        ]
    )
    data = cli.datamodule
    refused = data.answers.isnan().any(-1)
    assert refused[120:].all() and not refused[:120].any()  # the first 120 answered
    assert len(data.split("train")) + len(data.split("val")) == 120
    record = data.api.record(data.client)
    assert (record.asked, record.answered, record.refused, record.flagged) == (150, 120, 30, 30)
    again = PredictionAPI(
        data.api.victim_name,
        data.api.defences,
        ledger="runs/api/ledger.sqlite",
        posterior_cache=None,
    )  # a new API process on the same books
    assert again.answer(torch.zeros(2, 3, 32, 32), data.client).isnan().all()
    assert not again.answer(torch.zeros(2, 3, 32, 32), "someone-else").isnan().any()
