"""D-DAE on the attacker's side: its detector tells MAD from no defence on a held-out shadow
and names the defence the API really runs; its recovery, trained on shadows only, brings the
API's reverse-sigmoid answers closer to the victim's clean posteriors; inside a transfer set
it learns from the asked images and the surrogate trains on what it recovers."""

import pytest
import torch

from datamodules import CropsPoolDataModule, DigitsDataModule, TransferSetDataModule
from knockoff_lab.api import PredictionAPI
from knockoff_lab.attacks import DDAE
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences import MAD, ReverseSigmoid, Rounded


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    pool = CropsPoolDataModule(size=600)
    pool.setup()
    images = pool.split("pool")
    return torch.stack([images[i] for i in range(len(images))])


def l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().sum(dim=-1).mean())


def api(victim_ckpt, *defences) -> PredictionAPI:
    return PredictionAPI(str(victim_ckpt), list(defences), posterior_cache=None, ledger=None)


def test_the_detector_tells_mad_from_none_and_names_the_apis_defence(victim_ckpt, crops):
    guarded = DDAE([MAD(0.5, "digits_cnn")])
    guarded.fit(crops, api(victim_ckpt, MAD(0.5, "digits_cnn")).answer(crops))
    assert guarded.report["detector_accuracy"] > 0.75  # two classes: chance is 0.5
    assert guarded.names[int(guarded.report["detected"])] == "MAD"
    plain = DDAE([MAD(0.5, "digits_cnn")])
    answers = api(victim_ckpt).answer(crops)
    plain.fit(crops, answers)
    assert plain.names[int(plain.report["detected"])] == "none"
    assert plain.read(answers) is answers  # nothing to undo


def test_recovery_trained_on_shadows_brings_the_apis_answers_back_toward_the_victims(
    victim_ckpt, crops
):
    clean = api(victim_ckpt).answer(crops)
    answers = api(victim_ckpt, ReverseSigmoid(0.6, 1.5)).answer(crops)
    reader = DDAE([ReverseSigmoid(0.6, 1.5)])
    reader.fit(crops, answers)
    assert reader.report["recovery_l1_after"] < reader.report["recovery_l1_before"] / 2
    read = reader.read(answers)
    assert l1(read, clean) < l1(answers, clean) / 2
    assert torch.allclose(read.sum(dim=-1), torch.ones(len(read)))
    refused = answers.clone()
    refused[0] = float("nan")
    assert reader.read(refused)[0].isnan().all() and not reader.read(refused)[1:].isnan().any()


def test_a_recovery_that_does_not_help_on_the_held_out_shadow_is_not_used(victim_ckpt, crops):
    """Rounding to 4 decimals moves an answer by ~1e-4: no network recovers that closely."""
    reader = DDAE([Rounded(4)], assume="Rounded", max_images=200)
    answers = api(victim_ckpt, Rounded(4)).answer(crops)
    reader.fit(crops, answers)
    assert reader.report["recovery_l1_after"] >= reader.report["recovery_l1_before"]
    assert reader.read(answers) is answers


def test_inside_a_transfer_set_the_surrogate_trains_on_what_ddae_recovers(victim_ckpt):
    reader = DDAE([ReverseSigmoid(0.6, 1.5)], max_images=400)
    dm = TransferSetDataModule(
        api=api(victim_ckpt, ReverseSigmoid(0.6, 1.5)),
        pool=CropsPoolDataModule(size=600),
        victim_data=DigitsDataModule(),
        budget=400,
        reader=reader,
        query_batch_size=100,
        cache_dir="cache",
    )
    dm.setup()
    dm.grow_to(0)
    train = dm.split("train")
    pool = dm.pool.split("pool")
    asked = torch.stack([pool[int(i)] for i in dm.indices[train.rows]])
    clean = api(victim_ckpt).answer(asked)
    assert reader.names[int(reader.report["detected"])] == "ReverseSigmoid"
    assert l1(train.answers, clean) < l1(dm.answers[train.rows].float(), clean) / 2
    assert set(reader.metrics()) >= {"ddae_detector_accuracy", "ddae_recovery_l1_after"}


@pytest.mark.parametrize(
    "options, message",
    [
        ({"candidates": []}, "data.reader.candidates must name one or more distinct defences"),
        (
            {"candidates": [MAD(), MAD(0.2)]},
            "data.reader.candidates must name one or more distinct defences, got ['MAD', 'MAD']",
        ),
        (
            {"candidates": [MAD()], "assume": "ReverseSigmoid"},
            "data.reader.assume 'ReverseSigmoid' has no shadow answers: expected none or one of "
            "the candidates ['MAD']",
        ),
        ({"candidates": [MAD()], "max_images": 2}, "data.reader.max_images must be >= 4, got 2"),
    ],
    ids=["no candidate", "twice", "no shadow answers", "too few images"],
)
def test_bad_ddae_settings_are_one_line(options, message):
    with pytest.raises(ConfigError) as error:
        DDAE(**options)
    assert str(error.value) == message or str(error.value).startswith(message)
