"""The detector as an API filter: refusals and decoys are counted, flagged queries never reach the
victim, a guarded attack reports its flagged queries, and a detector for other data is refused."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

from core.errors import ConfigError
from datamodules import CropsPoolDataModule, DigitsDataModule, TransferSetDataModule
from lightning_modules import GuardReport, Surrogate
from lightning_modules.api import PredictionAPI
from lightning_modules.guard import load_detector


class Victim(nn.Module):
    """A 3-class victim that counts the images it sees."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 3)
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        return self.fc(x)


class FlagNegatives(nn.Module):
    """P(OOD) = 1 for images whose first value is negative, else 0."""

    def forward(self, x):
        return (x[:, 0] < 0).float()


X = torch.tensor([[1.0, 0.0], [-1.0, 2.0], [2.0, 1.0], [-3.0, 0.0]])


@pytest.mark.parametrize("granularity", ["probs", "label", "top_k"])
def test_refused_queries_get_nan_rows_and_never_reach_the_victim(granularity):
    victim = Victim()
    api = PredictionAPI(victim, 3, granularity, top_k=2, detector=FlagNegatives(), budget=8)
    answers = api(X)
    assert answers[[1, 3]].isnan().all() and not answers[[0, 2]].isnan().any()
    assert (api.queries_flagged, api.queries_answered, victim.seen) == (2, 4, 2)
    api(X)
    with pytest.raises(ConfigError, match="budget exhausted"):  # refused queries count too
        api(X[:1])


def test_decoys_are_uniform_and_counted():
    api = PredictionAPI(Victim(), 3, detector=FlagNegatives(), on_flag="decoy", threshold=0.5)
    answers = api(X)
    assert torch.allclose(answers[[1, 3]], torch.full((2, 3), 1 / 3))
    assert torch.allclose(answers.sum(-1), torch.ones(4)) and api.queries_flagged == 2
    unguarded = PredictionAPI(Victim(), 3)
    unguarded.victim.fc = api.victim.fc
    assert torch.equal(unguarded(X)[[0, 2]], answers[[0, 2]])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"threshold": 1.2}, r"threshold must be in \[0, 1\]"),
        ({"threshold": -0.1}, r"threshold must be in \[0, 1\]"),
        ({"on_flag": "ignore"}, "on_flag must be refuse or decoy"),
    ],
)
def test_bad_guard_options(options, message):
    with pytest.raises(ConfigError, match=message):
        PredictionAPI(Victim(), 3, detector=FlagNegatives(), **options)


def test_queries_of_another_size_are_rejected_before_any_answer(victim_ckpt, detector_ckpt):
    api = PredictionAPI.from_checkpoint(victim_ckpt, detector=load_detector(detector_ckpt))
    with pytest.raises(ConfigError, match="trained on 3x32x32 images, queries are 3x48x48"):
        api(torch.zeros(2, 3, 48, 48))
    assert api.queries_answered == 0
    assert api(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def guarded(victim_ckpt, detector_ckpt, threshold, on_flag="refuse", victim_data=None, **kw):
    data = TransferSetDataModule(
        victim=str(victim_ckpt), pool=CropsPoolDataModule(size=300),
        victim_data=victim_data or DigitsDataModule(), budget=200, cache_dir="cache",
        detector=str(detector_ckpt), threshold=threshold, on_flag=on_flag, **kw,
    )  # fmt: skip
    data.prepare_data()
    data.setup()
    return data


@pytest.fixture(scope="module")
def half_detector(detector_ckpt, tmp_path_factory) -> str:
    """The CV detector with its logit shifted so that about half of the attacker's crops have
    P(OOD) above 0.5 (the trained one flags nearly all of them)."""
    images = CropsPoolDataModule(size=300).split("pool").labelled.tensors[0]
    return shifted(detector_ckpt, images, tmp_path_factory.mktemp("half") / "half.ckpt")


def shifted(detector_ckpt, images: torch.Tensor, path: Path) -> str:
    """The detector with its OOD logit shifted so that half of `images` have P(OOD) > 0.5."""
    with torch.no_grad():
        logits = load_detector(detector_ckpt).net(images)
    checkpoint = torch.load(detector_ckpt, weights_only=True)
    checkpoint["state_dict"]["net.fc.bias"][1] -= (logits[:, 1] - logits[:, 0]).median()
    torch.save(checkpoint, path)
    return str(path)


def test_guarded_transfer_set_refuses_or_decoys_the_flagged_queries(victim_ckpt, half_detector):
    refused = guarded(victim_ckpt, half_detector, 0.5)
    flagged = refused.queries_flagged
    assert 0 < flagged < 200
    assert int(refused.posteriors.isnan().any(-1).sum()) == flagged
    answered = len(refused.split("train")) + len(refused.split("val"))
    assert answered == 200 - flagged
    assert not refused.split("train").answers.isnan().any()
    assert int(refused.class_histogram().sum()) == 200 - flagged
    decoyed = guarded(victim_ckpt, half_detector, 0.5, on_flag="decoy")
    assert decoyed.folder == refused.folder  # the policy is applied offline, like granularity
    answers = torch.cat([decoyed.split("train").answers, decoyed.split("val").answers])
    assert len(answers) == 200
    assert int(torch.isclose(answers, torch.tensor(0.1)).all(-1).sum()) == flagged
    other = guarded(victim_ckpt, half_detector, 1.0)
    assert other.folder != refused.folder and other.queries_flagged == 0


def test_a_detector_for_other_data_is_refused_before_any_query(victim_ckpt, detector_ckpt,
                                                               tmp_path):  # fmt: skip
    with pytest.raises(ConfigError, match="trained on 3x32x32 images, not 3x48x48"):
        guarded(victim_ckpt, detector_ckpt, 0.5, victim_data=DigitsDataModule(image_size=48))
    checkpoint = torch.load(detector_ckpt, weights_only=True)
    checkpoint["trained_on"]["in_data"] = "CUBS200DataModule"
    torch.save(checkpoint, tmp_path / "cubs.ckpt")
    with pytest.raises(ConfigError, match="trained for CUBS200DataModule, not DigitsDataModule"):
        guarded(victim_ckpt, tmp_path / "cubs.ckpt", 0.5)
    with pytest.raises(ConfigError, match=r"threshold must be in \[0, 1\]"):
        guarded(victim_ckpt, detector_ckpt, 2.0)
    assert not list(tmp_path.glob("cache/*/q*.npy"))


def test_all_refused_is_a_clear_error(victim_ckpt, detector_ckpt):
    with pytest.raises(ConfigError, match="the detector refused 200 of 200 queries"):
        guarded(victim_ckpt, detector_ckpt, 0.0)


def test_guard_report_logs_flagged_queries_and_false_refusals(victim_ckpt, half_detector):
    data = guarded(victim_ckpt, half_detector, 0.5)
    trainer = Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, callbacks=[GuardReport()])  # fmt: skip
    model = Surrogate(num_classes=10)
    trainer.fit(model, data)
    metrics = trainer.test(model, data, verbose=False)[0]
    assert metrics["transfer/queries_flagged"] == data.queries_flagged
    assert metrics["transfer/flagged_rate"] == pytest.approx(data.queries_flagged / 200)
    assert 0.0 <= metrics["transfer/false_refusal_rate"] < 0.1
    assert "test/acc" in metrics
    unguarded = TransferSetDataModule(victim=str(victim_ckpt), pool=CropsPoolDataModule(size=300),
                                      victim_data=DigitsDataModule(), budget=50)  # fmt: skip
    trainer = Trainer(logger=False, enable_progress_bar=False, callbacks=[GuardReport()])
    with pytest.raises(ConfigError, match="GuardReport needs"):
        trainer.test(model, unguarded, verbose=False)


def test_false_refusal_rate_is_the_share_of_benign_queries_flagged(victim_ckpt, detector_ckpt,
                                                                    tmp_path):  # fmt: skip
    """A detector that flags half of the victim's own test images: GuardReport's rate is
    exactly the share the detector flags, computed here directly."""
    test = DigitsDataModule().split("test")
    images = torch.stack([test[i][0] for i in range(len(test))])
    strict = shifted(detector_ckpt, images, tmp_path / "strict.ckpt")
    with torch.no_grad():
        expected = float((load_detector(strict)(images) > 0.5).float().mean())
    assert 0.3 < expected < 0.7
    data = guarded(victim_ckpt, strict, 0.5, on_flag="decoy")
    trainer = Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, callbacks=[GuardReport()])  # fmt: skip
    model = Surrogate(num_classes=10)
    trainer.fit(model, data)
    metrics = trainer.test(model, data, verbose=False)[0]
    assert metrics["transfer/false_refusal_rate"] == pytest.approx(expected)
